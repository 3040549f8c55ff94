import json

import pytest

from steerlab.errors import SteerlabError
from steerlab.formats.pairs import BUILTIN_DATA
from steerlab.pipelines.dataset import (
    DatasetConfig,
    answer_pairs,
    build_dataset,
    clean_answer,
    clean_question,
    dedupe,
    load_seed_questions,
)


def test_dedupe_drops_near_duplicates_and_keeps_distinct():
    existing = ["How long should I rest bread dough before baking?"]
    candidates = [
        "How long should I rest my bread dough before baking?",  # near-duplicate of a seed
        "What is the best way to store winter tires?",
        "What's the best way to store winter tires?",  # near-duplicate of the previous candidate
        "How often should I water a cactus?",
    ]
    assert dedupe(candidates, existing, 0.8) == [candidates[1], candidates[3]]
    assert dedupe(candidates, existing, 1.0) == candidates


def test_clean_question_and_answer():
    assert clean_question("1. How do I descale a kettle?\nMore text") == "How do I descale a kettle?"
    assert clean_question("Sure! Here is a question for you") is None
    assert clean_answer("Use vinegar and water. Then rinse well.", 12) == "Use vinegar and water."
    assert clean_answer("word " * 20, 12) is None


def test_seed_file_loads():
    seeds = load_seed_questions(BUILTIN_DATA / "deception" / "seed.jsonl")
    assert len(seeds) >= 50 and all(q.endswith("?") for q in seeds)


def test_answer_pairs_and_build_on_tiny_model(tiny_llama, tmp_path, monkeypatch):
    import steerlab.pipelines.dataset as ds

    config = DatasetConfig(n=2, max_new_tokens=4, max_words=50, batch_size=8)
    pairs = answer_pairs(tiny_llama, ["how should I store bread?", "is water wet?"], config)
    assert all(set(p) == {"question", "positive", "negative"} for p in pairs)
    # the tiny random model cannot write questions: a clear error and no output file
    with pytest.raises(SteerlabError, match="no usable new questions"):
        build_dataset(tiny_llama, ["How do I fix a flat tire?"], tmp_path / "p.jsonl", config)
    assert not (tmp_path / "p.jsonl").exists()
    # with question expansion stubbed, the rest of the pipeline writes pairs + metadata
    monkeypatch.setattr(ds, "expand_questions", lambda lm, seeds, cfg: ["how should I store bread?"])
    monkeypatch.setattr(ds, "clean_answer", lambda text, n: text.strip() or "x")
    result = build_dataset(tiny_llama, ["How do I fix a flat tire?"], tmp_path / "p.jsonl", config)
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert rows == result.pairs
    meta = json.loads((tmp_path / "p.jsonl.meta.json").read_text())
    assert meta["config"]["n"] == 2 and meta["steerlab_version"]
