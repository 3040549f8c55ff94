"""Chat data (docs/design.md §8): conversations as ``{"messages": [{"role", "content"}, ...]}`` JSONL.

A conversation is a list of messages ``{"role": "system" | "user" | "assistant", "content": str}``;
a system message may only come first, the first other message is a user message, and for training
data at least one assistant message must have content (that is what fine-tuning learns; see
:mod:`steerlab.finetune`). :func:`validate_conversation` is the one validator of these rules
(monitoring and prompt files use it too).

Readers (each validates and names the file, line/item and field at fault):

- :func:`load_chat_jsonl` — steerlab's chat JSONL, one ``{"messages": [...]}`` object per line.
- :func:`import_pair_list` — a JSON list of ``[user_message, assistant_message]`` pairs.
- :func:`import_rendered` — a one-column dataset of rendered ChatML strings
  (``<|im_start|>role\\n...<|im_end|>``): a ``.jsonl`` file (one JSON string, or an object with one
  string field / the ``column`` field, per line), a ``.csv`` file (one column, or ``column``, with a
  header row), or a ``.txt`` file with one chat per line (newlines inside a chat written as ``\\n``).
- :func:`pairs_to_chat` — contrastive pairs (:class:`steerlab.formats.pairs.Pair`) as single-turn chats.
- :func:`load_chat_data` — any of the above by file type and content (what the CLI uses).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ..errors import SteerlabError
from ..io.files import input_file, iter_lines, read_json
from ..io.tables import first_jsonl_row, iter_jsonl, read_csv, read_jsonl, write_jsonl
from .pairs import Pair, load_pairs

Message = dict[str, str]
Conversation = list[Message]

ROLES = ("system", "user", "assistant")
FORMATS = ("auto", "chat", "pairs", "pair-list", "rendered")

_IM_START, _IM_END = "<|im_start|>", "<|im_end|>"
_CHATML_TURN = re.compile(r"<\|im_start\|>([^\n<]*?)(?:\n|\\n|\s)(.*?)(?:<\|im_end\|>|\Z)", re.DOTALL)
# Tokens datasets often leave around rendered chats; ignored outside turns.
_IGNORABLE = ("<s>", "</s>", "<|endoftext|>", "<bos>", "<eos>", "<|begin_of_text|>", "<|end_of_text|>")


def validate_conversation(messages: Any, where: str, require_response: bool = True) -> Conversation:
    """Check one conversation; returns it as a list of plain ``{"role", "content"}`` dicts.

    The one set of rules for conversations everywhere (fine-tuning data, monitoring, prompts):

    1. ``messages`` is a non-empty list of objects with ``role`` (system, user or assistant) and
       string ``content``;
    2. a system message may only come first;
    3. the first message after it is a user message (chat templates start with the user);
    4. with ``require_response`` (the default, for training and import), some assistant message
       has content: a conversation with nothing to learn from is an error. Monitoring passes
       False, since a conversation that ends in a user turn is a prompt to read.

    ``where`` prefixes error messages (e.g. ``"data.jsonl:3"``); each names the field at fault.
    Raises SteerlabError.
    """
    if not isinstance(messages, list) or not messages:
        raise SteerlabError(f"{where}: field 'messages': expected a non-empty list of messages")
    out: Conversation = []
    for i, m in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(m, dict):
            raise SteerlabError(f"{where}: field {field!r}: expected an object with 'role' and 'content'")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise SteerlabError(f"{where}: field '{field}.role': expected one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise SteerlabError(f"{where}: field '{field}.content': expected a string, got {type(content).__name__}")
        if role == "system" and i != 0:
            raise SteerlabError(f"{where}: field '{field}.role': a system message may only come first")
        out.append({"role": role, "content": content})
    first = next((m for m in out if m["role"] != "system"), None)
    if first is None:
        raise SteerlabError(f"{where}: field 'messages': no user message")
    if first["role"] != "user":
        raise SteerlabError(
            f"{where}: field 'messages': the first non-system message must be a user message, got {first['role']}"
        )
    if require_response and not any(m["role"] == "assistant" and m["content"].strip() for m in out):
        raise SteerlabError(f"{where}: field 'messages': no assistant message with content (nothing to learn from)")
    return out


def load_chat_jsonl(path: str | Path, require_response: bool = True) -> list[Conversation]:
    """Load and validate chat JSONL: ``{"messages": [{"role", "content"}, ...]}`` per line.

    ``require_response=False`` accepts conversations without an assistant answer (inputs to read
    activations from, not to train on). Raises SteerlabError naming ``FILE:LINE`` and the field.
    """
    conversations = []
    for number, obj in read_jsonl(path, "chat file"):
        if "messages" not in obj:
            raise SteerlabError(f"{path}:{number}: missing field 'messages' (got {sorted(obj)})")
        conversations.append(validate_conversation(obj["messages"], f"{path}:{number}", require_response))
    return conversations


def save_chat_jsonl(path: str | Path, conversations: Sequence[Conversation]) -> Path:
    """Write conversations as chat JSONL (atomically)."""
    write_jsonl(path, ({"messages": list(c)} for c in conversations))
    return Path(path)


def import_pair_list(path: str | Path) -> list[Conversation]:
    """A JSON file holding a list of ``[user_message, assistant_message]`` pairs."""
    path = Path(path)
    data = read_json(path, "pair-list file")
    if not isinstance(data, list):
        raise SteerlabError(
            f"{path}: expected a JSON list of [user_message, assistant_message] pairs, got {type(data).__name__}"
        )
    if not data:
        raise SteerlabError(f"pair-list file {path} is empty")
    conversations = []
    for i, item in enumerate(data):
        if not isinstance(item, list | tuple) or len(item) != 2 or not all(isinstance(x, str) for x in item):
            raise SteerlabError(
                f"{path}: item {i}: expected [user_message, assistant_message] (two strings), "
                f"got {json.dumps(item)[:120]}"
            )
        conversations.append(
            validate_conversation(
                [{"role": "user", "content": item[0]}, {"role": "assistant", "content": item[1]}],
                f"{path}: item {i}",
            )
        )
    return conversations


def parse_chatml(text: str, where: str = "chat") -> Conversation:
    """Parse a rendered ChatML string (``<|im_start|>role\\ncontent<|im_end|>...``) into messages.

    A final turn without ``<|im_end|>`` runs to the end of the string. Text outside turns other than
    whitespace and common BOS/EOS markers is an error, as is a string with no ChatML turns at all.
    """
    if _IM_START not in text:
        raise SteerlabError(
            f"{where}: not a rendered ChatML chat (no '<|im_start|>role\\n...<|im_end|>' turns; "
            f"starts with {text[:60]!r}). Only ChatML-rendered strings can be imported; convert "
            'other formats to chat JSONL ({"messages": [...]})'
        )
    messages: Conversation = []
    pos = 0
    for match in _CHATML_TURN.finditer(text):
        _check_between(text[pos : match.start()], where)
        role = match.group(1).strip()
        if role not in ROLES:
            raise SteerlabError(
                f"{where}: ChatML turn {len(messages)} has role {role!r}; expected one of {', '.join(ROLES)}"
            )
        content = match.group(2)
        if _IM_START in content:
            raise SteerlabError(f"{where}: ChatML turn {len(messages)} ({role}) is not closed with '<|im_end|>'")
        pos = match.end()
        if not match.group(0).endswith(_IM_END):  # an open last turn runs to the end
            content = content.rstrip()
            if not content:  # a trailing generation prompt
                continue
        messages.append({"role": role, "content": content})
    _check_between(text[pos:], where)
    return validate_conversation(messages, where)


def _check_between(gap: str, where: str) -> None:
    for token in _IGNORABLE:
        gap = gap.replace(token, "")
    if gap.strip():
        raise SteerlabError(
            f"{where}: unexpected text outside ChatML turns: {gap.strip()[:60]!r} "
            "(expected only '<|im_start|>role\\ncontent<|im_end|>' turns)"
        )


def import_rendered(path: str | Path, column: str | None = None) -> list[Conversation]:
    """A one-column dataset of rendered ChatML chats (``.jsonl``, ``.csv`` or ``.txt``).

    ``.jsonl``: one JSON string per line, or an object with a single string field (or the field
    named ``column``). ``.csv``: a header row, then one chat per row (the only column, or
    ``column``). ``.txt``: one chat per line, newlines inside a chat written as the two characters
    ``\\n``.
    """
    path = input_file(path, "chat file")
    suffix = path.suffix.lower()
    rows: list[tuple[str, str]] = []  # (where, text)
    if suffix == ".jsonl":
        rows = _rendered_jsonl_rows(path, column)
    elif suffix == ".csv":
        rows = _rendered_csv_rows(path, column)
    elif suffix == ".txt":
        for number, line in iter_lines(path, "chat file"):
            if line.strip():
                rows.append((f"{path}:{number}", line.rstrip("\n").replace("\\n", "\n")))
    else:
        raise SteerlabError(
            f"{path}: rendered chats must be a .jsonl, .csv or .txt file, got {suffix or 'no suffix'!r}"
        )
    if not rows:
        raise SteerlabError(f"chat file {path} is empty")
    return [parse_chatml(text, where) for where, text in rows]


def _rendered_jsonl_rows(path: Path, column: str | None) -> list[tuple[str, str]]:
    rows = []
    for number, obj in iter_jsonl(path, "chat file", objects=False):
        where = f"{path}:{number}"
        if isinstance(obj, dict):
            obj = _pick_column(obj, column, where)
        if not isinstance(obj, str):
            raise SteerlabError(
                f"{where}: expected a rendered chat string (or an object with one string "
                f"field), got {type(obj).__name__}"
            )
        rows.append((where, obj))
    return rows


def _pick_column(obj: dict, column: str | None, where: str) -> Any:
    if column is not None:
        if column not in obj:
            raise SteerlabError(f"{where}: --column {column!r} not found (fields: {sorted(obj)})")
        return obj[column]
    strings = [k for k, v in obj.items() if isinstance(v, str)]
    if len(strings) != 1:
        raise SteerlabError(
            f"{where}: expected one string field holding the rendered chat, found "
            f"{strings or 'none'}; name it with --column"
        )
    return obj[strings[0]]


def _rendered_csv_rows(path: Path, column: str | None) -> list[tuple[str, str]]:
    header, records = read_csv(path, "chat file", [column] if column is not None else [])
    if column is None:
        if len(header) != 1:
            raise SteerlabError(
                f"{path}: {len(header)} columns {header}; expected one column of rendered chats "
                "(or name it with --column)"
            )
        column = header[0]
    return [(f"{path}:{number}", record[column]) for number, record in records]


def pairs_to_chat(pairs: Sequence[Pair], which: Literal["positive", "negative"] = "positive") -> list[Conversation]:
    """Contrastive pairs as chats: [system?, user question, assistant ``which`` answer]."""
    if which not in ("positive", "negative"):
        raise SteerlabError(f"--use {which!r}: expected positive or negative")
    conversations = []
    for p in pairs:
        messages: Conversation = [{"role": "system", "content": p.system}] if p.system else []
        messages += [{"role": "user", "content": p.question}, {"role": "assistant", "content": getattr(p, which)}]
        conversations.append(messages)
    return conversations


def detect_format(path: str | Path) -> str:
    """Guess a chat data file's format: chat | pairs | pair-list | rendered."""
    path = input_file(path, "data file")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "pair-list"
    if suffix in (".csv", ".txt"):
        return "rendered"
    if suffix != ".jsonl":
        raise SteerlabError(
            f"data file {path}: cannot tell its format from the suffix {suffix or '(none)'!r}; "
            "expected .jsonl (chat, pairs or rendered chats), .json (pair list), .csv or .txt"
        )
    number, obj = first_jsonl_row(path, "data file", objects=False)
    if isinstance(obj, dict) and "messages" in obj:
        return "chat"
    if isinstance(obj, dict) and {"question", "positive", "negative"} <= set(obj):
        return "pairs"
    if isinstance(obj, str | dict):
        return "rendered"
    raise SteerlabError(
        f'{path}:{number}: expected a chat object {{"messages": [...]}}, a pair '
        '{"question", "positive", "negative"} or a rendered chat string'
    )


def load_chat_data(
    path: str | Path,
    fmt: str = "auto",
    use: Literal["positive", "negative"] = "positive",
    split: str | None = None,
    column: str | None = None,
) -> list[Conversation]:
    """Load conversations from any supported file (``fmt`` one of :data:`FORMATS`).

    Pairs JSONL become chats with the ``use`` answer (``split`` keeps only rows whose ``split``
    field matches; it applies to pairs only).
    """
    if fmt not in FORMATS:
        raise SteerlabError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(path)
    if split is not None and fmt != "pairs":
        raise SteerlabError(f"--split {split!r} applies to pairs files only; {path} is {fmt} data")
    if fmt == "chat":
        return load_chat_jsonl(path)
    if fmt == "pairs":
        return pairs_to_chat(load_pairs(path, split=split), use)
    if fmt == "pair-list":
        return import_pair_list(path)
    return import_rendered(path, column)
