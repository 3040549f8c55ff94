"""Generation records: one field name ('question') written everywhere; the old 'prompt' still read."""

import pytest

from steerlab.errors import SteerlabError
from steerlab.formats.records import GenerationRecord, prompt_from_text, prompt_text, record_prompt_field

MESSAGES = [{"role": "user", "content": "is water wet?"}]


def test_to_json_field_names_and_order():
    row = GenerationRecord(
        "q?", "yes", coeff=2.0, layer="10-12", n_new_tokens=1, finish_reason="stop", extra={"seed": 0}
    ).to_json()
    assert list(row) == ["layer", "coeff", "question", "text", "n_new_tokens", "finish_reason", "seed"]
    assert "prompt" not in row
    assert list(GenerationRecord("q", "a", question_index=3).to_json())[:3] == ["layer", "coeff", "question_index"]
    with pytest.raises(SteerlabError, match=r"extra keys \['text'\] would overwrite"):
        GenerationRecord("q", "a", extra={"text": "x"}).to_json()


def test_from_json_reads_question_and_the_old_prompt():
    new = GenerationRecord.from_json({"question": "q", "text": "a", "coeff": 1.0, "seed": 3})
    old = GenerationRecord.from_json({"prompt": "q", "text": "a", "coeff": 1.0, "seed": 3})
    assert new == old and new.extra == {"seed": 3}
    assert record_prompt_field({"prompt": "q"}) == "prompt" and record_prompt_field({"text": "a"}) is None
    with pytest.raises(SteerlabError, match=r"f.jsonl:4: expected a generation row with 'question'"):
        GenerationRecord.from_json({"text": "a"}, "f.jsonl:4")
    with pytest.raises(SteerlabError, match=r"fields 'prompt' and 'text' must be strings"):
        GenerationRecord.from_json({"prompt": " ", "text": "a"})


def test_prompt_text_round_trip():
    assert prompt_text("plain") == "plain"
    assert prompt_from_text(prompt_text(MESSAGES)) == MESSAGES
    assert prompt_from_text("[not json") == "[not json"
    assert prompt_from_text("[1, 2]") == "[1, 2]"  # a list, but not messages
    assert prompt_text([{"role": "user", "content": "é"}]) == '[{"role": "user", "content": "é"}]'
