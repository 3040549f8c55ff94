"""Training examples: token ids of a rendered conversation with assistant-only labels.

The loss is computed on the **assistant tokens only**: every other label is ``IGNORE`` (-100, the
``ignore_index`` convention of ``torch.nn.functional.cross_entropy`` and Hugging Face models).
Assistant spans come from chat-template deltas, as in :mod:`steerlab.model.chat`: for each assistant
turn the conversation up to it is rendered with the generation prompt (span start) and with the turn
itself (span end); the whole conversation is tokenized once and tokens starting inside a span are
trained (the turn's content and its end-of-turn markup, so the model learns to stop). Pieces are
never tokenized separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import SteerlabError
from ..model.chat import Message, render_prompt

IGNORE = -100


@dataclass(frozen=True)
class TrainExample:
    """Token ids of one rendered conversation and its labels (``IGNORE`` outside assistant turns);
    both lists have the conversation's length in tokens."""

    input_ids: list[int]
    labels: list[int]

    @property
    def n_trained(self) -> int:
        """How many tokens carry a label (the assistant tokens)."""
        return sum(1 for x in self.labels if x != IGNORE)


def assistant_char_spans(tokenizer: Any, messages: Sequence[Message]) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation once; return ``(text, [(start, end) of each assistant turn])``.

    Span bounds (character offsets into ``text``) come from template deltas: ``start`` is the length
    of the conversation before the turn rendered with the generation prompt, ``end`` the length with
    the turn rendered. Assistant turns that are empty or come before any user turn are not spans.

    Raises:
        SteerlabError: the chat template does not render earlier turns the same whatever follows.
    """
    messages = [dict(m) for m in messages]
    text = render_prompt(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or not m["content"] or not any(x["role"] == "user" for x in messages[:i]):
            continue
        before = render_prompt(tokenizer, messages[:i], add_generation_prompt=True)
        through = render_prompt(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not through.startswith(before) or not text.startswith(through):
            raise SteerlabError(
                f"cannot locate assistant turn {i}: this chat template does not render the "
                "conversation prefix-stably (the prompt rendered with the generation prompt is not a "
                "prefix of the conversation with the reply); assistant-only training needs a template "
                "whose earlier turns render the same whatever follows"
            )
        if len(through) > len(before):
            spans.append((len(before), len(through)))
    return text, spans


def build_example(tokenizer: Any, messages: Sequence[Message], max_length: int | None = None) -> TrainExample:
    """Token ids and assistant-only labels for one conversation, cut to ``max_length`` tokens on the
    right. A fast tokenizer's offsets assign tokens to spans; a slow one tokenizes span prefixes.

    Raises:
        SteerlabError: see :func:`assistant_char_spans`; or a slow tokenizer whose tokens of a
            rendered prefix are not a prefix of the conversation's tokens.
    """
    text, spans = assistant_char_spans(tokenizer, messages)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        starts = [start for start, _ in enc["offset_mapping"]]
        trained = [any(a <= s < b for a, b in spans) for s in starts]
    else:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        trained = [False] * len(ids)
        for a, b in spans:
            lo, hi = _token_index(tokenizer, text, ids, a), _token_index(tokenizer, text, ids, b)
            trained[lo:hi] = [True] * (hi - lo)
    labels = [t if keep else IGNORE for t, keep in zip(ids, trained, strict=True)]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return TrainExample(ids, labels)


def _token_index(tokenizer: Any, text: str, ids: list[int], char_pos: int) -> int:
    prefix = list(tokenizer(text[:char_pos], add_special_tokens=False)["input_ids"])
    if ids[: len(prefix)] != prefix:
        raise SteerlabError(
            "cannot locate the assistant tokens with this (slow) tokenizer: a rendered prefix does "
            "not tokenize to a prefix of the conversation; use a fast tokenizer"
        )
    return len(prefix)
