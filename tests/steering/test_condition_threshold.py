"""Calibrating a CAST condition: the most accurate threshold and comparator, the observed range, the
per-layer scan, condition.json, the built-in examples and the condition vector they give."""

from __future__ import annotations

import json

import pytest
import torch

from steerlab.errors import SteerlabError
from steerlab.extract.condition import extract_condition_vector
from steerlab.formats.condition_examples import condition_examples
from steerlab.steering.condition_threshold import (
    calibrate_condition,
    fit_threshold,
    load_condition,
    score_threshold,
)
from steerlab.steering.conditions import condition_similarities, gate_samples

POSITIVES = ["how should I store fresh bread so it stays soft", "the quick brown fox", "bread fox dog", "soft bread"]
NEGATIVES = ["0 1 2 3 4 5", "drink water rest", "always back up your files", "10 50 99 100"]


def test_fit_threshold_separates_and_picks_the_comparator():
    pos, neg = torch.tensor([0.30, 0.35, 0.50]), torch.tensor([0.10, 0.20, 0.25])
    fit = fit_threshold(pos, neg)
    assert (fit.comparator, fit.accuracy, fit.positive_pass, fit.negative_pass) == (">", 1.0, 1.0, 0.0)
    assert 0.25 < fit.threshold < 0.30 and fit.gap == pytest.approx(0.05)
    low = fit_threshold(neg, pos)  # positives below negatives: steer when the similarity is below θ
    assert low.comparator == "<" and low.accuracy == 1.0 and 0.25 < low.threshold < 0.30
    forced = fit_threshold(pos, neg, ">")
    assert forced.comparator == ">" and forced.threshold == fit.threshold
    # overlapping groups: the best accuracy over every breakpoint, computed by brute force here
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, generator=gen) * 0.1 + 0.05, torch.randn(20, generator=gen) * 0.1
    best = max(score_threshold(a, b, t, op).accuracy for t in torch.linspace(-0.5, 0.5, 2001).tolist() for op in "<>")
    assert fit_threshold(a, b).accuracy == pytest.approx(best)
    with pytest.raises(SteerlabError, match="same similarity"):
        fit_threshold(torch.tensor([0.1, 0.1]), torch.tensor([0.1]))
    with pytest.raises(SteerlabError, match="at least one positive"):
        fit_threshold(torch.tensor([]), torch.tensor([0.1]))


def test_calibrate_condition_scans_layers_and_round_trips_through_condition_json(tiny_llama, tmp_path):
    lm = tiny_llama
    vec = extract_condition_vector(lm, POSITIVES, NEGATIVES)
    calib = calibrate_condition(lm, vec, "all", POSITIVES, NEGATIVES, heldout=(POSITIVES[:2], NEGATIVES[:2]))
    assert [row["layer"] for row in calib.layers] == list(range(lm.n_layers))
    best = max(calib.layers, key=lambda r: (r["accuracy"], r["gap"]))
    cond = calib.condition
    assert cond.layer == best["layer"] and cond.threshold == best["threshold"] and calib.auto
    sims = condition_similarities(lm, [cond], gate_samples(POSITIVES + NEGATIVES))[0]
    passed = cond.passes(sims)
    assert calib.fit.accuracy == (int(passed[:4].sum()) + int((~passed[4:]).sum())) / 8
    assert cond.observed == (float(sims.min()), float(sims.max()))
    assert calib.positive["min"] == float(sims[:4].min()) and calib.negative["max"] == float(sims[4:].max())
    assert calib.heldout is not None and calib.heldout["n"] == 4

    path = tmp_path / "condition.json"
    path.write_text(json.dumps(calib.to_json(cond.direction(lm), model="tiny")))
    loaded = load_condition(path)
    assert (loaded.layer, loaded.threshold, loaded.comparator, loaded.observed) == (
        cond.layer,
        cond.threshold,
        cond.comparator,
        cond.observed,
    )
    assert torch.equal(condition_similarities(lm, [loaded], gate_samples(POSITIVES + NEGATIVES))[0], sims)
    with pytest.raises(SteerlabError, match="outside the similarities observed"):
        load_condition(path, threshold=cond.observed[1] + 0.01)

    # a given threshold is scored, and refused outside the range observed on the examples
    given = calibrate_condition(lm, vec, cond.layer, POSITIVES, NEGATIVES, threshold=cond.threshold)
    assert not given.auto and given.fit.accuracy == calib.fit.accuracy
    with pytest.raises(SteerlabError, match="outside the similarities observed"):
        calibrate_condition(lm, vec, cond.layer, POSITIVES, NEGATIVES, threshold=cond.observed[0] - 0.01)
    with pytest.raises(SteerlabError, match="for one layer"):
        calibrate_condition(lm, vec, "1,2", POSITIVES, NEGATIVES, threshold=0.0)
    with pytest.raises(SteerlabError, match="positive and negative example prompts"):
        calibrate_condition(lm, vec, 1, POSITIVES, [])
    with pytest.raises(SteerlabError, match="--layer 7 is out of range"):
        calibrate_condition(lm, vec, 7, POSITIVES, NEGATIVES)
    with pytest.raises(SteerlabError, match="condition vector: vector d_model 3"):
        calibrate_condition(lm, torch.ones(3), 1, POSITIVES, NEGATIVES)


def test_load_condition_refuses_malformed_files(tmp_path):
    bad = tmp_path / "bad.json"
    for doc, needle in (
        ([1, 2], "expected a steerlab.condition/1 document"),
        ({"format": "steerlab.condition/1", "direction": []}, "'direction' must be a non-empty list"),
        ({"format": "steerlab.condition/1", "direction": [1.0], "layer": "x"}, "field 'layer'"),
        (
            {"format": "steerlab.condition/1", "direction": [1.0], "layer": 1, "threshold": 2.0,
             "comparator": ">", "reduction": "prompt_avg"},
            r"must be in \[-1, 1\]",
        ),
    ):  # fmt: skip
        bad.write_text(json.dumps(doc))
        with pytest.raises(SteerlabError, match=needle):
            load_condition(bad)


@pytest.mark.slow
def test_the_cooking_gate_separates_held_out_prompts_on_smollm2(smollm2):
    """The built-in cooking condition on the embedded model: vector and threshold from the train lines, the
    gate then sorts the held-out lines (accuracy reported by steerlab condition; here a floor)."""
    train, held = condition_examples("cooking", "train"), condition_examples("cooking", "heldout")
    vec = extract_condition_vector(smollm2, *train)
    calib = calibrate_condition(smollm2, vec, "6,10,16", *train, heldout=held)
    assert calib.fit.accuracy >= 0.9 and calib.heldout is not None and calib.heldout["accuracy"] >= 0.8
