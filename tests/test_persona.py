import json

import pytest
import torch
from tiny import make_number_judge
from typer.testing import CliRunner

import steerlab.pipelines.persona as persona_module
from steerlab import SteeringVector
from steerlab.activations.capture import ChatSample, capture
from steerlab.errors import SteerlabError
from steerlab.extract.persona import effective_pairs
from steerlab.formats.traits import load_trait
from steerlab.judge import make_judge
from steerlab.pipelines.persona import PersonaConfig, run_persona

CONFIG = PersonaConfig(max_questions=2, max_instructions=2, max_new_tokens=5, threshold=0.0, min_coherence=0.0,
                       batch_size=4)


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
    real = persona_module.generate_batch

    def counting(lm, prompts, **kw):
        generated.append(len(prompts))
        if len(generated) == 2 and kill["armed"]:
            kill["armed"] = False
            raise KeyboardInterrupt  # killed mid-generation
        return real(lm, prompts, **kw)

    kill = {"armed": True}
    monkeypatch.setattr(persona_module, "generate_batch", counting)
    with pytest.raises(KeyboardInterrupt):
        run_persona(tiny_llama, trait, judge, tmp_path / "b", CONFIG)
    done_before = sum(generated[:-1])
    assert 0 < done_before < full.n_responses and not (tmp_path / "b" / "responses.jsonl").exists()
    generated.clear()
    resumed = run_persona(tiny_llama, trait, judge, tmp_path / "b", CONFIG)
    assert sum(generated) == full.n_responses - done_before  # finished items not regenerated
    for name in ("responses.jsonl", "judged.jsonl", "pairs.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text(), name
    assert torch.equal(SteeringVector.load(full.vectors["response_avg"]).data,
                       SteeringVector.load(resumed.vectors["response_avg"]).data)
    generated.clear()
    run_persona(tiny_llama, trait, judge, tmp_path / "b", CONFIG)
    assert generated == []  # every stage skipped


def test_effective_pair_filter():
    def row(kind, score, coherence, q=0):
        return {"kind": kind, "instruction": 0, "question_index": q, "sample": 0, "question": "q", "system": kind,
                "response": kind, "trait_score": score, "coherence": coherence}

    judged = [row("pos", 80, 90, 0), row("neg", 10, 90, 0), row("pos", 40, 90, 1), row("neg", 10, 90, 1),
              row("pos", 80, 90, 2), row("neg", 60, 90, 2), row("pos", 80, 30, 3), row("neg", 10, 90, 3),
              row("pos", None, 90, 4), row("neg", 10, 90, 4)]
    doc = effective_pairs(judged, 50, 50)
    assert doc["counts"] == {"candidates": 5, "unscored": 1, "pos_below_threshold": 1, "neg_above_threshold": 1,
                             "incoherent": 1, "effective": 1}


def test_no_effective_pairs_is_a_clear_error_and_keeps_work(tiny_llama, judge, tmp_path):
    config = PersonaConfig(max_questions=1, max_instructions=1, max_new_tokens=3, threshold=101.0)
    with pytest.raises(SteerlabError, match="no effective pairs survived"):
        run_persona(tiny_llama, load_trait("evil"), judge, tmp_path, config)
    assert (tmp_path / "judged.jsonl").is_file()


def test_cli_persona_extract(tmp_path, tiny_dir):
    from steerlab.cli import app

    result = CliRunner().invoke(app, ["persona", "extract", "-m", str(tiny_dir), "-t", "evil",
                                      "-j", f"local:{tiny_dir}", "-o", str(tmp_path / "run"),
                                      "--max-questions", "1", "--max-instructions", "1", "-n", "3",
                                      "--threshold", "101"])
    # a random tiny judge gives no numbers -> a clear error, exit 2, earlier artifacts kept
    assert result.exit_code == 2, result.output
    assert "no effective pairs" in result.output
    assert (tmp_path / "run" / "responses.jsonl").is_file()
