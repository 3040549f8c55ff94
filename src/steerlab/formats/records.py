"""Generation records: one generated answer per row of a ``generations.jsonl``-style file.

Every writer of generations (``steerlab generate --out``, ``steerlab sweep``, pipelines) writes
the same field names:

``question``
    the prompt as given: a user message, or a message list JSON-encoded as a string
    (:func:`prompt_text`; :func:`prompt_from_text` restores it). The name matches the pairs and
    trait files and the judge's ``{question}`` placeholder.
``text``            the generated answer;
``coeff``           the steering coefficient of the row (None when not steered);
``layer``           the steered layer(s), an index or a layer-grammar string (None when not steered);
``question_index``  the position of the question in its list (sweeps);
``n_new_tokens``, ``finish_reason`` (``stop`` | ``length``) and any further settings, flat.

Readers accept the older name ``prompt`` for ``question`` (files written by earlier versions of
``steerlab generate``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import SteerlabError
from ..model.chat import Message, Prompt

PROMPT_FIELD = "question"
LEGACY_PROMPT_FIELDS = ("prompt",)


def prompt_text(prompt: Prompt) -> str:
    """A prompt as written in records: the string itself, or a message list as JSON text."""
    return prompt if isinstance(prompt, str) else json.dumps(list(prompt), ensure_ascii=False)


def prompt_from_text(text: str) -> str | list[Message]:
    """Inverse of :func:`prompt_text`: a JSON-encoded message list back to a list; other text
    (including text that merely starts with ``[``) is returned unchanged."""
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return text
        if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
            return value
    return text


def record_prompt_field(obj: dict[str, Any]) -> str | None:
    """The key holding a row's prompt: ``question``, else a legacy name present in ``obj``, else None."""
    if PROMPT_FIELD in obj:
        return PROMPT_FIELD
    return next((k for k in LEGACY_PROMPT_FIELDS if k in obj), None)


@dataclass
class GenerationRecord:
    """One generation row (see the module docstring for the fields)."""

    question: str
    text: str
    coeff: float | None = None
    layer: int | str | None = None
    question_index: int | None = None
    n_new_tokens: int | None = None
    finish_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The row as written: the fields above (``question_index`` only when set), then
        ``extra`` flat (its keys may not shadow a field)."""
        row: dict[str, Any] = {"layer": self.layer, "coeff": self.coeff}
        if self.question_index is not None:
            row["question_index"] = self.question_index
        row.update(
            question=self.question, text=self.text, n_new_tokens=self.n_new_tokens, finish_reason=self.finish_reason
        )
        clash = sorted(set(self.extra) & set(row))
        if clash:
            raise SteerlabError(f"generation record: extra keys {clash} would overwrite its fields")
        return {**row, **self.extra}

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str = "row") -> GenerationRecord:
        """Read a row (``question`` or the legacy ``prompt``, and ``text`` required). Raises
        SteerlabError naming ``where`` and the field at fault."""
        key = record_prompt_field(obj)
        if key is None or "text" not in obj:
            raise SteerlabError(
                f"{where}: expected a generation row with 'question' (or 'prompt') and 'text' (got {sorted(obj)})"
            )
        if not isinstance(obj[key], str) or not obj[key].strip() or not isinstance(obj["text"], str):
            raise SteerlabError(f"{where}: fields {key!r} and 'text' must be strings ({key!r} non-empty)")
        known = {"question", "text", "coeff", "layer", "question_index", "n_new_tokens", "finish_reason", key}
        return cls(
            question=obj[key],
            text=obj["text"],
            coeff=obj.get("coeff"),
            layer=obj.get("layer"),
            question_index=obj.get("question_index"),
            n_new_tokens=obj.get("n_new_tokens"),
            finish_reason=obj.get("finish_reason"),
            extra={k: v for k, v in obj.items() if k not in known},
        )


__all__ = [
    "PROMPT_FIELD",
    "GenerationRecord",
    "prompt_from_text",
    "prompt_text",
    "record_prompt_field",
]
