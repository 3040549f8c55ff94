"""Prompt files (steerlab.formats.prompts.load_prompts): .txt, .jsonl and .json, in file order, with
one clear error naming the file (and line, field) for bad input."""

import json

import pytest

from steerlab.errors import SteerlabError
from steerlab.formats.prompts import load_prompts

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "is the stove off?"}]


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path, rows):
    return write(path, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_txt_one_prompt_per_non_blank_line_stripped(tmp_path):
    path = write(tmp_path / "p.txt", "  how are you?  \n\n\t\nwhat is 2 + 2\r\nnaïve café ☕\n")
    assert load_prompts(path) == ["how are you?", "what is 2 + 2", "naïve café ☕"]
    # any other suffix reads as text, and a str path works
    assert load_prompts(str(write(tmp_path / "p.prompts", "a\nb\n"))) == ["a", "b"]


def test_jsonl_prompt_question_or_messages_in_file_order(tmp_path):
    path = jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "first"},
            {"question": "second", "answer": "ignored"},
            "",  # blank lines are skipped
            {"messages": CHAT},
            {"messages": [{"role": "user", "content": "hi"}], "prompt": "not this", "question": "nor this"},
            {"prompt": "beats question", "question": "no"},
        ],
    )
    assert load_prompts(path) == ["first", "second", CHAT, [{"role": "user", "content": "hi"}], "beats question"]


def test_json_list_or_trait_questions(tmp_path):
    assert load_prompts(write(tmp_path / "l.json", json.dumps(["a", "b c"]))) == ["a", "b c"]
    trait = {"instruction": [{"pos": "x", "neg": "y"}], "questions": ["q1", "q2"], "eval_prompt": "{question} {answer}"}
    assert load_prompts(write(tmp_path / "t.json", json.dumps(trait))) == ["q1", "q2"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("e.txt", "\n  \n", "prompts file {path} is empty"),
        ("e.jsonl", "\n", "prompts file {path} is empty"),
        ("e.json", "[]", "prompts file {path} is empty"),
        ("bad.json", "[1, 2", "prompts file {path}: not valid JSON (line 1, column 6"),
        ("num.json", '["ok", 3]', "{path}: the list, item 1: expected a non-empty string, got number"),
        ("blank.json", '["ok", "  "]', "{path}: the list, item 1: expected a non-empty string, got a blank string"),
        (
            "obj.json",
            '{"prompts": ["a"]}',
            "{path}: expected a JSON list of prompt strings (or an object with a 'questions' list)",
        ),
        ("bad.jsonl", '{"prompt": "ok"}\n{oops\n', "{path}:2: invalid JSON"),
        ("list.jsonl", '["a"]\n', "{path}:1: expected a JSON object, got list"),
        (
            "none.jsonl",
            '{"prompt": "ok"}\n\n{"text": "x"}\n',
            "{path}:3: expected a 'prompt', 'question' or 'messages' field",
        ),
        ("empty.jsonl", '{"prompt": "  "}\n', "{path}:1: field 'prompt' must be a non-empty string or message list"),
        ("num.jsonl", '{"question": 7}\n', "{path}:1: field 'question' must be a non-empty string or message list"),
        ("nomsg.jsonl", '{"messages": []}\n', "{path}:1: field 'messages': expected a non-empty list of messages"),
        (
            "role.jsonl",
            json.dumps({"messages": [{"role": "bot", "content": "hi"}]}) + "\n",
            "{path}:1: field 'messages[0].role': expected one of",
        ),
    ],
)
def test_bad_files_fail_naming_file_line_and_field(tmp_path, name, text, message):
    path = write(tmp_path / name, text)
    with pytest.raises(SteerlabError) as info:
        load_prompts(path)
    assert message.format(path=path) in str(info.value)


@pytest.mark.parametrize("name", ["nope.txt", "nope.jsonl", "nope.json"])
def test_missing_file(tmp_path, name):
    with pytest.raises(SteerlabError) as info:
        load_prompts(tmp_path / name)
    assert str(info.value) == f"prompts file {tmp_path / name}: file not found"
