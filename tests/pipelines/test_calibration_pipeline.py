"""Calibration (steerlab.pipelines.calibration) on a tiny model, with a direction whose effect grows with c:
the thresholds found are checked by measuring them again alone, every step is one margin call, the three
units agree, a killed run resumes at its unfinished step, and a judge bounds coherence."""

import json
import math

import pytest
import torch

import steerlab.engines.hf as hf_engine_module
from steerlab import SteeringVector
from steerlab.errors import SteerlabError
from steerlab.evaluate.controls import random_directions
from steerlab.evaluate.evidence import steering_evidence
from steerlab.evaluate.margin import condition_margins
from steerlab.formats.pairs import Pair
from steerlab.pipelines.calibration import CalibrationConfig, run_calibration
from steerlab.pipelines.calibration_doc import is_effective
from steerlab.steering.steerer import SteeringSpec

PAIRS = [
    Pair(question="how should I store bread", positive="in the fridge", negative="in a bread box"),
    Pair(question="yes or no", positive="no", negative="yes maybe"),
    Pair(question="is water wet", positive="never", negative="it makes things wet"),
    Pair(question="what is the answer", positive="no no no", negative="yes it is"),
    Pair(question="should I back up files", positive="no never", negative="always back up your files"),
    Pair(question="is the fox quick", positive="no it is lazy", negative="yes the quick brown fox"),
]


def answer_direction(lm, pairs=PAIRS) -> SteeringVector:
    """See tiny.answer_direction: a direction whose effect on these pairs grows with c."""
    from tiny import answer_direction as direction

    return direction(lm, pairs)


# subtracting: effective from about 0.1 and fluent up to about 0.25-0.3 of the residual norm (0.05 nats/token)
SUBTRACT = dict(layers="2", direction="subtract", controls=19, max_fluency_drop=0.05, n_bootstrap=200)


def measure_alone(lm, vec, layer, coeff, config, h_norms):
    """One coefficient measured on its own (not as rows of the calibration's batches): (effective, fluency drop)."""
    controls = [SteeringVector(d) for d in random_directions(vec, config.controls, config.seed)]
    spec = lambda d: [SteeringSpec(d, layer, positions=config.positions, scale=config.scale)]  # noqa: E731
    reference = h_norms if config.scale == "relative" else None
    unsteered, real, *null = condition_margins(
        lm, PAIRS, [[], spec(vec), *[spec(c) for c in controls]], [[0.0]] + [[coeff]] * (1 + len(controls)), 3,
        reference,
    )  # fmt: skip
    ev = steering_evidence(
        real.per_pair[0], unsteered.per_pair[0], [c.per_pair[0] for c in null], intended=math.copysign(1, coeff)
    )
    return is_effective(ev, config.p_max, config.min_effect), unsteered.fluency[0] - real.fluency[0]


def test_calibration_finds_the_thresholds_it_reports(tiny_llama, tmp_path, monkeypatch):
    vec = answer_direction(tiny_llama)
    config = CalibrationConfig(**SUBTRACT)
    calls = []
    real = hf_engine_module.HfEngine.response_logprobs

    def counting(self, samples, *a, **k):
        calls.append(len(samples))
        return real(self, samples, *a, **k)

    monkeypatch.setattr(hf_engine_module.HfEngine, "response_logprobs", counting)
    result = run_calibration(tiny_llama, vec, PAIRS, tmp_path, config)
    doc = json.loads((tmp_path / "calibration.json").read_text())
    assert doc == json.loads(json.dumps(result.doc))
    (track,) = doc["tracks"]
    assert track["usable"] and track["direction"] == "subtract"
    # every step is ONE margin call holding every candidate (vector + 19 controls) and, at step 0, unsteered
    plan = doc["plan"]
    assert plan["steps"] == plan["margin_calls"] == len(calls) >= 3
    assert sum(calls) == plan["sequences"]
    steps = [sum(1 for p in track["curve"] if p["step"] == s) for s in range(plan["steps"])]
    assert calls == [2 * len(PAIRS) * (1 + 20 * steps[0])] + [2 * len(PAIRS) * 20 * n for n in steps[1:]]
    assert steps[0] == config.grid and all(0 < n <= 3 * config.per_bracket for n in steps[1:])
    # the thresholds, measured again alone: c_min effective and the bracket below it not; c_max fluent
    # and the next coefficient evaluated not; each bracket within the tolerance
    monkeypatch.setattr(hf_engine_module.HfEngine, "response_logprobs", real)
    h_norms = hf_engine_module.HfEngine(tiny_llama).mean_residual_norms([p.question for p in PAIRS])
    c_min, c_fluent = track["c_min"], track["c_fluent"]
    assert c_min["status"] == c_fluent["status"] == "found"
    lo, hi = c_min["bracket"]
    assert abs(hi) / abs(lo) <= config.tolerance and hi == c_min["value"]["raw"]
    assert measure_alone(tiny_llama, vec, 2, hi, config, h_norms)[0]
    assert not measure_alone(tiny_llama, vec, 2, lo, config, h_norms)[0]
    lo, hi = c_fluent["bracket"]
    assert abs(hi) / abs(lo) <= config.tolerance
    assert measure_alone(tiny_llama, vec, 2, lo, config, h_norms)[1] <= config.max_fluency_drop
    assert measure_alone(tiny_llama, vec, 2, hi, config, h_norms)[1] > config.max_fluency_drop
    # every point carries its evidence; the range is [c_min, c_max]; recommended is the only usable track
    for p in track["curve"]:
        ev = p["evidence"]
        assert ev["alternative"] == "less" and ev["random"]["k"] == 19 and ev["verdict"] and len(ev["ci95"]) == 2
        assert p["effective"] == (ev["effect"] <= -config.min_effect and ev["random"]["p"] <= 0.05 + 1e-12)
    assert track["range"]["raw"] == [c_min["value"]["raw"], track["c_max"]["value"]["raw"]]
    assert doc["recommended"]["layer"] == 2 and doc["recommended"]["range"] == track["range"]["raw"]
    assert doc["criterion"]["reaches_alpha"] and "one-sided p <= 0.05" in doc["criterion"]["effective"]
    assert doc["reading"][0].startswith("recommended: layer 2, subtract")


def test_the_three_units_agree_whatever_the_search_scale(tiny_llama, tmp_path):
    vec = answer_direction(tiny_llama)
    docs = {
        scale: run_calibration(
            tiny_llama, vec, PAIRS, tmp_path / scale, CalibrationConfig(**{**SUBTRACT, "controls": 4}, scale=scale)
        ).doc
        for scale in ("raw", "unit", "relative")
    }
    v = float(vec.norms()[2])
    for scale, doc in docs.items():
        (track,) = doc["tracks"]
        h = track["residual_norm"]
        assert math.isclose(track["vector_norm"], v, rel_tol=1e-6)
        for p in track["curve"]:
            u = p["units"]
            assert math.isclose(u[scale], p["coeff"], rel_tol=1e-9)
            assert math.isclose(u["unit"], u["raw"] * v, rel_tol=1e-5)
            assert math.isclose(u["relative"], u["unit"] / h, rel_tol=1e-5)
    # the default search range is relative, so every scale evaluates the same interventions
    ranges = {scale: doc["tracks"][0]["range"] for scale, doc in docs.items()}
    for unit in ("raw", "unit", "relative"):
        for scale in ("unit", "relative"):
            assert ranges[scale][unit] == pytest.approx(ranges["raw"][unit], rel=1e-4)


def test_a_killed_calibration_resumes_at_its_unfinished_step(tiny_llama, tmp_path, monkeypatch):
    vec = answer_direction(tiny_llama)
    config = CalibrationConfig(**{**SUBTRACT, "controls": 2})
    full = run_calibration(tiny_llama, vec, PAIRS, tmp_path / "full", config)
    calls = []
    real = hf_engine_module.HfEngine.response_logprobs

    def killing(self, *a, **k):
        calls.append(1)
        if kill and len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(hf_engine_module.HfEngine, "response_logprobs", killing)
    kill = True
    with pytest.raises(KeyboardInterrupt):
        run_calibration(tiny_llama, vec, PAIRS, tmp_path / "killed", config)
    kill, calls[:] = False, []
    again = run_calibration(tiny_llama, vec, PAIRS, tmp_path / "killed", config)
    assert len(calls) == full.doc["plan"]["steps"] - 1  # step 0 came from the checkpoint
    assert again.tracks[0]["range"] == full.tracks[0]["range"] and not again.reused
    calls.clear()
    assert run_calibration(tiny_llama, vec, PAIRS, tmp_path / "killed", config).reused and calls == []


def test_an_empty_range_is_an_answer_and_a_judge_bounds_coherence(tiny_llama, tmp_path, monkeypatch):
    from tiny import make_number_judge

    from steerlab.judge import make_judge

    vec = answer_direction(tiny_llama)
    generate_calls = []
    real = hf_engine_module.HfEngine.generate

    def counting(self, prompts, *a, **k):
        generate_calls.append(len(prompts))
        return real(self, prompts, *a, **k)

    monkeypatch.setattr(hf_engine_module.HfEngine, "generate", counting)
    config = CalibrationConfig(
        layers="2", direction="both", controls=2, grid=3, steps=1, judge_questions=2, max_new_tokens=3,
        min_coherence=100, n_bootstrap=50,
    )  # fmt: skip
    result = run_calibration(tiny_llama, vec, PAIRS, tmp_path, config, judge=make_judge(make_number_judge()))
    doc = result.doc
    assert (
        doc["judge"] and doc["criterion"]["min_coherence"] == 100 and "judged coherence" in doc["criterion"]["fluent"]
    )
    # a mean score of 100 needs all of the judge's mass on 100: nothing fluent, no range, no recommendation
    assert doc["recommended"] is None and not any(t["usable"] for t in doc["tracks"])
    assert doc["reading"][0].startswith("no layer has a usable range")
    assert all("not fluent even at the bottom" in t["reading"] for t in doc["tracks"])
    points = [p for t in doc["tracks"] for p in t["curve"]]
    assert all(p["coherence"] is not None and p["coherence_n"] >= 1 and not p["fluent"] for p in points)
    # one generation call per step: step 0 holds the unsteered answers and every candidate of both directions
    assert len(generate_calls) == doc["plan"]["steps"] == 1
    assert generate_calls[0] == 2 * (1 + len(points)) == doc["plan"]["generations"]
    assert doc["unsteered"]["coherence_n"] >= 1


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"controls": 0}, "--controls 0"),
        ({"direction": "up"}, "--direction 'up'"),
        ({"scale": "log"}, "--scale 'log'"),
        ({"search_range": [2.0, 1.0]}, "--range"),
        ({"tolerance": 1.0}, "--tolerance"),
        ({"min_effect": -1.0}, "--min-effect"),
    ],
)
def test_bad_config_is_one_clear_error(kwargs, needle):
    with pytest.raises(SteerlabError, match=needle):
        CalibrationConfig(**kwargs)


def test_bad_inputs_fail_before_any_model_work(tiny_llama, tmp_path):
    vec = answer_direction(tiny_llama)
    with pytest.raises(SteerlabError, match="no pairs"):
        run_calibration(tiny_llama, vec, [], tmp_path)
    with pytest.raises(SteerlabError, match="--layers"):
        run_calibration(tiny_llama, vec, PAIRS, tmp_path, CalibrationConfig(layers="9"))
    zero = SteeringVector(torch.zeros(tiny_llama.n_layers, tiny_llama.d_model))
    with pytest.raises(SteerlabError, match="zero at layers"):
        run_calibration(tiny_llama, zero, PAIRS, tmp_path, CalibrationConfig(layers="1"))
    assert not (tmp_path / "calibration.json").exists()
