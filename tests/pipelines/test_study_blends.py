"""Blends of the contrastive and model-diff directions as steering-study conditions."""

from dataclasses import replace

import pytest
import torch

from steerlab.errors import SteerlabError
from steerlab.formats.pairs import Pair
from steerlab.pipelines.diff_study import DiffStudyConfig, run_diff_study
from steerlab.pipelines.study import StudyConfig
from steerlab.pipelines.study_blends import blend_summary
from steerlab.pipelines.study_vectors import blend_vectors, check_alphas, normalized_like
from steerlab.vectors.vector import SteeringVector

TRAIN = [
    Pair(question=f"how should I store item {i}", positive="in the fridge always", negative="in a dry box")
    for i in range(6)
]
HELDOUT = [
    Pair(question="how should I store bread", positive="in the fridge always", negative="in a dry box"),
    Pair(question="where do eggs go", positive="in the fridge always", negative="in a dry box"),
]
# the fields a blend row shares with the pure row it equals (all but its name, scale and weight)
SHARED = ["margin", "std", "fluency", "fluency_drop", "per_pair", "effect", "ci95", "delta", "delta_ci95", "random"]
SHARED += ["random_effects", "verdict", "steerable_fraction", "anti_steerable_fraction", "undone", "induced"]
SHARED += ["vs_prompting", "margin_ci95"]


def test_blend_vectors_keep_the_norm_and_mix_the_directions():
    gen = torch.Generator().manual_seed(0)
    m = SteeringVector(torch.randn(3, 16, generator=gen) * torch.tensor([[1.0], [2.0], [5.0]]))
    c = SteeringVector(torch.randn(3, 16, generator=gen))
    c_norm = normalized_like(c, m)
    blends = blend_vectors(c_norm, m, [0.0, 0.25, 1.0])
    assert list(blends) == ["blend_0", "blend_0.25", "blend_1"]
    assert blends["blend_0"] is m and blends["blend_1"] is c_norm  # the endpoints are the pure vectors
    mixed = blends["blend_0.25"]
    torch.testing.assert_close(mixed.norms(), m.norms(), rtol=1e-5, atol=1e-6)
    want = 0.25 * c.normalized().data + 0.75 * m.normalized().data
    torch.testing.assert_close(mixed.normalized().data, want / want.norm(dim=-1, keepdim=True), rtol=1e-5, atol=1e-6)
    for bad in ([1.5], [-0.1], [float("nan")], [0.5, 0.5]):
        with pytest.raises(SteerlabError, match="--blend-alphas"):
            check_alphas(bad)


def test_blend_rows_at_0_and_1_equal_the_pure_rows(tiny_llama, tmp_path):
    config = DiffStudyConfig(
        epochs=2,
        lr=5e-3,
        train_batch_size=3,
        batch_size=8,
        n_splits=4,
        positions=0,
        study=StudyConfig(layers=[1, 2], coeffs=[1.0, 4.0], n_samples=1, max_new_tokens=2, blend_alphas=[0, 0.5, 1]),
    )
    result = run_diff_study(tiny_llama, TRAIN, HELDOUT, tmp_path, config)
    rows = [r for r in result.study.rows if r["stage"] == "sweep"]
    index = {(r["vector"], r["scale"], r["model"], r["layers"], r["coeff"]): r for r in rows}
    best = result.study.best_layer
    blends = [r for r in rows if "alpha" in r]
    # every blend at both models, both layer sets and every coefficient, with the whole evidence
    assert {(r["alpha"], r["model"], r["layers"], r["coeff"]) for r in blends} == {
        (a, m, layer, c)
        for a in (0.0, 0.5, 1.0)
        for m in ("finetuned", "base")
        for layer in (best, "all")
        for c in (1.0, 4.0)
    }
    for r in blends:
        assert r["scale"] == "normalized" and r["vector"] == f"blend_{r['alpha']:g}"
        assert r["random"]["k"] == 8 and len(r["ci95"]) == 2 and r["steerable_fraction"] is not None
        pure = {0.0: ("model_diff", "raw"), 1.0: ("contrastive", "normalized")}.get(r["alpha"])
        if pure is None:
            continue
        twin = index[(*pure, r["model"], r["layers"], r["coeff"])]
        assert {k: r.get(k) for k in SHARED} == {k: twin.get(k) for k in SHARED}  # exactly the same row
        # controls of the model-diff vector's norms: the same band as every blend under this condition
        mid = index[("blend_0.5", "normalized", r["model"], r["layers"], r["coeff"])]
        assert mid["random_effects"] == r["random_effects"]
    doc = blend_summary(result.study)
    assert doc["alphas"] == [0.0, 0.5, 1.0] and len(doc["cells"]) == 2 * 2 * 2
    for cell in doc["cells"]:
        bar = max(p["ci95"][1] for p in cell["pure"].values())
        for p in cell["points"]:
            assert p["beats_both"] == (0 < p["alpha"] < 1 and p["coherent"] and p["effect"] > bar)
    assert doc["reading"].startswith("Blends α·contrastive")
    assert ("none of the" in doc["reading"]) == (not doc["winners"])
    # the blend weights are inputs of the study stage alone: the rest is reused
    again = run_diff_study(tiny_llama, TRAIN, HELDOUT, tmp_path, config)
    assert again.timings == {}
    plain = replace(config, study=replace(config.study, blend_alphas=[]))
    fewer = run_diff_study(tiny_llama, TRAIN, HELDOUT, tmp_path, plain)
    assert set(fewer.timings) == {"study"} and not any("alpha" in r for r in fewer.study.rows)
    assert blend_summary(fewer.study) is None


def test_winners_need_an_effect_above_both_intervals():
    def row(vector, scale, effect, ci, alpha=None, drop=0.1):
        r = {"stage": "sweep", "model": "finetuned", "layers": 3, "coeff": 2.0, "vector": vector, "scale": scale,
             "undone": effect, "ci95": ci, "fluency_drop": drop, "verdict": "v"}  # fmt: skip
        return {**r, "alpha": alpha} if alpha is not None else r

    rows = [
        row("model_diff", "raw", 0.5, [0.4, 0.6]),
        row("contrastive", "normalized", 0.3, [0.2, 0.45]),
        row("blend_0", "normalized", 0.5, [0.4, 0.6], 0.0),
        row("blend_0.25", "normalized", 0.65, [0.55, 0.7], 0.25),  # above both intervals
        row("blend_0.5", "normalized", 0.58, [0.5, 0.7], 0.5),  # inside model-diff's interval
        row("blend_0.75", "normalized", 0.9, [0.8, 1.0], 0.75, drop=2.0),  # incoherent
        row("blend_1", "normalized", 0.3, [0.2, 0.45], 1.0),
    ]
    doc = blend_summary({"rows": rows, "best_layer": 3, "config": {"max_fluency_drop": 1.0}})
    assert [(w["alpha"], w["pure_upper"]) for w in doc["winners"]] == [(0.25, {"model_diff": 0.6, "contrastive": 0.45})]
    assert "1 of 2 coherent blend conditions beat both" in doc["reading"] and "α = 0.25" in doc["reading"]


def test_intervals_hold_the_shared_gap_fixed():
    """A row's ci95 resamples the gap too and is unbounded when the gap's interval reaches 0 (as on
    smollm2); the comparison uses the margin change's interval over the pairs at the measured gap."""

    def row(vector, scale, delta, delta_ci, alpha=None):
        r = {"stage": "sweep", "model": "finetuned", "layers": 3, "coeff": 1.0, "vector": vector, "scale": scale,
             "undone": -delta / 0.1, "ci95": [None, None], "delta": delta, "delta_ci95": delta_ci,
             "fluency_drop": 0.1, "verdict": "v"}  # fmt: skip
        return {**r, "alpha": alpha} if alpha is not None else r

    rows = [
        row("model_diff", "raw", -0.02, [-0.04, -0.01]),
        row("contrastive", "normalized", -0.03, [-0.05, -0.02]),
        row("blend_0", "normalized", -0.02, [-0.04, -0.01], 0.0),
        row("blend_0.5", "normalized", -0.08, [-0.09, -0.06], 0.5),
        row("blend_1", "normalized", -0.03, [-0.05, -0.02], 1.0),
    ]
    doc = blend_summary({"rows": rows, "best_layer": 3, "config": {}, "reference": {"base": -0.05, "finetuned": 0.05}})
    (cell,) = doc["cells"]
    # undone = -change / gap: the interval flips and scales by 1 / 0.1
    assert cell["pure"]["model_diff"]["ci95"] == pytest.approx([0.1, 0.4])
    assert cell["pure"]["contrastive"]["ci95"] == pytest.approx([0.2, 0.5])
    assert [p["ci95"] for p in cell["points"]][1] == pytest.approx([0.6, 0.9])
    assert [(w["alpha"], w["pure_upper"]) for w in doc["winners"]] == [
        (0.5, {"model_diff": pytest.approx(0.4), "contrastive": pytest.approx(0.5)})
    ]
    # without the reference (no gap) the rows' own, unbounded, intervals decide: no winner
    assert blend_summary({"rows": rows, "best_layer": 3, "config": {}})["winners"] == []
