"""Bad prompts files: ``.txt`` (one per line), ``.jsonl`` (prompt/question/messages), ``.json`` (a
list, or a trait's questions), read by :func:`steerlab.formats.prompts.load_prompts` and by the
model diff's :func:`steerlab.extract.model_diff.load_diff_samples`: truncated, empty, wrongly typed,
non-UTF-8, huge, oddly named. Each read works or fails with one clear SteerlabError naming the file."""

import json

import pytest
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

from steerlab.extract.model_diff import load_diff_samples
from steerlab.formats.prompts import load_prompts

QUESTIONS = ["How do I boil an egg?", "Où tombe la pluie ?"]
VALID = {
    "q.txt": "\n".join(QUESTIONS) + "\n",
    "q.jsonl": json.dumps({"prompt": QUESTIONS[0]}) + "\n" + json.dumps({"question": QUESTIONS[1]}) + "\n",
    "q.json": json.dumps(QUESTIONS, ensure_ascii=False),
    "trait.json": json.dumps({"questions": QUESTIONS, "eval_prompt": "{question} {answer}"}, ensure_ascii=False),
}
DIFF_VALID = {
    "q.txt": VALID["q.txt"],
    "trait.json": VALID["trait.json"],
    "pairs.jsonl": json.dumps({"question": "q?", "positive": "yes é", "negative": "no"}, ensure_ascii=False) + "\n",
    "chat.jsonl": json.dumps(
        {"messages": [{"role": "user", "content": "q é"}, {"role": "assistant", "content": "a"}]}, ensure_ascii=False
    )
    + "\n",
}


def diff_samples(path):
    return load_diff_samples(path, "prompt_last")


def test_the_valid_files_load(tmp_path):
    for name, text in VALID.items():
        assert load_prompts(write(tmp_path / name, text)) == QUESTIONS, name
    for name, text in DIFF_VALID.items():
        assert diff_samples(write(tmp_path / name, text)), name


@BAD_INPUT
@given(data=st.data(), name=st.sampled_from(sorted(VALID)))
def test_corrupt_prompts_files_fail_clearly(data, name):
    content = data.draw(corruptions(VALID[name].encode()))
    with scratch() as tmp:
        read_or_clear_error(load_prompts, write(tmp / name, content))


@BAD_INPUT
@given(data=st.data(), name=st.sampled_from(sorted(DIFF_VALID)))
def test_corrupt_model_diff_prompts_fail_clearly(data, name):
    content = data.draw(corruptions(DIFF_VALID[name].encode()))
    with scratch() as tmp:
        read_or_clear_error(diff_samples, write(tmp / name, content))


@BAD_INPUT
@given(value=json_values(), key=st.sampled_from(["prompt", "question", "messages"]))
def test_wrongly_typed_jsonl_prompts(value, key):
    with scratch() as tmp:
        path = write(tmp / "q.jsonl", VALID["q.jsonl"] + json.dumps({key: value}) + "\n")
        message = read_or_clear_error(load_prompts, path)
        if message is not None:
            assert f"{path}:3: field" in message, message


@BAD_INPUT
@given(value=json_values(), wrap=st.booleans())
def test_wrongly_typed_json_prompts(value, wrap):
    with scratch() as tmp:
        for read, what in ((load_prompts, "prompts file"), (diff_samples, "--prompts")):
            path = write(tmp / "q.json", json.dumps({"questions": value} if wrap else value))
            message = read_or_clear_error(read, path)
            if message is not None:
                assert message.startswith(f"{what} {path}"), message
            else:
                assert isinstance(value, list) and value and all(isinstance(q, str) and q.strip() for q in value)


@BAD_INPUT
@given(text=huge_json_texts(), name=st.sampled_from(["q.json", "q.jsonl", "trait.json"]))
def test_huge_inputs_fail_clearly(text, name):
    with scratch() as tmp:
        path = write(tmp / name, text + "\n")
        clear_error(load_prompts, path)
        if name != "q.jsonl":
            clear_error(diff_samples, path)


def test_huge_but_valid_files_load(tmp_path):
    path = write(tmp_path / "many.txt", "a question?\n" * 200_000)
    assert len(load_prompts(path)) == 200_000 and len(diff_samples(path)) == 200_000


@BAD_INPUT
@given(name=odd_names(".txt"), exists=st.booleans())
def test_odd_file_names(name, exists):
    with scratch() as tmp:
        path = tmp / name
        if exists and LONG_NAME not in name:
            write(path, VALID["q.txt"])
            assert load_prompts(path) == QUESTIONS and len(diff_samples(path)) == 2
        else:
            needle = "file name too long" if LONG_NAME in name else "file not found"
            clear_error(load_prompts, path, "prompts file", needle)
            clear_error(diff_samples, path, "--prompts", needle)


def test_messages_name_the_file_and_what_was_expected(tmp_path):
    """Before: UnicodeDecodeError / RecursionError / OSError [Errno 36] tracebacks; after: one SteerlabError."""
    latin = write(tmp_path / "q.txt", "\n".join(QUESTIONS).encode("latin-1"))
    expected = (
        f"prompts file {latin}: not UTF-8 text: byte 0xf9 at line 2, column 2 cannot be decoded; expected a "
        "UTF-8 text file (save it as UTF-8)"
    )
    assert clear_error(load_prompts, latin) == expected
    assert clear_error(diff_samples, latin) == expected.replace("prompts file", "--prompts")
    deep = write(tmp_path / "deep.json", "[" * 100_000)
    assert clear_error(load_prompts, deep) == (
        f"prompts file {deep}: not valid JSON (nested deeper than the parser allows)"
    )
    assert clear_error(diff_samples, deep) == f"--prompts {deep}: not valid JSON (nested deeper than the parser allows)"
    numbers = write(tmp_path / "n.json", "[1, 2]")
    assert clear_error(load_prompts, numbers) == (
        f"prompts file {numbers}: the list, item 0: expected a non-empty string, got number"
    )
    clear_error(diff_samples, numbers, "expected a JSON object with a 'questions' list (a trait file), got list")
    long = tmp_path / (LONG_NAME + ".txt")
    clear_error(diff_samples, long, f"--prompts {long}: file name too long (304 bytes in one name")


def test_finetuned_paths_no_file_system_accepts(tiny_llama, tmp_path):
    """Before: OSError [Errno 36] from Path.is_file() on --finetuned; after: one SteerlabError."""
    from steerlab.activations.capture import ChatSample
    from steerlab.errors import SteerlabError
    from steerlab.extract.model_diff import extract_model_diff

    long = tmp_path / LONG_NAME
    with pytest.raises(SteerlabError) as exc:
        extract_model_diff(tiny_llama, long, [ChatSample("q", "a")])
    check_message(str(exc.value), long, "--finetuned", "file name too long (300 bytes in one name")
