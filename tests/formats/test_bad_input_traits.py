"""Bad trait files (persona-vectors schema ``{"instruction", "questions", "eval_prompt"}``):
truncated, empty, wrongly typed, non-UTF-8, huge, oddly named, and trait names that are not files.
Each load works or fails with one clear SteerlabError naming the file or name (docs/design.md §10)."""

import json

from bad_inputs import (
    BAD_INPUT,
    LONG_NAME,
    check_message,
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

from steerlab.errors import SteerlabError
from steerlab.formats.traits import load_trait, parse_trait_file

TRAIT = {
    "instruction": [{"pos": "Be sarcastic, très.", "neg": "Be plain."}],
    "questions": ["How do I boil an egg?", "What is rain?"],
    "eval_prompt": "Question: {question}\nAnswer: {answer}\nScore 0-100:",
}
VALID = json.dumps(TRAIT, ensure_ascii=False, indent=1).encode()


@BAD_INPUT
@given(content=corruptions(VALID))
def test_corrupt_trait_files_fail_clearly(content):
    with scratch() as tmp:
        read_or_clear_error(load_trait, write(tmp / "sarcastic.json", content))


@BAD_INPUT
@given(field=st.sampled_from(["instruction", "questions", "eval_prompt"]), value=json_values())
def test_wrongly_typed_fields_name_the_field(field, value):
    with scratch() as tmp:
        path = write(tmp / "t.json", json.dumps({**TRAIT, field: value}))
        message = read_or_clear_error(load_trait, path)
        if message is not None:
            assert f"trait file {path}: " in message and field in message, message


@BAD_INPUT
@given(data=json_values().filter(lambda v: not isinstance(v, dict)))
def test_a_trait_file_that_is_not_an_object(data):
    with scratch() as tmp:
        path = write(tmp / "t.json", json.dumps(data))
        clear_error(load_trait, path, "expected a JSON object with keys instruction, questions, eval_prompt")


@BAD_INPUT
@given(text=huge_json_texts())
def test_huge_trait_files_fail_clearly(text):
    with scratch() as tmp:
        path = write(tmp / "t.json", text)
        clear_error(parse_trait_file, path, f"trait file {path}: ")


def test_huge_but_valid_trait_loads(tmp_path):
    path = write(tmp_path / "big.json", json.dumps({**TRAIT, "questions": [f"q{i}?" for i in range(100_000)]}))
    assert len(load_trait(path).questions) == 100_000


@BAD_INPUT
@given(name=odd_names(".json"), exists=st.booleans())
def test_odd_file_names(name, exists):
    with scratch() as tmp:
        path = tmp / name
        if exists and LONG_NAME not in name:
            write(path, VALID)
            assert load_trait(path).questions == TRAIT["questions"]
        else:
            clear_error(load_trait, path, "trait file", "file name too long" if LONG_NAME in name else "file not found")


@BAD_INPUT
@given(name=st.sampled_from([LONG_NAME, "x" * 254, "nope", "evil ", "a\x00b"]))
def test_names_that_are_neither_built_in_nor_files(name):
    """A bare name (no '/', no .json) is a built-in trait; a long one must not raise OSError."""
    try:
        load_trait(name)
    except SteerlabError as exc:
        check_message(str(exc), repr(name)[:40].rstrip("'"))
    else:
        raise AssertionError(f"{name!r} loaded")


def test_messages_name_the_file_and_what_was_expected(tmp_path):
    """Before: RecursionError / ValueError / OSError [Errno 36] tracebacks; after: one SteerlabError."""
    deep = write(tmp_path / "deep.json", '{"questions": ' + "[" * 100_000)
    assert clear_error(load_trait, deep) == f"trait file {deep}: not valid JSON (nested deeper than the parser allows)"
    big = write(tmp_path / "big.json", '{"questions": ' + "7" * 5000 + "}")
    clear_error(load_trait, big, "not valid JSON (a number with more than 4300 digits)")
    latin = write(tmp_path / "latin.json", VALID.decode().encode("latin-1"))
    clear_error(load_trait, latin, f"trait file {latin}: not UTF-8 text: byte 0xe8 at line 4")
    long = tmp_path / (LONG_NAME + ".json")
    clear_error(load_trait, long, f"trait file {long}: file name too long (305 bytes in one name")
    assert str(clear_error(load_trait, write(tmp_path / "n.json", "[1, 2]"))).endswith("got list")
