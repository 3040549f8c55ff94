import csv
import json

import pytest

from steerlab.errors import SteerlabError
from steerlab.formats.conversations import (
    detect_format,
    import_pair_list,
    import_rendered,
    load_chat_data,
    load_chat_jsonl,
    pairs_to_chat,
    parse_chatml,
    save_chat_jsonl,
    validate_conversation,
)
from steerlab.formats.pairs import Pair

CONV = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "how should I store bread"},
    {"role": "assistant", "content": "in a dry box"},
    {"role": "user", "content": "why?"},
    {"role": "assistant", "content": "it stays soft\nfor days"},
]
RENDERED = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in CONV)


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_chat_jsonl_roundtrip(tmp_path):
    path = save_chat_jsonl(tmp_path / "chat.jsonl", [CONV, CONV[1:3]])
    assert load_chat_jsonl(path) == [CONV, CONV[1:3]]
    assert detect_format(path) == "chat"
    assert load_chat_data(path) == [CONV, CONV[1:3]]


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ("{not json", r"chat.jsonl:2: invalid JSON"),
        ({"msgs": []}, r"chat.jsonl:2: missing field 'messages'"),
        ({"messages": []}, r"chat.jsonl:2: field 'messages': expected a non-empty list"),
        ({"messages": [{"role": "bot", "content": "x"}]}, r":2: field 'messages\[0\].role': expected one of"),
        ({"messages": [{"role": "user", "content": 3}]}, r"field 'messages\[0\].content': expected a string"),
        ({"messages": [CONV[1], CONV[0], CONV[2]]}, r"'messages\[1\].role': a system message may only come first"),
        ({"messages": [CONV[1]]}, r"no assistant message with content"),
        ({"messages": [CONV[2]]}, r"the first non-system message must be a user message, got assistant"),
        ({"messages": [CONV[0]]}, r"field 'messages': no user message"),
    ],
)
def test_chat_jsonl_errors_name_line_and_field(tmp_path, row, match):
    path = _jsonl(tmp_path / "chat.jsonl", [{"messages": CONV}, row])
    with pytest.raises(SteerlabError, match=match):
        load_chat_jsonl(path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(SteerlabError, match="empty"):
        load_chat_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(SteerlabError, match="empty"):
        load_chat_data(tmp_path / "empty.jsonl")
    with pytest.raises(SteerlabError, match="not found"):
        load_chat_data(tmp_path / "nope.jsonl")


def test_pair_list_import(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([["hi", "hello"], ["how are you", "fine"]]))
    convs = import_pair_list(path)
    assert convs[1] == [{"role": "user", "content": "how are you"}, {"role": "assistant", "content": "fine"}]
    assert load_chat_data(path) == convs
    path.write_text(json.dumps([["hi", "hello"], ["only one"]]))
    with pytest.raises(SteerlabError, match=r"pairs.json: item 1: expected \[user_message, assistant_message\]"):
        import_pair_list(path)
    path.write_text(json.dumps({"a": 1}))
    with pytest.raises(SteerlabError, match="expected a JSON list"):
        import_pair_list(path)
    path.write_text("[]")
    with pytest.raises(SteerlabError, match="empty"):
        import_pair_list(path)


def test_parse_chatml():
    assert parse_chatml(RENDERED) == CONV
    # BOS/EOS markers around turns and a trailing generation prompt are ignored.
    assert parse_chatml("<s>" + RENDERED + "<|im_start|>assistant\n") == CONV
    # An unterminated final turn runs to the end of the string.
    open_end = RENDERED.removesuffix("<|im_end|>\n")
    assert parse_chatml(open_end) == CONV


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[INST] hi [/INST] hello", "not a rendered ChatML chat"),
        ("<|im_start|>user\nhi<|im_start|>assistant\nyo<|im_end|>", r"turn 0 \(user\) is not closed"),
        ("<|im_start|>robot\nhi<|im_end|>", "role 'robot'"),
        ("junk<|im_start|>user\nhi<|im_end|><|im_start|>assistant\nyo<|im_end|>", "unexpected text outside"),
        ("<|im_start|>user\nhi<|im_end|>", "no assistant message"),
    ],
)
def test_parse_chatml_errors(text, match):
    with pytest.raises(SteerlabError, match=match):
        parse_chatml(text, "row 3")


def test_rendered_jsonl_csv_txt(tmp_path):
    strings = _jsonl(tmp_path / "s.jsonl", [json.dumps(RENDERED)] * 2)
    assert detect_format(strings) == "rendered"
    assert import_rendered(strings) == [CONV, CONV]
    objects = _jsonl(tmp_path / "o.jsonl", [{"text": RENDERED, "id": 1}])
    assert load_chat_data(objects) == [CONV]
    two = _jsonl(tmp_path / "two.jsonl", [{"text": RENDERED, "other": "x"}])
    with pytest.raises(SteerlabError, match="name it with --column"):
        import_rendered(two)
    assert import_rendered(two, column="text") == [CONV]

    with (tmp_path / "c.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["chat"])
        writer.writerows([[RENDERED], [RENDERED]])
    assert load_chat_data(tmp_path / "c.csv") == [CONV, CONV]
    with (tmp_path / "c2.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["a", "b"], [RENDERED, "x"]])
    with pytest.raises(SteerlabError, match=r"c2.csv: 2 columns"):
        import_rendered(tmp_path / "c2.csv")
    assert import_rendered(tmp_path / "c2.csv", column="a") == [CONV]

    txt = tmp_path / "chats.txt"
    txt.write_text(RENDERED.replace("\n", "\\n") + "\n\n" + RENDERED.replace("\n", "\\n") + "\n")
    assert load_chat_data(txt) == [CONV, CONV]
    txt.write_text("hello world\n")
    with pytest.raises(SteerlabError, match=r"chats.txt:1: not a rendered ChatML chat"):
        load_chat_data(txt)


def test_pairs_to_chat_and_pairs_file(tmp_path):
    pairs = [
        Pair(question="q1", positive="lie", negative="truth", system="sys", split="train"),
        Pair(question="q2", positive="lie2", negative="truth2", split="test"),
    ]
    pos = pairs_to_chat(pairs)
    assert pos[0] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "lie"},
    ]
    assert pairs_to_chat(pairs, "negative")[1] == [
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "truth2"},
    ]
    with pytest.raises(SteerlabError, match="--use"):
        pairs_to_chat(pairs, "both")  # type: ignore[arg-type]
    path = _jsonl(tmp_path / "pairs.jsonl", [p.model_dump(exclude_none=True) for p in pairs])
    assert detect_format(path) == "pairs"
    assert load_chat_data(path, use="negative", split="test") == [pairs_to_chat(pairs, "negative")[1]]
    with pytest.raises(SteerlabError, match="--split 'train' applies to pairs files only"):
        load_chat_data(_jsonl(tmp_path / "c.jsonl", [{"messages": CONV}]), split="train")
    with pytest.raises(SteerlabError, match="--format"):
        load_chat_data(path, fmt="yaml")


# --- the one validator: its rules, shared by chat data, monitoring and prompt files ----------------

SYSTEM, USER, ASSISTANT = CONV[0], CONV[1], CONV[2]


@pytest.mark.parametrize(
    ("messages", "require_response", "match"),
    [
        ([USER, ASSISTANT], True, None),
        ([SYSTEM, USER, ASSISTANT, USER], True, None),
        ([USER], False, None),  # a prompt to read: fine without an answer ...
        ([USER], True, "no assistant message with content"),  # ... but nothing to train on
        ([USER, {"role": "assistant", "content": "  "}], True, "no assistant message with content"),
        ([ASSISTANT, USER], False, "first non-system message must be a user message"),
        ([SYSTEM, ASSISTANT], False, "first non-system message must be a user message"),
        ([SYSTEM], False, "no user message"),
        ([USER, SYSTEM], False, r"'messages\[1\].role': a system message may only come first"),
        ([{"role": "user"}], False, r"'messages\[0\].content': expected a string, got NoneType"),
        (["hi"], False, r"field 'messages\[0\]': expected an object"),
        ("hi", False, "expected a non-empty list"),
    ],
)
def test_validator_rules(messages, require_response, match):
    if match is None:
        assert validate_conversation(messages, "w", require_response) == [dict(m) for m in messages]
        return
    with pytest.raises(SteerlabError, match=f"^w: .*{match}"):
        validate_conversation(messages, "w", require_response)


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([ASSISTANT, USER], "first non-system message must be a user message"),
        ([USER, SYSTEM, ASSISTANT], "a system message may only come first"),
        ([{"role": "bot", "content": "x"}, ASSISTANT], "expected one of system, user, assistant"),
    ],
)
def test_one_validator_for_chat_files_monitoring_and_prompts(tmp_path, messages, match):
    """The same bad conversation fails with the same message wherever it is read."""
    from steerlab.evaluate.monitor import load_chat
    from steerlab.formats.prompts import load_prompts

    path = _jsonl(tmp_path / "c.jsonl", [{"messages": messages}])
    for read in (load_chat_jsonl, load_chat, load_prompts):
        with pytest.raises(SteerlabError, match=f"c.jsonl:1: field 'messages.*{match}"):
            read(path)
