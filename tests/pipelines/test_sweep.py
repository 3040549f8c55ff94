import csv
import json
from dataclasses import replace

import pytest
import torch

import steerlab.engines.hf as hf_engine_module
from steerlab import SteeringVector
from steerlab.formats.pairs import Pair
from steerlab.pipelines.sweep import SweepConfig, run_sweep
from steerlab.report.html import build_report

QUESTIONS = ["how should I store bread", "is water wet"]
PAIRS = [Pair(question="yes or no", positive="no", negative="yes maybe")]


def test_sweep_writes_every_cell_and_resumes(tiny_llama, tmp_path, monkeypatch):
    vec = SteeringVector(torch.randn(tiny_llama.n_layers, tiny_llama.d_model), {"method": "test"})
    out = tmp_path / "sweep"
    result = run_sweep(tiny_llama, vec, QUESTIONS, out, SweepConfig("1,2", [-2, 0, 2], max_new_tokens=4), pairs=PAIRS)
    rows = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 3 * 2 == len(result.generations)
    assert {(r["layer"], r["coeff"], r["question_index"]) for r in rows} == {
        (layer, float(c), q) for layer in (1, 2) for c in (-2, 0, 2) for q in (0, 1)
    }
    margins = list(csv.DictReader((out / "margins.csv").open()))
    assert len(margins) == 6 and {m["layer"] for m in margins} == {"1", "2"}
    zero = [float(m["margin"]) for m in margins if float(m["coeff"]) == 0]
    assert abs(zero[0] - zero[1]) < 1e-6  # coefficient 0 is the identity at any layer
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["config"]["layers"] == [1, 2] and meta["steerlab_version"]
    assert not (out / ".partial" / "generations.jsonl").exists()

    # A killed run: layer 1 finishes, the kill lands while layer 2 generates. Resume generates only layer 2.

    calls = []
    real = hf_engine_module.generate_batch

    def counting(*a, **k):
        calls.append(k)
        if kill and len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    kill = True
    monkeypatch.setattr(hf_engine_module, "generate_batch", counting)
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(tiny_llama, vec, QUESTIONS, killed, SweepConfig("1,2", [-2, 0, 2], max_new_tokens=4))
    kill = False
    calls.clear()
    again = run_sweep(tiny_llama, vec, QUESTIONS, killed, SweepConfig("1,2", [-2, 0, 2], max_new_tokens=4))
    assert len(calls) == 1
    assert [r["text"] for r in again.generations] == [r["text"] for r in rows]
    calls.clear()
    run_sweep(tiny_llama, vec, QUESTIONS, killed, SweepConfig("1,2", [-2, 0, 2], max_new_tokens=4))
    assert calls == []  # same config: nothing regenerated
    run_sweep(tiny_llama, vec, QUESTIONS, killed, SweepConfig("1,2", [-1, 0, 1], max_new_tokens=4))
    assert len(calls) == 2  # other coefficients (same count): regenerated, never reused


def test_judged_sweep_scores_and_plot(tiny_llama, tmp_path):
    from tiny import make_number_judge

    from steerlab.formats.traits import load_trait
    from steerlab.judge import make_judge

    vec = SteeringVector(torch.randn(tiny_llama.n_layers, tiny_llama.d_model))
    judge = make_judge(make_number_judge())
    result = run_sweep(
        tiny_llama,
        vec,
        QUESTIONS,
        tmp_path,
        SweepConfig("1", [-1, 1], max_new_tokens=3),
        judge=judge,
        eval_prompt=load_trait("evil").eval_prompt,
    )
    assert all(r["trait_score"] is not None and r["coherence"] is not None for r in result.generations)
    scores = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert [(s["layer"], float(s["coeff"]), s["n"]) for s in scores] == [("1", -1.0, "2"), ("1", 1.0, "2")]
    for s in scores:
        values = [r["trait_score"] for r in result.generations if r["coeff"] == float(s["coeff"])]
        assert abs(float(s["trait_mean"]) - sum(values) / len(values)) < 1e-9
    report, _ = build_report(tmp_path)  # the plot is rendered by the report, not by the pipeline
    html = report.read_text()
    assert "plotly" in html and "trait score" in html


def test_rerun_reuses_margins_and_writes_generations_once(tiny_llama, tmp_path, monkeypatch):
    import steerlab.pipelines.sweep as sweep_module

    vec = SteeringVector(torch.randn(tiny_llama.n_layers, tiny_llama.d_model))
    config = SweepConfig("1", [-1, 1], max_new_tokens=2)
    first = run_sweep(tiny_llama, vec, QUESTIONS, tmp_path, config, pairs=PAIRS)
    writes = []
    monkeypatch.setattr(sweep_module, "condition_margins", lambda *a, **k: writes.append("margin"))
    again = run_sweep(tiny_llama, vec, QUESTIONS, tmp_path, config, pairs=PAIRS)
    assert writes == []  # the margins stage was skipped, not recomputed
    assert again.margins == first.margins and again.generations == first.generations
    # a changed pair set recomputes the margins
    with pytest.raises(TypeError):  # the stand-in returns None: proof it was called
        more = [*PAIRS, Pair(question="a", positive="b", negative="c")]
        run_sweep(tiny_llama, vec, QUESTIONS, tmp_path, config, pairs=more)
    assert writes == ["margin"]


def test_sweep_controls_run_as_rows_with_bands(tiny_llama, tmp_path):
    from steerlab.evaluate.controls import random_directions
    from steerlab.steering.generation import generate_batch
    from steerlab.steering.steerer import SteeringSpec

    torch.manual_seed(1)
    vec = SteeringVector(torch.randn(tiny_llama.n_layers, tiny_llama.d_model))
    config = SweepConfig("1", [-2.0, 2.0], max_new_tokens=3, controls=3, controls_at="all")  # every cell
    result = run_sweep(tiny_llama, vec, QUESTIONS, tmp_path, config, pairs=PAIRS)
    controls = [json.loads(x) for x in (tmp_path / "control_generations.jsonl").read_text().splitlines()]
    assert len(result.generations) == 2 * len(QUESTIONS) and len(controls) == 3 * 2 * len(QUESTIONS)
    assert all(r["control"] is None for r in result.generations)
    # a control row equals generating with that random direction alone
    direction = SteeringVector(random_directions(vec, 3, seed=0)[1])
    alone = generate_batch(tiny_llama, QUESTIONS, steering=SteeringSpec(direction, 1, 2.0), max_new_tokens=3)
    mine = [r["text"] for r in controls if r["control"] == 1 and r["coeff"] == 2.0]
    assert mine == [g.text for g in alone]
    for row in result.margins:
        assert row["random_lo"] <= row["random_mean"] <= row["random_hi"] and 0 < row["random_p"] <= 1
        assert row["steerable_fraction"] + row["anti_steerable_fraction"] <= 1
    again = run_sweep(tiny_llama, vec, QUESTIONS, tmp_path, config, pairs=PAIRS)
    assert again.margins == result.margins  # deterministic, and read back from margins.csv


def test_default_sweep_generates_controls_only_where_an_effect_is_reported(tiny_llama, tmp_path, monkeypatch):
    """Controls run where they cost little (margins from shared prompts) or where an effect is reported:
    margins steering whole sequences at each layer's most coherent large coefficient, generated text
    only when judged, at one cell per layer."""
    from tiny import make_number_judge

    from steerlab.formats.traits import load_trait
    from steerlab.judge import make_judge
    from steerlab.pipelines.sweep_evidence import margin_reported_coeff, reported_coeff, sweep_plan

    torch.manual_seed(2)
    vec = SteeringVector(torch.randn(tiny_llama.n_layers, tiny_llama.d_model))
    config = SweepConfig("1,2", [-2.0, 0.0, 2.0], max_new_tokens=3, controls=3)
    plain = run_sweep(tiny_llama, vec, QUESTIONS, tmp_path / "plain", config, pairs=PAIRS)
    assert (tmp_path / "plain" / "control_generations.jsonl").read_text() == ""  # nothing reads them
    assert [m["alternative"] for m in plain.margins[:3]] == ["less", "two-sided", "greater"]
    for layer in (1, 2):
        rows = [m for m in plain.margins if m["layer"] == layer]
        reported = margin_reported_coeff(config.coeffs, [m["fluency"] for m in rows], rows[1]["fluency"], 1.0)
        assert [m["coeff"] for m in rows if m["reported"]] == [reported]
        assert [m["coeff"] for m in rows if m["random_k"] == 3] == [reported]  # steering whole sequences
    # at response positions the margins share prompts: every cell gets its controls
    shared = replace(config, positions="response")
    every = run_sweep(tiny_llama, vec, QUESTIONS, tmp_path / "shared", shared, pairs=PAIRS).margins
    assert all(m["random_k"] == 3 and m["verdict"] for m in every)
    plan = sweep_plan(config, 2, len(QUESTIONS), judged=False, n_pairs=len(PAIRS))
    assert (plan.generations, plan.control_generations, plan.judge_calls) == (12, 0, 0)
    assert plan.margin_sequences == 2 * 1 * (1 + 2 * 3 + 3 * 2)  # unsteered, every cell, controls at one cell
    assert sweep_plan(shared, 2, 2, False, 1).margin_sequences == 2 * (1 + 6 + 3 * 6)

    judge = make_judge(make_number_judge())
    prompts = []
    real_judge = judge.score
    monkeypatch.setattr(judge, "score", lambda ps: prompts.extend(ps) or real_judge(ps))
    evil = load_trait("evil").eval_prompt
    judged = run_sweep(tiny_llama, vec, QUESTIONS, tmp_path / "judged", config, judge=judge, eval_prompt=evil)
    controls = [json.loads(x) for x in (tmp_path / "judged" / "control_generations.jsonl").read_text().splitlines()]
    for layer in (1, 2):
        mine = [r for r in controls if r["layer"] == layer]
        reported = reported_coeff([r for r in judged.generations if r["layer"] == layer], config.min_coherence)
        assert reported is not None and reported != 0 and {r["coeff"] for r in mine} == {reported}
        assert len(mine) == 3 * len(QUESTIONS) and {r["control"] for r in mine} == {0, 1, 2}
        rows = [s for s in judged.scores if s["layer"] == layer]
        assert [s["coeff"] for s in rows if s["reported"]] == [reported]
        assert all((s.get("random_k") == 3) == s["reported"] for s in rows)  # a band only where controls ran
    plan = sweep_plan(config, 2, len(QUESTIONS), judged=True)
    assert plan.control_generations == len(controls) == 12 and plan.judge_calls == len(prompts) == 2 * (12 + 12)
    assert "12 generations" in plan.describe() and "48 judge calls" in plan.describe()
    every = sweep_plan(replace(config, controls_at="all"), 2, len(QUESTIONS), judged=True)
    assert every.control_generations == 3 * 12 and every.judge_calls == 2 * 4 * 12


def test_reported_cell_is_the_largest_coherent_coefficient():
    from steerlab.pipelines.sweep_evidence import reported_coeff

    rows = [{"coeff": c, "coherence": m} for c, m in ((-4.0, 80), (-2.0, 90), (0.0, 95), (2.0, 70), (4.0, 30))]
    assert reported_coeff(rows, 50.0) == 2.0  # positive first, the largest still coherent
    assert reported_coeff([r for r in rows if r["coeff"] <= 0], 50.0) == -4.0
    assert reported_coeff(rows, 99.0) == -2.0  # none coherent enough: the most coherent non-zero one
    assert reported_coeff([{"coeff": 2.0, "coherence": None}], 50.0) is None


def test_bad_controls_at_fails_before_model_work():
    from steerlab.errors import SteerlabError

    with pytest.raises(SteerlabError, match="--controls-at 'some': expected one of reported, all"):
        SweepConfig("1", [1.0], controls_at="some")
