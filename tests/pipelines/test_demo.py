"""Integration: the demo at its reduced (ci) size on the embedded smollm2, end to end."""

import json
import shutil

import pytest

from steerlab.pipelines.demo import run_demo
from steerlab.report.html import build_report


@pytest.mark.slow
def test_demo_ci_size_end_to_end(tmp_path):
    result = run_demo(tmp_path, size="ci")  # a DemoResult: its summary is summary.json's
    summary = result.summary
    build_report(tmp_path)  # the pipeline computes; the report is rendered on top of its artifacts
    for name in (
        "summary.json",
        "report.html",
        "monitor.json",
        "diff/study.json",
        "diff/directions.json",  # the two directions compared (was compare.json)
        "diff/adapter/adapter_config.json",
        "diff/positions.json",
        "traits/traits.json",
        "calibration/contrastive/calibration.json",  # the two vectors' coefficient ranges at the best layer
        "calibration/model_diff/calibration.json",
    ):
        assert (tmp_path / name).is_file(), name
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["model"] == "smollm2" and on_disk["n_layers"] == 30
    assert len(on_disk["cosine_per_layer"]) == 30
    assert on_disk["reading"] and summary["timings"]["diff_study"] > 0
    # fine-tuning on the train split's deceptive answers raises the held-out behaviour margin
    assert on_disk["margins"]["finetuned"] > on_disk["margins"]["base"]
    # the evidence (docs/design.md §7): every steering row with its interval, random band and per-pair spread
    rows = [r for r in on_disk["best_steering"].values() if r]
    assert rows and all(
        len(r["ci95"]) == 2 and set(r["random"]) >= {"mean", "lo", "hi", "p"} and r["steerable_fraction"] is not None
        for r in rows
    )
    assert on_disk["prompting"]["finetuned_asked_opposite"]["effect"] is not None
    assert on_disk["model_diff_positions"]["position_0"] is not None
    assert {"evil", "sycophantic", "hallucinating", "cosine"} <= set(on_disk["traits"])
    # the study steers at response positions (the seed's evaluation default), and the reading says so
    assert on_disk["steering_positions"] == "response"
    assert any("at the last prompt token and every answer token" in line for line in on_disk["reading"])
    # every steering row's p names its sidedness, and 4 controls cannot reach 0.05: the reading says so
    assert all(r["random"]["alternative"] == "greater" and r["alternative"] == "greater" for r in rows)
    assert on_disk["controls"] == 4 and result.study.best_layer == on_disk["best_layer"]
    read = [
        on_disk["best_steering"].get(f"{v}|finetuned|{on_disk['best_layer']}") for v in ("model_diff", "contrastive")
    ]
    for r in read:
        if r and r["verdict"].startswith(("outside", "beyond")):
            assert any(r["verdict"] in line and "p cannot go below 0.2" in line for line in on_disk["reading"])
    # the all-layers sweep runs at its own, smaller coefficient, and the reading says what it did there
    everywhere = [r for r in result.study.rows if r["stage"] == "sweep" and r["layers"] == "all"]
    assert {(r["coeff"], r["model"]) for r in everywhere} == {(0.125, "finetuned")}
    assert not [k for k in on_disk["best_steering"] if k.endswith("|base|all")]  # not run, so not "none coherent"
    for v in ("model-diff", "contrastive"):
        assert any(line.startswith(f"Subtracting the {v} vector at all 30 layers") for line in on_disk["reading"])
    # the blends: every weight at both models, with its band, and the reading says whether one beats both
    blends = on_disk["blends"]
    assert blends["alphas"] == [0.0, 0.25, 0.5, 0.75, 1.0] and on_disk["objectives"] is None
    assert {(c["model"], c["layers"]) for c in blends["cells"]} == {
        (m, layer) for m in ("finetuned", "base") for layer in (on_disk["best_layer"], "all")
    } - {("base", "all")}  # the demo sweeps all layers on the fine-tuned model only
    assert all(p["random"]["k"] == 4 for c in blends["cells"] for p in c["points"])
    assert blends["reading"] in on_disk["reading"]
    assert "<h2>Blends of the two directions</h2>" in (tmp_path / "report.html").read_text()
    # the calibration of both vectors: at the best layer, with the study's controls; the report shows both
    for name in ("contrastive", "model_diff"):
        cal = json.loads((tmp_path / "calibration" / name / "calibration.json").read_text())
        assert [t["layer"] for t in cal["tracks"]] == [on_disk["best_layer"]] and cal["criterion"]["controls"] == 4
        assert all(p["evidence"]["random"]["k"] == 4 for t in cal["tracks"] for p in t["curve"])
        assert on_disk["calibration"][name]["reading"] == cal["reading"]
    assert (tmp_path / "report.html").read_text().count("Calibration: calibration/") == 2
    # a rerun reuses every finished stage, also of a run directory moved elsewhere (inputs name its files
    # relative to it)
    moved = tmp_path.parent / f"{tmp_path.name}_moved"
    shutil.copytree(tmp_path, moved)
    metas = sorted(moved.rglob("*.meta.json"))
    before = {m: (m.read_bytes(), m.stat().st_mtime_ns) for m in metas}
    again = run_demo(moved, size="ci")
    assert not [k for k in again.timings if k.startswith("diff.")], again.timings
    assert {m: (m.read_bytes(), m.stat().st_mtime_ns) for m in metas} == before  # no stage ran again


@pytest.mark.parametrize(
    ("ci", "expected"),
    [
        ([-0.145, -0.011], "its interval overlaps the random band"),
        ([-0.30, -0.20], "outside the random band"),
        ([-0.05, 0.04], "inside the random band"),
    ],
)
def test_the_reading_derives_the_cosine_verdict_from_the_interval(ci, expected):
    from steerlab.pipelines.demo import reading

    summary = {
        "margins": {"base": -0.07, "finetuned": 0.03, "gap": 0.1},
        "best_layer": 24,
        "random_baseline": {"band": 0.082},
        "cosine_at_best_layer": sum(ci) / 2,
        "cosine_ci95_at_best_layer": ci,
        "reliability_at_best_layer": {"contrastive": 0.6, "model_diff": 0.99},
        "d_model": 576,
        "best_steering": {},
        "traits": {},
    }
    lines = reading(summary, 1.0)
    assert any(expected in line for line in lines), lines


def test_the_reading_says_what_all_layers_steering_did():
    from steerlab.pipelines.demo import reading

    row = {"coeff": 0.125, "fluency_drop": 0.23, "undone": 1.6, "ci95": [0.9, 2.3], "delta": -0.15}
    row |= {"delta_ci95": [-0.21, -0.08], "verdict": "outside all 8 random directions", "vs_prompting": None}
    row |= {"random": {"mean": 0.1, "lo": -0.3, "hi": 0.4, "p": 0.11, "alternative": "greater"}}
    row |= {"steerable_fraction": 0.9, "anti_steerable_fraction": 0.1}
    summary = {
        "margins": {"base": -0.07, "finetuned": 0.03, "gap": 0.1},
        "best_layer": 24,
        "n_layers": 30,
        "random_baseline": {"band": 0.082},
        "cosine_at_best_layer": 0.0,
        "cosine_ci95_at_best_layer": [-0.05, 0.05],
        "reliability_at_best_layer": {"contrastive": 0.6, "model_diff": 0.99},
        "d_model": 576,
        "best_steering": {"model_diff|finetuned|all": None, "contrastive|finetuned|all": row},
        "traits": {},
    }
    lines = reading(summary, 1.0)
    assert "Subtracting the model-diff vector at all 30 layers stayed fluent at none of its coefficients" in "\n".join(
        lines
    )
    said = next(line for line in lines if line.startswith("Subtracting the contrastive vector at all 30 layers"))
    assert "coefficient 0.125 at each" in said and "160% (95% CI 90% to 230%" in said and row["verdict"] in said
