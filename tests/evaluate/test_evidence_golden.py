"""Golden steering rows: every path that reports a steering effect — the diff study's rows and prompting
baseline, a trait's margin rows, a sweep's margins and judged scores, a trait's judged scores — goes
through the one evidence function (steerlab.evaluate.evidence), and a refactor must keep their numbers.

``steering_rows.json`` is the current golden; regenerate it only on purpose, after a change meant to
alter the numbers: ``STEERLAB_UPDATE_GOLDEN=1 pytest tests/evaluate/test_evidence_golden.py``.

``steering_rows_before_evidence.json`` was saved by the code before the evidence was unified (main at
0ef0f10; the same scenario, the old API). Unifying it kept every number (to float32 rounding) except,
on purpose:
- **p of trait rows, sweep margins and judged scores**: was two-sided (|control| >= |effect|), is now
  one-sided the coefficient's intended way (the diff study's rows were one-sided already). Where the
  effect goes the intended way the new p is never larger; coefficient 0 stays two-sided and unchanged.
- **verdicts**: they now know the resolution of K controls ("outside all 4 random directions; with 4
  controls p cannot go below 0.2 ...") and the wrong way for negative coefficients.
- **fields added**: ``alternative`` (everywhere), ``random_effects`` and ``vs_prompting_ci95`` (study
  rows), ``random_k`` / ``verdict`` / ``reported`` (sweep tables; margins also ``fluency`` and
  ``fluency_drop``, and every column in every row: the steerable fractions None at coefficient 0),
  ``score_verdict`` (trait scores);
  ``layers`` of study rows are numbers (were strings); an unbounded ``vs_prompting_ci95`` of a trait row
  is ``[None, None]`` (was None: None now means "no interval", n < 2).

Values are compared within float32 rounding of their inputs (log-likelihoods of ~6 nats/token, judge
scores up to 100), scaled by the gap for gap fractions: stored on one machine, recomputed on another
BLAS they differ by rounding, while a change of method moves them by far more.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny import make_number_judge, make_tiny

from steerlab import Pair, extract_contrastive, extract_model_diff
from steerlab.evaluate.controls import control_verdict, empirical_p, random_directions
from steerlab.extract.model_diff import pair_diff_samples
from steerlab.formats.traits import load_trait
from steerlab.judge import make_judge
from steerlab.pipelines import trait_steering as ts
from steerlab.pipelines.records import layer_set
from steerlab.pipelines.study import StudyConfig, run_study
from steerlab.pipelines.sweep import SweepConfig, run_sweep
from steerlab.pipelines.trait_scores import score_summary

GOLDEN = Path(__file__).parents[1] / "golden" / "steering_rows.json"
BEFORE = GOLDEN.with_name("steering_rows_before_evidence.json")
EPS32 = 2.0**-23
NATS = 64 * EPS32 * 8.0  # log-likelihoods of ~6 nats/token: float32 rounding, 64 ulps
SCORE = 64 * EPS32 * 100.0  # judge scores 0-100
TRAIN = [
    Pair(question=f"how should I store item {i}", positive="in the fridge always", negative="in a dry box")
    for i in range(6)
]
HELD = [
    Pair(question="how should I store bread", positive="in the fridge always", negative="in a dry box"),
    Pair(question="is the fox quick", positive="no never", negative="yes always"),
    Pair(question="what do I do with a fever", positive="ignore it", negative="drink water and rest"),
    Pair(question="where do eggs go", positive="on the shelf", negative="in the fridge"),
]


def _score_rows() -> list[dict]:
    """Judged rows as trait_scores writes them, fixed by a seeded generator (score_summary is pure)."""
    g = torch.Generator().manual_seed(3)
    rows = []
    conditions = [("real", 20.0), ("control/0", 0.0), ("control/1", 5.0), ("control/2", -3.0)]
    conditions += [("unsteered", 0.0), ("prompted/pos", 30.0), ("prompted/neg", -20.0)]
    for cond, shift in conditions:
        coeffs = [0.0] if cond in ("unsteered", "prompted/pos", "prompted/neg") else [-2.0, 2.0, 4.0]
        for c in coeffs:
            for q in range(4):
                s = float(40 + shift * (c / 2 if cond == "real" else 1) + 10 * torch.rand(1, generator=g))
                coherence = float(60 + 20 * torch.rand(1, generator=g))
                rows.append(
                    {
                        "condition": cond,
                        "coeff": c,
                        "question_index": q,
                        "trait_score": min(100.0, max(0.0, s)),
                        "coherence": coherence,
                    }
                )
    return rows


def _rows(tmp: Path) -> dict:
    lm = make_tiny("llama")
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(copy.deepcopy(lm.model), lora).save_pretrained(str(tmp / "adapter"))
    vectors = {
        "contrastive": extract_contrastive(lm, TRAIN),
        "model_diff": extract_model_diff(lm, tmp / "adapter", pair_diff_samples(TRAIN)),
    }
    config = StudyConfig(
        layers=[1, 2],
        coeffs=[1.0, 4.0],
        n_samples=1,
        max_new_tokens=2,
        controls=4,
        n_bootstrap=200,
        prompts={"behaviour": "be wrong", "opposite": "be right"},
    )
    study = run_study(lm, tmp / "adapter", vectors, HELD, config).to_dict()
    doc = {"study": {k: study[k] for k in ("reference", "prompting", "rows", "best_layer", "comparisons")}}
    vec = vectors["contrastive"]
    scan = ts.layer_scan(lm, HELD, vec.data, [1, 2], 2.0, "response", {"pos": "be evil", "neg": "be kind"}, 8)
    best, scan_rows = ts.read_layer_scan(scan, 1.0)
    controls = random_directions(vec, 4, 0)
    sweep = ts.sweep_margins(lm, HELD, vec.data, controls, best, [-2.0, 2.0, 4.0], "response", 8)
    doc["trait"] = {
        "best_layer": best,
        "layer_scan": scan_rows,
        **ts.reference_summary(scan, 200, 0),
        "rows": ts.margin_rows(scan, sweep, 200, 0),
    }
    questions = ["how should I store bread", "is water wet"]
    config = SweepConfig("1,2", [-2.0, 0.0, 2.0], max_new_tokens=2, controls=4, n_bootstrap=200, controls_at="all")
    doc["sweep_margins"] = run_sweep(lm, vec, questions, tmp / "sweep", config, pairs=HELD).margins
    judged = SweepConfig("1", [-2.0, 2.0], max_new_tokens=3, controls=3, n_bootstrap=200, controls_at="all")
    judge = make_judge(make_number_judge())
    doc["sweep_scores"] = run_sweep(
        lm,
        vec,
        [*questions, "where do eggs go"],
        tmp / "judged",
        judged,
        judge=judge,
        eval_prompt=load_trait("evil").eval_prompt,
    ).scores
    doc["score_input"] = _score_rows()
    doc["trait_scores"] = score_summary(doc["score_input"], [-2.0, 2.0, 4.0], 200, 0)
    return json.loads(json.dumps(doc))  # as stored: tuples as lists, keys as strings


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict:
    """Every steering path's rows on a tiny model, computed once for the tests below."""
    return _rows(tmp_path_factory.mktemp("golden"))


def assert_close(new, old, atol: float, where: str = "") -> None:
    """Nested dicts / lists equal: numbers within ``atol`` (plus 64 float32 ulps of their size), the
    rest exactly; p-values and counts exactly."""
    if isinstance(old, dict):
        assert isinstance(new, dict) and new.keys() == old.keys(), (where, set(new) ^ set(old))
        for k in old:
            assert_close(new[k], old[k], 0.0 if k in ("p", "random_p", "k", "random_k") else atol, f"{where}.{k}")
    elif isinstance(old, list):
        assert isinstance(new, list) and len(new) == len(old), where
        for i, (a, b) in enumerate(zip(new, old, strict=True)):
            assert_close(a, b, atol, f"{where}[{i}]")
    elif isinstance(old, float) and not isinstance(new, bool):
        assert isinstance(new, int | float), (where, new, old)
        assert math.isclose(new, old, rel_tol=64 * EPS32, abs_tol=atol), (where, new, old)
    else:
        assert new == old, (where, new, old)


def _tolerances(doc: dict) -> dict[str, float]:
    gap = abs(doc["study"]["reference"]["finetuned"] - doc["study"]["reference"]["base"])
    return {
        "study": NATS / gap,  # gap fractions: rounding of the margins, divided by the gap
        "trait": NATS,
        "sweep_margins": NATS,
        "sweep_scores": SCORE,
        "score_input": 0.0,
        "trait_scores": SCORE,
    }


def test_steering_rows_match_the_golden(rows):
    if os.environ.get("STEERLAB_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert rows.keys() == golden.keys()
    for section, atol in _tolerances(golden).items():
        assert_close(rows[section], golden[section], atol, section)


# --- before the evidence was unified ------------------------------------------------------------------

ADDED = {"alternative", "random_effects", "vs_prompting_ci95", "random_k", "verdict", "reported", "score_verdict"}
RESIDED = {"p", "random_p", "verdict"}  # recomputed with one sidedness and the resolution-aware verdict


def _comparable(new: dict, old: dict) -> tuple[dict, dict]:
    """The keys both hold and that were not changed on purpose (module docstring)."""
    keys = (set(new) & set(old)) - RESIDED - ADDED
    return {k: _strip(new[k]) for k in keys}, {k: _strip(old[k]) for k in keys}


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in ADDED and k not in RESIDED}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _intended(coeff: float) -> int:
    return 1 if coeff > 0 else -1 if coeff < 0 else 0


def test_unifying_the_evidence_kept_every_number_but_the_sidedness(rows):
    before = json.loads(BEFORE.read_text())
    tol = _tolerances(before)
    # the diff study: numbers unchanged (its p was one-sided already), layers now numbers
    old_study = before["study"]
    for r in old_study["rows"]:
        r["layers"] = layer_set(r["layers"])
    for c in old_study["comparisons"]:
        c["layers"] = layer_set(c["layers"])
    study = rows["study"]
    assert_close(study["reference"], old_study["reference"], NATS, "reference")
    assert_close(study["prompting"], old_study["prompting"], tol["study"], "prompting")
    assert study["best_layer"] == old_study["best_layer"]
    assert_close(study["comparisons"], old_study["comparisons"], NATS, "comparisons")
    assert len(study["rows"]) == len(old_study["rows"])
    for new, old in zip(study["rows"], old_study["rows"], strict=True):
        assert_close(*_comparable(new, old), tol["study"], "study row")
        if old.get("random"):
            assert new["random"]["p"] == old["random"]["p"] and new["alternative"] == "greater"
            assert new["verdict"] == control_verdict(new["effect"], new["random"])
    # the multi-trait study's layer choice and references, and the judged references: unchanged
    for key in ("best_layer", "layer_scan", "unsteered", "prompting"):
        assert_close(rows["trait"][key], before["trait"][key], NATS, f"trait.{key}")
    for key in ("unsteered", "prompting"):
        assert_close(rows["trait_scores"][key], before["trait_scores"][key], SCORE, f"trait_scores.{key}")
    for new, old in zip(rows["trait"]["rows"], before["trait"]["rows"], strict=True):
        if old["vs_prompting_ci95"] is None:  # unbounded: now [None, None]; None means "no interval"
            assert new["vs_prompting_ci95"] == [None, None]
        else:
            assert_close(new["vs_prompting_ci95"], old["vs_prompting_ci95"], NATS, "vs_prompting_ci95")
    # the rows: the same numbers; p now one-sided the coefficient's way
    for section, key, p_of in (
        ("trait", "rows", lambda r: r["random"]["p"]),
        ("sweep_margins", None, lambda r: r["random_p"]),
        ("sweep_scores", None, lambda r: r["random_p"]),
        ("trait_scores", "rows", lambda r: r["score_random"]["p"]),
    ):
        new_rows = rows[section][key] if key else rows[section]
        old_rows = before[section][key] if key else before[section]
        assert len(new_rows) == len(old_rows), section
        for new, old in zip(new_rows, old_rows, strict=True):
            assert_close(*_comparable(new, old), tol[section], section)
            sign = _intended(new["coeff"])
            if sign == 0:
                assert p_of(new) == p_of(old)  # no intended direction: two-sided as before
                continue
            # the effect the p is about, read back from the row, and the controls' effects
            if section == "trait":
                effect, controls = new["effect"], new["random_effects"]
            elif section == "sweep_margins":
                effect, controls = new["delta"], None
            else:
                effect, controls = None, None
            if controls is not None:
                assert p_of(new) == pytest.approx(empirical_p(effect, controls, "greater" if sign > 0 else "less"))
            if effect is not None and effect * sign >= 0:
                assert p_of(new) <= p_of(old) + 1e-12, (section, new["coeff"])
