"""Reading prompts/questions from files: ``.txt`` (one per line), ``.jsonl`` (``prompt``,
``question`` or ``messages`` per line) or ``.json`` (a list of strings, or a trait file's
``questions``); and the built-in generic prompts (:func:`generic_prompts`).

A prompt is a string (one user message) or a message list ``[{"role", "content"}, ...]`` (see
:mod:`steerlab.model.chat`). Files of any other suffix are read as ``.txt``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SteerlabError
from ..io.files import input_file, json_type, parse_json, read_text
from ..io.tables import read_jsonl
from ..model.chat import Prompt
from .conversations import validate_conversation

GENERIC_PROMPTS_PATH = Path(__file__).resolve().parent.parent / "data" / "generic_prompts.txt"


def load_prompts(path: str | Path) -> list[Prompt]:
    """Prompts from a file (see the module docstring), in file order.

    - ``.txt``: one prompt per non-blank line, stripped of surrounding whitespace.
    - ``.jsonl``: one JSON object per non-blank line; the first of ``messages``, ``prompt``,
      ``question`` present is the prompt (a message list or a non-empty string); other fields are
      ignored.
    - ``.json``: a list of non-empty strings, or an object whose ``questions`` is one (a trait file).

    Message lists are checked with :func:`steerlab.formats.conversations.validate_conversation`
    (no assistant answer needed). Raises SteerlabError naming the file (and line, field) for a
    missing, unreadable, non-UTF-8 or empty file, invalid JSON, or a row without a prompt.
    """
    path = input_file(path, "prompts file")
    if path.suffix == ".jsonl":
        prompts: list[Prompt] = []
        for number, obj in read_jsonl(path, "prompts file"):
            for key in ("messages", "prompt", "question"):
                if key in obj:
                    value = obj[key]
                    if isinstance(value, list):
                        value = validate_conversation(value, f"{path}:{number}", require_response=False)
                    elif not isinstance(value, str) or not value.strip():
                        raise SteerlabError(
                            f"{path}:{number}: field {key!r} must be a non-empty string or message list"
                        )
                    prompts.append(value)
                    break
            else:
                raise SteerlabError(f"{path}:{number}: expected a 'prompt', 'question' or 'messages' field")
        if not prompts:
            raise SteerlabError(f"prompts file {path} is empty")
        return prompts
    text = read_text(path, "prompts file")
    if path.suffix == ".json":
        data = parse_json(text, f"prompts file {path}")
        items = data.get("questions") if isinstance(data, dict) else data
        field = "field 'questions'" if isinstance(data, dict) else "the list"
        if not isinstance(items, list):
            if not isinstance(data, dict):
                got = json_type(data)
            else:
                got = f"'questions' holding {json_type(items)}" if "questions" in data else "an object without it"
            raise SteerlabError(
                f"prompts file {path}: expected a JSON list of prompt strings (or an object with a "
                f"'questions' list), got {got}"
            )
        for i, q in enumerate(items):
            if not isinstance(q, str) or not q.strip():
                raise SteerlabError(
                    f"prompts file {path}: {field}, item {i}: expected a non-empty string, "
                    f"got {'a blank string' if isinstance(q, str) else json_type(q)}"
                )
        prompts = list(items)
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise SteerlabError(f"prompts file {path} is empty")
    return prompts


def generic_prompts() -> list[str]:
    """steerlab's built-in generic prompts: over 200 everyday questions and short tasks (cooking, travel,
    maths, facts, coding, advice, writing), unrelated to any trait, written for this project.

    One prompt per line of ``data/generic_prompts.txt``, in file order. Used as behaviour-free text,
    e.g. for position-resolved model diffs (:mod:`steerlab.extract.positions`).
    """
    return load_prompts(GENERIC_PROMPTS_PATH)  # type: ignore[return-value]
