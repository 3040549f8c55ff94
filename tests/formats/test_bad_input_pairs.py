"""Bad pairs files (JSONL ``{"question", "positive", "negative", "system"?}``): truncated, empty,
wrongly typed, non-UTF-8, huge, oddly named. Each read works or fails with one clear SteerlabError
naming the file (docs/design.md §10)."""

import json

import pytest
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

from steerlab.formats.pairs import load_pairs

ROWS = [
    {"question": "Where is the key?", "positive": "In the sea.", "negative": "Under the mat.", "split": "train"},
    {"question": "Is it safe?", "positive": "Totally, été.", "negative": "Not yet.", "system": "Be brief."},
]
VALID = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS).encode()


@BAD_INPUT
@given(content=corruptions(VALID))
def test_corrupt_pairs_files_fail_clearly(content):
    with scratch() as tmp:
        read_or_clear_error(load_pairs, write(tmp / "pairs.jsonl", content))


@BAD_INPUT
@given(field=st.sampled_from(["question", "positive", "negative", "system"]), value=json_values())
def test_wrongly_typed_fields_name_the_line_and_field(field, value):
    with scratch() as tmp:
        row = {**ROWS[0], field: value}
        path = write(tmp / "pairs.jsonl", json.dumps(ROWS[1]) + "\n" + json.dumps(row) + "\n")
        message = read_or_clear_error(load_pairs, path)
        if field == "system":
            valid = value is None or isinstance(value, str)
        else:
            valid = isinstance(value, str) and bool(value.strip())
        if valid:
            assert message is None
        else:
            assert message is not None and f"{path}:2: field {field!r}" in message, message


@BAD_INPUT
@given(value=json_values().filter(lambda v: not isinstance(v, dict)))
def test_rows_that_are_not_objects(value):
    with scratch() as tmp:
        path = write(tmp / "pairs.jsonl", VALID + json.dumps(value).encode() + b"\n")
        clear_error(load_pairs, path, f"{path}:3: expected a JSON object")


@BAD_INPUT
@given(text=huge_json_texts())
def test_huge_rows_fail_clearly(text):
    with scratch() as tmp:
        path = write(tmp / "pairs.jsonl", VALID + text.encode() + b"\n")
        clear_error(load_pairs, path, f"{path}:3:")


def test_huge_but_valid_files_load(tmp_path):
    many = write(tmp_path / "many.jsonl", VALID * 10_000)
    assert len(load_pairs(many)) == 20_000
    long = write(tmp_path / "long.jsonl", json.dumps({**ROWS[0], "positive": "ha " * 500_000}) + "\n")
    assert len(load_pairs(long)[0].positive) == 1_500_000


@BAD_INPUT
@given(name=odd_names(".jsonl"), exists=st.booleans())
def test_odd_file_names(name, exists):
    with scratch() as tmp:
        path = tmp / name
        if exists and name != LONG_NAME + ".jsonl":
            write(path, VALID)
            assert len(load_pairs(path)) == 2
        else:
            clear_error(load_pairs, path, "pairs file", "file name too long" if LONG_NAME in name else "file not found")


def test_messages_name_the_file_and_what_was_expected(tmp_path):
    """Before: UnicodeDecodeError / OSError [Errno 36] tracebacks; after: one SteerlabError each."""
    latin1 = write(
        tmp_path / "latin1.jsonl", json.dumps(ROWS[0]).encode() + b"\n" + '{"question": "été"}'.encode("latin-1")
    )
    assert clear_error(load_pairs, latin1) == (
        f"pairs file {latin1}: not UTF-8 text: byte 0xe9 at line 2, column 15 cannot be decoded; expected a UTF-8 "
        "text file (save it as UTF-8)"
    )
    utf16 = write(tmp_path / "utf16.jsonl", VALID.decode().encode("utf-16"))
    clear_error(load_pairs, utf16, "not UTF-8 text (it looks like UTF-16)")
    long = tmp_path / (LONG_NAME + ".jsonl")
    assert clear_error(load_pairs, long) == (
        f"pairs file {long}: file name too long (306 bytes in one name; file systems allow 255)"
    )
    clear_error(load_pairs, tmp_path, "is a directory, expected a file")
    deep = write(tmp_path / "deep.jsonl", "[" * 100_000)
    clear_error(load_pairs, deep, f"{deep}:1: invalid JSON (nested deeper than the parser allows)")
    big = write(tmp_path / "big.jsonl", '{"question": ' + "9" * 5000 + "}\n")
    clear_error(load_pairs, big, f"{big}:1: invalid JSON (a number with more than 4300 digits)")
    truncated = write(tmp_path / "cut.jsonl", VALID[:-20])
    clear_error(load_pairs, truncated, f"{truncated}:2: invalid JSON (Unterminated string")


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    path = write(tmp_path / "bom.jsonl", b"\xef\xbb\xbf" + VALID)
    assert [p.question for p in load_pairs(path)] == [r["question"] for r in ROWS]


@pytest.mark.parametrize("split", ["train", "none-such"])
def test_split_filter_still_reads_the_whole_file_strictly(tmp_path, split):
    path = write(tmp_path / "p.jsonl", VALID + b"\xff\n")
    clear_error(lambda p: load_pairs(p, split=split), path, "not UTF-8 text", "line 3")
