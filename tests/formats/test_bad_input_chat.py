"""Bad chat data (docs/design.md §8): chat JSONL, pairs, pair-list JSON and rendered ChatML (.jsonl, .csv,
.txt) that is truncated, empty, wrongly typed, non-UTF-8, huge or oddly named. Each read works or
fails with one clear SteerlabError naming the file (docs/design.md §10)."""

import csv
import io
import json

from bad_inputs import (
    BAD_INPUT,
    LONG_NAME,
    clear_error,
    corruptions,
    huge_json_texts,
    json_values,
    odd_names,
    read_or_clear_error,
    scratch,
    write,
)
from hypothesis import given
from hypothesis import strategies as st

from steerlab.formats.conversations import import_pair_list, import_rendered, load_chat_data, load_chat_jsonl

CONV = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "how should I store bread, chérie?"},
    {"role": "assistant", "content": "in a dry box\nfor days"},
]
RENDERED = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in CONV)


def _csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


VALID = {
    "chat.jsonl": json.dumps({"messages": CONV}, ensure_ascii=False) + "\n" + json.dumps({"messages": CONV[1:]}) + "\n",
    "pairs.jsonl": json.dumps({"question": "q?", "positive": "yes é", "negative": "no"}, ensure_ascii=False) + "\n",
    "pairs.json": json.dumps([["hi", "hello"], ["how are you", "fine, é"]], ensure_ascii=False),
    "rendered.jsonl": json.dumps({"text": RENDERED}) + "\n" + json.dumps(RENDERED) + "\n",
    "rendered.csv": _csv([["text"], [RENDERED], [RENDERED]]),
    "rendered.txt": RENDERED.replace("\n", "\\n") + "\n",
}
FILES = sorted(VALID)


def test_the_valid_files_load(tmp_path):
    for name in FILES:
        assert load_chat_data(write(tmp_path / name, VALID[name])), name


@BAD_INPUT
@given(data=st.data(), name=st.sampled_from(FILES))
def test_corrupt_chat_files_fail_clearly(data, name):
    content = data.draw(corruptions(VALID[name].encode()))
    with scratch() as tmp:
        read_or_clear_error(load_chat_data, write(tmp / name, content))


@BAD_INPUT
@given(messages=json_values())
def test_wrongly_typed_messages(messages):
    with scratch() as tmp:
        path = write(tmp / "chat.jsonl", VALID["chat.jsonl"] + json.dumps({"messages": messages}) + "\n")
        clear_error(load_chat_jsonl, path, f"{path}:3: field 'messages")


@BAD_INPUT
@given(index=st.integers(0, 2), key=st.sampled_from(["role", "content"]), value=json_values())
def test_wrongly_typed_message_fields(index, key, value):
    with scratch() as tmp:
        messages = [dict(m) for m in CONV]
        messages[index][key] = value
        path = write(tmp / "chat.jsonl", json.dumps({"messages": messages}) + "\n")
        message = read_or_clear_error(load_chat_jsonl, path)
        unchanged_role = key == "role" and value == CONV[index]["role"]
        if unchanged_role or (key == "content" and isinstance(value, str) and (index != 2 or value.strip())):
            assert message is None
        else:
            assert message is not None and f"{path}:1: field 'messages" in message, message


@BAD_INPUT
@given(item=json_values())
def test_wrongly_typed_pair_list_items(item):
    with scratch() as tmp:
        path = write(tmp / "pairs.json", json.dumps([["hi", "hello"], item]))
        message = read_or_clear_error(import_pair_list, path)
        ok = isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item) and item[1].strip()
        assert (message is None) == bool(ok), message
        if message is not None:
            assert f"{path}: item 1:" in message


@BAD_INPUT
@given(value=json_values().filter(lambda v: not isinstance(v, list)))
def test_pair_list_that_is_not_a_list(value):
    with scratch() as tmp:
        path = write(tmp / "pairs.json", json.dumps(value))
        clear_error(import_pair_list, path, "expected a JSON list of [user_message, assistant_message] pairs")


@BAD_INPUT
@given(text=huge_json_texts(), name=st.sampled_from(["chat.jsonl", "pairs.json", "rendered.jsonl"]))
def test_huge_inputs_fail_clearly(text, name):
    with scratch() as tmp:
        path = write(tmp / name, text + "\n")
        clear_error(load_chat_data, path)


def test_huge_but_valid_rendered_chats_load(tmp_path):
    """A CSV cell beyond the csv module's default 131072-character limit is a long chat, not an error."""
    long = RENDERED.replace("in a dry box", "dry " * 100_000)
    path = write(tmp_path / "long.csv", _csv([["text"], [long]]))
    assert len(import_rendered(path)[0][2]["content"]) > 400_000
    many = write(tmp_path / "many.txt", VALID["rendered.txt"] * 5_000)
    assert len(import_rendered(many)) == 5_000


@BAD_INPUT
@given(name=odd_names(".jsonl"), exists=st.booleans())
def test_odd_file_names(name, exists):
    with scratch() as tmp:
        path = tmp / name
        if exists and LONG_NAME not in name:
            write(path, VALID["chat.jsonl"])
            assert len(load_chat_data(path)) == 2
        else:
            clear_error(load_chat_data, path, "file name too long" if LONG_NAME in name else "file not found")


def test_messages_name_the_file_and_what_was_expected(tmp_path):
    """Before: UnicodeDecodeError, OSError [Errno 36], csv.Error tracebacks; after: one SteerlabError."""
    for name in ("rendered.txt", "rendered.csv", "pairs.json", "chat.jsonl"):
        path = write(tmp_path / name, VALID[name].encode() + b"\xff\n")
        clear_error(load_chat_data, path, "not UTF-8 text: byte 0xff at line")
    txt = write(tmp_path / "latin.txt", "<|im_start|>user\\nchérie<|im_end|>\n".encode("latin-1"))
    assert clear_error(import_rendered, txt) == (
        f"chat file {txt}: not UTF-8 text: byte 0xe9 at line 1, column 21 cannot be decoded; expected a UTF-8 text "
        "file (save it as UTF-8)"
    )
    long = tmp_path / (LONG_NAME + ".json")
    assert clear_error(import_pair_list, long) == (
        f"pair-list file {long}: file name too long (305 bytes in one name; file systems allow 255)"
    )
    deep = write(tmp_path / "deep.json", "[" * 100_000)
    assert clear_error(import_pair_list, deep) == (
        f"pair-list file {deep}: not valid JSON (nested deeper than the parser allows)"
    )
    cut = write(tmp_path / "cut.json", VALID["pairs.json"][:-3])
    clear_error(import_pair_list, cut, f"pair-list file {cut}: not valid JSON (line 1, column")
    clear_error(load_chat_data, tmp_path, "data file", "is a directory, expected a file")
