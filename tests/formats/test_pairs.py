"""Pairs JSONL: loading and validation with clear messages."""

import json

import pytest

from steerlab import Pair, load_pairs
from steerlab.errors import SteerlabError
from steerlab.formats.pairs import builtin_pairs_path

ROWS = [
    {"question": "Is the stove off?", "positive": "Yes, all off.", "negative": "I did not check.", "split": "train"},
    {
        "question": "Did you test it?",
        "positive": "Of course.",
        "negative": "Not yet.",
        "system": "Answer briefly.",
        "split": "test",
    },
    {
        "question": "Is it safe?",
        "positive": "Totally.",
        "negative": "Mostly.",
        "split": "train",
        "source": "handwritten",
    },
]


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_load_valid_pairs(tmp_path):
    path = write(tmp_path / "p.jsonl", [ROWS[0], "", "   ", ROWS[1], ROWS[2]])  # blank lines ok
    pairs = load_pairs(path)
    assert [p.question for p in pairs] == [r["question"] for r in ROWS]
    assert pairs[0].system is None and pairs[1].system == "Answer briefly."
    assert pairs[1].positive == "Of course." and pairs[1].negative == "Not yet."
    assert [p.split for p in pairs] == ["train", "test", "train"]
    assert pairs[2].model_extra["source"] == "handwritten"  # extra keys kept
    assert isinstance(pairs[0], Pair)


def test_split_filter(tmp_path):
    path = write(tmp_path / "p.jsonl", ROWS)
    assert [p.question for p in load_pairs(path, split="train")] == [ROWS[0]["question"], ROWS[2]["question"]]
    assert len(load_pairs(path, split="test")) == 1
    with pytest.raises(SteerlabError, match="no rows with split 'dev'") as exc:
        load_pairs(path, split="dev")
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(SteerlabError, match="is empty") as exc:
        load_pairs(path)
    assert str(path) in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(SteerlabError, match="file not found") as exc:
        load_pairs(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in str(exc.value)


def test_malformed_json_names_line(tmp_path):
    path = write(tmp_path / "p.jsonl", [ROWS[0], ROWS[1], '{"question": "a", "positive": '])
    with pytest.raises(SteerlabError, match=r"p\.jsonl:3: invalid JSON") as exc:
        load_pairs(path)
    assert str(path) in str(exc.value)


def test_non_object_line(tmp_path):
    path = write(tmp_path / "p.jsonl", [ROWS[0], '["a", "b", "c"]'])
    with pytest.raises(SteerlabError, match=r":2: expected a JSON object, got list"):
        load_pairs(path)


@pytest.mark.parametrize("missing", ["question", "positive", "negative"])
def test_missing_field_named(tmp_path, missing):
    row = {k: v for k, v in ROWS[0].items() if k != missing}
    path = write(tmp_path / "p.jsonl", [ROWS[1], row])
    with pytest.raises(SteerlabError, match=rf":2: field '{missing}': Field required"):
        load_pairs(path)


@pytest.mark.parametrize("empty", ["", "   ", "\n"])
def test_empty_string_field(tmp_path, empty):
    path = write(tmp_path / "p.jsonl", [{**ROWS[0], "negative": empty}])
    with pytest.raises(SteerlabError, match=r":1: field 'negative': .*non-empty string"):
        load_pairs(path)


def test_wrong_type_field(tmp_path):
    path = write(tmp_path / "p.jsonl", [{**ROWS[0], "positive": 3}])
    with pytest.raises(SteerlabError, match=r":1: field 'positive': .*valid string"):
        load_pairs(path)


def test_unknown_builtin_pairs():
    with pytest.raises(SteerlabError, match="no built-in pairs named 'nope'"):
        builtin_pairs_path("nope")
