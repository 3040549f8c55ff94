import json

import pytest
import torch
from cli_helpers import assert_user_error, flat, invoke
from tiny import make_number_judge

import steerlab.engines.hf as hf_engine_module
import steerlab.pipelines.persona as persona_module
from steerlab import SteeringVector
from steerlab.activations.capture import ChatSample, capture
from steerlab.errors import SteerlabError
from steerlab.extract.persona import effective_pairs
from steerlab.formats.traits import load_trait
from steerlab.judge import make_judge
from steerlab.model.loading import load_model
from steerlab.pipelines.persona import NoEffectivePairsError, PersonaConfig, judge_answer_counts, run_persona
from steerlab.report.html import build_report

CONFIG = PersonaConfig(
    max_questions=2, max_instructions=2, max_new_tokens=5, threshold=0.0, min_coherence=0.0, batch_size=4
)


@pytest.fixture(scope="module")
def judge():
    return make_judge(make_number_judge())


def test_pipeline_produces_every_artifact(tiny_llama, judge, tmp_path):
    trait = load_trait("evil")
    result = run_persona(tiny_llama, trait, judge, tmp_path, CONFIG)
    for name in ("responses.jsonl", "judged.jsonl", "pairs.json", "vectors/manifest.json"):
        assert (tmp_path / name).is_file() and (tmp_path / f"{name}.meta.json").is_file(), name
    rows = [json.loads(x) for x in (tmp_path / "judged.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 2 == result.n_responses
    assert all(r["trait_score"] is not None and 0 <= r["trait_score"] <= 100 for r in rows)
    pairs = json.loads((tmp_path / "pairs.json").read_text())["pairs"]
    assert result.n_effective == len(pairs) > 0
    vec = SteeringVector.load(result.vectors["response_avg"])
    assert vec.metadata["method"] == "persona" and vec.n_layers == tiny_llama.n_layers
    # the vector is mean(pos) - mean(neg) over effective pairs, computed independently here
    pos = [ChatSample(p["question"], p["positive"], p["pos_system"]) for p in pairs]
    neg = [ChatSample(p["question"], p["negative"], p["neg_system"]) for p in pairs]
    expected = capture(tiny_llama, pos)["response_avg"].mean(0) - capture(tiny_llama, neg)["response_avg"].mean(0)
    torch.testing.assert_close(vec.data, expected, atol=1e-5, rtol=1e-4)
    prompt_last = SteeringVector.load(result.vectors["prompt_last"])
    assert prompt_last.norms().sum() > 0  # different system prompts -> a non-zero prompt direction


def test_rerun_skips_and_kill_resumes(tiny_llama, judge, tmp_path, monkeypatch):
    trait = load_trait("humorous")
    full = run_persona(tiny_llama, trait, judge, tmp_path / "a", CONFIG)

    generated = []
    real = hf_engine_module.generate_batch

    def counting(lm, prompts, **kw):
        generated.append(len(prompts))
        if len(generated) == 2 and kill["armed"]:
            kill["armed"] = False
            raise KeyboardInterrupt  # killed mid-generation
        return real(lm, prompts, **kw)

    kill = {"armed": True}
    monkeypatch.setattr(hf_engine_module, "generate_batch", counting)
    with pytest.raises(KeyboardInterrupt):
        run_persona(tiny_llama, trait, judge, tmp_path / "b", CONFIG)
    done_before = sum(generated[:-1])
    assert 0 < done_before < full.n_responses and not (tmp_path / "b" / "responses.jsonl").exists()
    generated.clear()
    resumed = run_persona(tiny_llama, trait, judge, tmp_path / "b", CONFIG)
    assert sum(generated) == full.n_responses - done_before  # finished items not regenerated
    for name in ("responses.jsonl", "judged.jsonl", "pairs.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text(), name
    assert torch.equal(
        SteeringVector.load(full.vectors["response_avg"]).data,
        SteeringVector.load(resumed.vectors["response_avg"]).data,
    )
    generated.clear()
    run_persona(tiny_llama, trait, judge, tmp_path / "b", CONFIG)
    assert generated == []  # every stage skipped


def test_effective_pair_filter():
    def row(kind, score, coherence, q=0):
        return {
            "kind": kind,
            "instruction": 0,
            "question_index": q,
            "sample": 0,
            "question": "q",
            "system": kind,
            "response": kind,
            "trait_score": score,
            "coherence": coherence,
        }

    judged = [
        row("pos", 80, 90, 0),
        row("neg", 10, 90, 0),
        row("pos", 40, 90, 1),
        row("neg", 10, 90, 1),
        row("pos", 80, 90, 2),
        row("neg", 60, 90, 2),
        row("pos", 80, 30, 3),
        row("neg", 10, 90, 3),
        row("pos", None, 90, 4),
        row("neg", 10, 90, 4),
    ]
    doc = effective_pairs(judged, 50, 50)
    assert doc["counts"] == {
        "candidates": 5,
        "unscored": 1,
        "pos_below_threshold": 1,
        "neg_above_threshold": 1,
        "incoherent": 1,
        "effective": 1,
    }


def test_no_effective_pairs_when_the_model_does_not_express_the_trait(tiny_llama, judge, tmp_path):
    config = PersonaConfig(max_questions=1, max_instructions=1, max_new_tokens=3, threshold=101.0)
    with pytest.raises(NoEffectivePairsError) as info:
        run_persona(tiny_llama, load_trait("evil"), judge, tmp_path, config)
    # the judge scored every answer: the message says the filter, not the judge, left no pair
    assert info.value.n_unscored == 0 and info.value.n_answers == 2
    assert info.value.counts == {
        "candidates": 1,
        "unscored": 0,
        "pos_below_threshold": 1,
        "neg_above_threshold": 0,
        "incoherent": 0,
        "effective": 0,
    }
    message = str(info.value)
    assert "The judge could not score 0 of 2 answers" in message
    assert "1 had a positive answer below --threshold 101" in message
    assert "The model may not express this trait when prompted: lower --threshold (now 101)" in message
    assert "stronger judge" not in message and "--no-filter" in message
    assert isinstance(info.value, SteerlabError) and (tmp_path / "judged.jsonl").is_file()


def test_a_judge_that_cannot_score_is_named_with_counts(tiny_llama, tmp_path):
    # A random tiny model as judge puts ~2.5% of its probability on numbers (docs/design.md §6: no score below 25%).
    config = PersonaConfig(max_questions=2, max_instructions=1, max_new_tokens=3)
    with pytest.raises(NoEffectivePairsError) as info:
        run_persona(tiny_llama, load_trait("humorous"), make_judge(tiny_llama), tmp_path, config)
    err = info.value
    judged = [json.loads(x) for x in (tmp_path / "judged.jsonl").read_text().splitlines()]
    masses = [r[k] for r in judged for k in ("trait_mass", "coherence_mass")]
    assert len(judged) == 4 and all(0 < m < 0.25 for m in masses)
    assert (err.n_unscored, err.n_answers) == (4, 4)
    assert err.answer_counts["below_min_mass"] == 4 and err.answer_counts["no_answer"] == 0
    assert err.answer_counts["mean_mass"] == pytest.approx(sum(masses) / len(masses))
    assert err.counts["candidates"] == err.counts["unscored"] == 2
    message = str(err)
    mean = f"{sum(masses) / len(masses):.3f}"
    assert (
        f"The judge could not score 4 of 4 answers: for 4 it put less than 0.25 probability on the number "
        f"answers 0-100 (mean {mean} over all its answers), leaving 2 pairs unscored. Of the 0 scored pairs, "
        "0 had a positive answer below --threshold 50"
    ) in message
    assert "The judge cannot score these answers: use a stronger judge (-j openai:MODEL" in message
    assert "--no-filter" in message and "may not express" not in message


def test_cli_judge_that_cannot_score_then_no_filter(tmp_path, tiny_dir):
    run = tmp_path / "run"
    args = [
        "persona",
        "extract",
        "-m",
        tiny_dir,
        "-t",
        "evil",
        "-j",
        f"local:{tiny_dir}",
        "-o",
        run,
        "--max-questions",
        "1",
        "--max-instructions",
        "1",
        "-n",
        "3",
    ]
    # a random tiny judge gives no numbers -> one clear error with the counts, exit 2, earlier artifacts kept
    assert_user_error(
        invoke(*args),
        "no effective pairs among 1 candidate pairs",
        "could not score 2 of 2 answers",
        "stronger judge",
        "--no-filter",
    )
    responses_meta = (run / "responses.jsonl.meta.json").read_text()
    judged_meta = (run / "judged.jsonl.meta.json").read_text()

    result = invoke(*args, "--no-filter")
    assert result.exit_code == 0, result.output
    assert "--no-filter" in flat(result.output) and "unfiltered" in result.output
    # generation and judging were reused, not redone
    assert (run / "responses.jsonl.meta.json").read_text() == responses_meta
    assert (run / "judged.jsonl.meta.json").read_text() == judged_meta
    pairs = json.loads((run / "pairs.json").read_text())
    assert pairs["filter"] == "none" and len(pairs["pairs"]) == 1 and pairs["counts"]["effective"] == 0
    vec = SteeringVector.load(run / "vectors" / "evil_response_avg.safetensors")
    assert {
        k: vec.metadata[k]
        for k in ("method", "filter", "n_samples", "n_effective", "n_unscored_pairs", "n_answers", "n_unscored_answers")
    } == {
        "method": "persona",
        "filter": "none",
        "n_samples": 1,
        "n_effective": 0,
        "n_unscored_pairs": 1,
        "n_answers": 2,
        "n_unscored_answers": 2,
    }
    assert "threshold" not in vec.metadata
    # every pair, unfiltered: mean(pos) - mean(neg) over all pairs, computed independently
    lm = load_model(str(tiny_dir))
    p = pairs["pairs"][0]
    expected = (
        capture(lm, [ChatSample(p["question"], p["positive"], p["pos_system"])])["response_avg"][0]
        - capture(lm, [ChatSample(p["question"], p["negative"], p["neg_system"])])["response_avg"][0]
    )
    torch.testing.assert_close(vec.data, expected, atol=1e-5, rtol=1e-4)
    # the report says the vectors are unfiltered
    path, _ = build_report(run)
    page = path.read_text()
    assert "Unfiltered persona vectors" in page and "the judge could not score 2 of 2 answers" in page


def test_filtered_vectors_record_the_filter(tiny_llama, judge, tmp_path):
    result = run_persona(tiny_llama, load_trait("evil"), judge, tmp_path, CONFIG)
    assert result.filter == "effective" and result.n_pairs == result.n_effective > 0
    meta = SteeringVector.load(result.vectors["prompt_avg"]).metadata
    assert (meta["filter"], meta["threshold"], meta["min_coherence"]) == ("effective", 0.0, 0.0)
    page = build_report(tmp_path)[0].read_text()
    assert "Filtered as persona-vectors" in page and "Unfiltered persona vectors" not in page


def test_demo_traits_fall_back_to_unfiltered_when_the_judge_cannot_score(tiny_llama, tiny_dir, tmp_path):
    # the demo's multi-trait stage with a judge that cannot score: every trait is averaged unfiltered
    # (recorded as filter "none" with the unscored counts), nothing fails, and the summary says so
    from dataclasses import replace

    from steerlab.engines.hf import HfEngine
    from steerlab.pipelines.demo import SIZES, _traits_stage

    size = replace(SIZES["ci"], persona_layers=[1], study=replace(SIZES["ci"].study, controls=2))
    engine = HfEngine(tiny_llama)
    result = _traits_stage(tiny_llama, engine, tmp_path, ["evil", "optimistic"], f"local:{tiny_dir}", None, size)
    assert result["failed"] == {}
    for name in ("evil", "optimistic"):
        entry = result["traits"][name]
        assert entry["status"] == "ok" and entry["filter"] == "none" and entry["effective_pairs"] == 0
        assert entry["answer_counts"]["unscored"] == entry["answer_counts"]["answers"] == 2
    assert result["traits"]["cosine"] is not None


def test_judge_answer_counts_and_the_mixed_message(tmp_path):
    def row(trait, coherence, trait_mass=None, coherence_mass=None, **extra):
        return {
            "trait_score": trait,
            "coherence": coherence,
            "trait_mass": trait_mass,
            "coherence_mass": coherence_mass,
            **extra,
        }

    judged = [
        row(80.0, 90.0, 0.9, 0.7),  # scored
        row(None, 90.0, 0.1, 0.7),  # too little mass on numbers for the trait prompt
        row(70.0, None, 0.8, 0.05),  # ... for the coherence prompt
        row(None, None),  # no answer at all (endpoint down, or mass unknown)
        {"trait_score": None, "coherence": 50.0},
    ]  # a row judged before masses were recorded
    counts = judge_answer_counts(judged, min_mass=0.25)
    assert counts == {
        "answers": 5,
        "unscored": 4,
        "below_min_mass": 2,
        "no_answer": 2,
        "mean_mass": pytest.approx((0.9 + 0.7 + 0.1 + 0.7 + 0.8 + 0.05) / 6),
        "min_mass": 0.25,
    }
    pair_counts = {
        "candidates": 3,
        "unscored": 2,
        "pos_below_threshold": 1,
        "neg_above_threshold": 0,
        "incoherent": 0,
        "effective": 0,
    }
    message = persona_module._no_pairs_message("evil", pair_counts, counts, PersonaConfig(), tmp_path)
    err = NoEffectivePairsError(message, "evil", pair_counts, counts, tmp_path)
    assert str(err) == message
    assert "could not score 4 of 5 answers: for 2 it put less than 0.25 probability" in message
    assert "for 2 it gave no answer" in message and "leaving 2 pairs unscored. Of the 1 scored pairs, 1 had" in message
    # both causes present: both remedies offered
    assert "For the unscored pairs use a stronger judge" in message
    assert "for the scored ones the model may not express this trait" in message
    assert (err.n_unscored, err.n_answers, err.run_dir) == (4, 5, tmp_path)
