"""Trait files (persona-vectors schema) and the judge prompts that come with them.

A trait file is a JSON object::

    {"instruction": [{"pos": str, "neg": str}, ...],
     "questions": [str, ...],
     "eval_prompt": "... {question} ... {answer} ..."}

``pos`` asks the assistant to show the trait, ``neg`` the opposite; each is appended to a system
prompt built by :func:`system_prompt`. ``eval_prompt`` is filled with
``str.format(question=..., answer=...)`` and read by the judge (:mod:`steerlab.judge`), which answers
a number from 0 to 100. External files in this schema (e.g. persona-vectors' ``trait_data_extract``
/ ``trait_data_eval``) load unchanged; extra keys are kept.

Built-in traits ship in ``steerlab/data/traits/{extract,eval}/NAME.json`` with the same
instructions and eval prompt in both splits and disjoint questions.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import SteerlabError
from ..io.files import file_problem, input_file, json_type, read_json

TRAITS_DIR = Path(__file__).resolve().parent.parent / "data" / "traits"
SPLITS = ("extract", "eval")
Split = Literal["extract", "eval"]
PROMPT_FIELDS = ("question", "answer")


def check_judge_prompt(template: str, where: str) -> str:
    """Check that a judge prompt formats with exactly ``{question}`` and ``{answer}``.

    ``where`` names the file/field for the error message. Returns the template unchanged.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise SteerlabError(
            f"{where}: not a valid str.format template ({exc}); write literal braces as '{{{{' and '}}}}'"
        ) from None
    seen = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in PROMPT_FIELDS or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise SteerlabError(
                f"{where}: unexpected placeholder {shown}; only {{question}} and {{answer}} "
                "may appear (write literal braces as '{{' and '}}')"
            )
        seen.add(name)
    missing = [f"{{{name}}}" for name in PROMPT_FIELDS if name not in seen]
    if missing:
        raise SteerlabError(
            f"{where}: must contain {' and '.join(missing)} (expected both {{question}} and {{answer}})"
        )
    return template


def fill_judge_prompt(template: str, question: str, answer: str) -> str:
    """``template.format(question=..., answer=...)`` (braces inside the values are kept as is)."""
    return template.format(question=question, answer=answer)


class InstructionPair(BaseModel):
    """One system-prompt instruction pair: ``pos`` shows the trait, ``neg`` its opposite."""

    model_config = ConfigDict(extra="allow", frozen=True)

    pos: str
    neg: str

    @field_validator("pos", "neg")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a non-empty string")
        return value


class Trait(BaseModel):
    """A trait definition in the persona-vectors schema (plus the name and file it came from)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    instruction: list[InstructionPair]
    questions: list[str]
    eval_prompt: str
    name: str = Field("", exclude=True)
    source: str | None = Field(None, exclude=True)

    @field_validator("instruction")
    @classmethod
    def _instructions(cls, value: list[InstructionPair]) -> list[InstructionPair]:
        if not value:
            raise ValueError('must be a non-empty list of {"pos": ..., "neg": ...} objects')
        return value

    @field_validator("questions")
    @classmethod
    def _questions(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must be a non-empty list of question strings")
        for i, q in enumerate(value):
            if not q.strip():
                raise ValueError(f"question {i} is empty")
        return value

    @field_validator("eval_prompt")
    @classmethod
    def _eval_prompt(cls, value: str) -> str:
        try:
            check_judge_prompt(value, "eval_prompt")
        except SteerlabError as exc:
            raise ValueError(str(exc).removeprefix("eval_prompt: ")) from None
        return value

    @property
    def pos_instructions(self) -> list[str]:
        """The ``pos`` side of every instruction pair (system instructions that elicit the trait), in file order."""
        return [p.pos for p in self.instruction]

    @property
    def neg_instructions(self) -> list[str]:
        """The ``neg`` side of every instruction pair (instructions that suppress the trait), in file order."""
        return [p.neg for p in self.instruction]

    def system_prompts(self, kind: Literal["pos", "neg"], assistant_name: str | None = None) -> list[str]:
        """System prompts for every instruction of one side, built with :func:`system_prompt`.

        ``assistant_name`` defaults to the trait name for ``pos`` and ``helpful`` for ``neg``.
        """
        if kind not in ("pos", "neg"):
            raise SteerlabError(f"kind {kind!r}: expected 'pos' or 'neg'")
        if assistant_name is None:
            assistant_name = (self.name or "helpful") if kind == "pos" else "helpful"
        instructions = self.pos_instructions if kind == "pos" else self.neg_instructions
        return [system_prompt(text, assistant_name) for text in instructions]

    def judge_prompt(self, question: str, answer: str) -> str:
        """The eval prompt filled with one question and answer."""
        return fill_judge_prompt(self.eval_prompt, question, answer)

    def to_json(self) -> dict[str, Any]:
        """The trait as a persona-vectors JSON object (name and source left out)."""
        return self.model_dump(mode="json")


def system_prompt(instruction: str, assistant_name: str = "helpful") -> str:
    """A persona system prompt: ``"You are a{n} <assistant_name> assistant. <instruction>"``.

    This is the shape persona-vectors uses (the trait name as the assistant's description for
    positive instructions, ``helpful`` for negative ones).
    """
    name = assistant_name.strip() or "helpful"
    article = "an" if name[0].lower() in "aeiou" else "a"
    instruction = instruction.strip()
    head = f"You are {article} {name} assistant."
    return f"{head} {instruction}" if instruction else head


def _split(split: str) -> str:
    if split not in SPLITS:
        raise SteerlabError(f"split {split!r}: expected 'extract' or 'eval'")
    return split


def list_traits() -> list[str]:
    """Names of the built-in traits (those with both an extract and an eval file)."""
    names = [{p.stem for p in (TRAITS_DIR / s).glob("*.json")} for s in SPLITS]
    return sorted(set.intersection(*names))


def builtin_trait_path(name: str, split: str = "extract") -> Path:
    """The path of a built-in trait file."""
    path = TRAITS_DIR / _split(split) / f"{name}.json"
    if file_problem(path) is not None:
        raise SteerlabError(
            f"unknown trait {name!r}: not a built-in trait ({', '.join(list_traits())}) and not an existing .json file"
        )
    return path


def _looks_like_path(value: str | Path) -> bool:
    if isinstance(value, Path):
        return True
    return value.endswith(".json") or "/" in value or "\\" in value or file_problem(value) is None


def load_trait(name_or_path: str | Path, split: str = "extract") -> Trait:
    """Load a built-in trait by name (``evil``, ...) for ``split`` or any trait JSON file.

    Every problem (file not found, invalid JSON, missing or empty field, eval prompt without
    ``{question}``/``{answer}`` or with other braces) is a SteerlabError naming the file and field.
    """
    _split(split)
    if _looks_like_path(name_or_path):
        path = input_file(name_or_path, "trait file")
        name = path.stem
    else:
        name = str(name_or_path)
        path = builtin_trait_path(name, split)
    return parse_trait_file(path, name=name)


def parse_trait_file(path: str | Path, name: str | None = None) -> Trait:
    """Read and validate one trait JSON file (UTF-8).

    Raises SteerlabError ``"trait file PATH: ..."`` for a file that is missing, unreadable, not
    UTF-8 or not JSON (:mod:`steerlab.io.files`) and for every schema problem (the field named).
    """
    path = Path(path)
    data = read_json(path, "trait file")
    return trait_from_dict(data, name=name or path.stem, source=str(path))


def trait_from_dict(data: Any, name: str = "", source: str | None = None) -> Trait:
    """Validate a trait object (already parsed JSON); errors name ``source`` and the field."""
    where = f"trait file {source}" if source else f"trait {name!r}" if name else "trait"
    if not isinstance(data, dict):
        raise SteerlabError(
            f"{where}: expected a JSON object with keys instruction, questions, eval_prompt; got {json_type(data)}"
        )
    data = {k: v for k, v in data.items() if k not in ("name", "source")}
    try:
        return Trait.model_validate({**data, "name": name, "source": source})
    except ValidationError as exc:
        raise SteerlabError(f"{where}: {_describe(exc)}") from None


_EXPECTED = {
    "instruction": 'a non-empty list of {"pos": str, "neg": str} objects',
    "questions": "a non-empty list of question strings",
    "eval_prompt": "a string containing {question} and {answer}",
    "pos": "a non-empty string",
    "neg": "a non-empty string",
}


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc: Sequence[Any] = err["loc"]
    field = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))
    last = next((p for p in reversed(loc) if isinstance(p, str)), "")
    if err["type"] == "missing":
        return f"missing field {field!r} (expected {_EXPECTED.get(last, 'a value')})"
    msg = err["msg"].removeprefix("Value error, ")
    expected = _EXPECTED.get(last)
    if err["type"] != "value_error" and expected:
        msg = f"{msg} (expected {expected})"
    return f"field {field!r}: {msg}"


def coherence_prompt() -> str:
    """The built-in coherence judge prompt (``{question}``/``{answer}``, answers 0-100)."""
    path = TRAITS_DIR / "coherence.txt"
    return check_judge_prompt(path.read_text(encoding="utf-8"), f"{path}")


__all__ = [
    "InstructionPair",
    "Trait",
    "builtin_trait_path",
    "check_judge_prompt",
    "coherence_prompt",
    "fill_judge_prompt",
    "list_traits",
    "load_trait",
    "parse_trait_file",
    "system_prompt",
    "trait_from_dict",
]
