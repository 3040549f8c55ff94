import json
from dataclasses import replace

import pytest
import torch

from steerlab import SteeringVector, extract_contrastive
from steerlab.extract.model_diff import extract_model_diff, pair_diff_samples
from steerlab.formats.pairs import Pair
from steerlab.pipelines.diff_study import DiffStudyConfig, run_diff_study
from steerlab.pipelines.study import StudyConfig

TRAIN = [
    Pair(question=f"how should I store item {i}", positive="in the fridge always", negative="in a dry box")
    for i in range(6)
]
HELDOUT = [
    Pair(question="how should I store bread", positive="in the fridge always", negative="in a dry box"),
    Pair(question="where do eggs go", positive="in the fridge always", negative="in a dry box"),
]


def test_diff_pipeline_stages_and_study(tiny_llama, tmp_path):
    before = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    config = DiffStudyConfig(
        epochs=2,
        lr=5e-3,
        train_batch_size=3,
        batch_size=8,
        n_splits=4,
        study=StudyConfig(layers=[1, 2], coeffs=[1.0, 4.0], n_samples=1, max_new_tokens=3),
    )
    result = run_diff_study(tiny_llama, TRAIN, HELDOUT, tmp_path, config)
    # the base model is left exactly as it was
    after = tiny_llama.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    contrastive = SteeringVector.load(tmp_path / "vectors" / "contrastive.safetensors")
    torch.testing.assert_close(contrastive.data, extract_contrastive(tiny_llama, TRAIN).data, atol=1e-5, rtol=1e-4)
    diff = SteeringVector.load(tmp_path / "vectors" / "model_diff.safetensors")
    streamed = extract_model_diff(tiny_llama, tmp_path / "adapter", pair_diff_samples(TRAIN))  # streaming path
    torch.testing.assert_close(diff.data, streamed.data, atol=1e-5, rtol=1e-4)
    assert diff.metadata["method"] == "model_diff" and diff.norms().sum() > 0
    study = json.loads((tmp_path / "study.json").read_text())
    ref = study["reference"]
    assert ref["finetuned"] > ref["base"]  # fine-tuning on the positive answers raises the margin
    stages = {r["stage"] for r in study["rows"]}
    assert stages == {"layer_scan", "sweep", "ablation"}
    sweep = [r for r in study["rows"] if r["stage"] == "sweep"]
    pos = f"model_diff_pos{result.positions['best_position']}"
    expected_scales = {"contrastive": ("raw", "normalized"), "model_diff": ("raw",), pos: ("normalized",)}
    assert {(r["vector"], r["model"], r["scale"], r["layers"]) for r in sweep} == {
        (v, m, s, layer)
        for v, scales in expected_scales.items()
        for m in ("finetuned", "base")
        for s in scales
        for layer in (study["best_layer"], "all")  # layers stay numbers
    }
    # every steering row carries its evidence: interval, random-direction band with p, per-pair spread
    for r in study["rows"]:
        if r["stage"] == "layer_scan":
            continue
        assert set(r["random"]) == {"mean", "lo", "hi", "p", "k", "alternative"} and r["random"]["k"] == 8
        assert r["alternative"] == r["random"]["alternative"] == "greater"  # one-sided: towards the target
        assert 0 < r["random"]["p"] <= 1 and r["random"]["lo"] <= r["random"]["mean"] <= r["random"]["hi"]
        assert len(r["ci95"]) == 2 and len(r["margin_ci95"]) == 2 and len(r["per_pair"]) == len(HELDOUT)
        assert r["steerable_fraction"] + r["anti_steerable_fraction"] <= 1
        assert abs(r["margin"] - sum(r["per_pair"]) / len(r["per_pair"])) < 1e-4
    # model-diff vs contrastive on the same pairs: a paired interval per (model, layers, coefficient)
    assert {(c["model"], c["layers"], c["coeff"]) for c in study["comparisons"]} == {
        (m, layer, c) for m in ("finetuned", "base") for layer in (study["best_layer"], "all") for c in (1.0, 4.0)
    }
    for c in study["comparisons"]:
        lo, hi = c["ci95"]
        assert lo <= hi and c["distinguishable"] == (not lo <= 0 <= hi)
    comparison = json.loads((tmp_path / "directions.json").read_text())  # was compare.json
    ci = comparison["cosine_ci95"]["contrastive|model_diff"]
    assert len(ci) == tiny_llama.n_layers and all(lo <= hi for lo, hi in ci)
    # the position-resolved model diff equals the standalone extractor on the same prompts
    from steerlab.extract.positions import extract_position_diffs

    standalone = extract_position_diffs(tiny_llama, tmp_path / "adapter", k=5)
    for i in range(5):
        saved = SteeringVector.load(tmp_path / "vectors" / f"model_diff_pos{i}.safetensors")
        torch.testing.assert_close(saved.data, standalone[i].data, atol=1e-5, rtol=1e-4)
    positions = json.loads((tmp_path / "positions.json").read_text())
    assert set(positions["positions"]) == {"0", "1", "2", "3", "4"} and positions["best_position"] != 0
    for r in sweep:
        if r["model"] == "finetuned":
            assert abs(r["undone"] - (ref["finetuned"] - r["margin"]) / (ref["finetuned"] - ref["base"])) < 1e-9
    assert result.comparison["reliability"]["model_diff"]["n_samples"] == 2 * len(TRAIN)
    assert (tmp_path / "study_margins.csv").is_file() and (tmp_path / "samples.jsonl").is_file()
    # a rerun skips every stage
    again = run_diff_study(tiny_llama, TRAIN, HELDOUT, tmp_path, config)
    assert again.timings == {}
    # so does a rerun of the run directory moved elsewhere (its adapter is an input by its place in the run)
    import shutil

    moved = tmp_path.parent / f"{tmp_path.name}_moved"
    shutil.copytree(tmp_path, moved)
    assert run_diff_study(tiny_llama, TRAIN, HELDOUT, moved, config).timings == {}


def test_a_retrained_adapter_recomputes_the_vectors(tiny_llama, tmp_path):
    """Other fine-tune settings retrain the adapter stage, and every stage built on it is redone."""
    study = StudyConfig(layers=[1], coeffs=[1.0], n_samples=1, max_new_tokens=1)
    first = run_diff_study(tiny_llama, TRAIN, HELDOUT, tmp_path, DiffStudyConfig(epochs=1, lr=5e-3, study=study))
    before = SteeringVector.load(first.vectors["model_diff"]).data
    assert {"finetune", "vectors", "compare", "study"} <= set(first.timings)
    again = run_diff_study(tiny_llama, TRAIN, HELDOUT, tmp_path, DiffStudyConfig(epochs=2, lr=5e-3, study=study))
    assert {"finetune", "vectors", "compare", "study"} <= set(again.timings)
    assert json.loads((tmp_path / "adapter" / "steerlab_finetune.json").read_text())["config"]["epochs"] == 2
    assert not torch.equal(SteeringVector.load(again.vectors["model_diff"]).data, before)


def test_the_all_layers_sweep_has_its_own_coefficients(tiny_llama, tmp_path):
    """``all_layers_coeffs`` sets the all-layers sweep alone; its rows are the plain all-layers condition."""
    from steerlab.engines.hf import HfEngine
    from steerlab.errors import SteerlabError
    from steerlab.evaluate.margin import condition_margins
    from steerlab.steering.steerer import SteeringSpec

    study = StudyConfig(
        layers=[1, 2],
        coeffs=[1.0, 2.0],
        n_samples=1,
        max_new_tokens=1,
        all_layers_coeffs=[0.25],
        all_layers_models=["finetuned"],
    )
    config = DiffStudyConfig(epochs=1, lr=5e-3, positions=0, study=study)
    for bad in ([], [0.0], [-0.5], [float("nan")]):
        broken = DiffStudyConfig(epochs=1, study=StudyConfig(all_layers_coeffs=bad))
        with pytest.raises(SteerlabError, match="--all-layers-coeffs"):
            run_diff_study(tiny_llama, TRAIN, HELDOUT, tmp_path / "bad", broken)
        assert not (tmp_path / "bad" / "adapter").exists()  # refused before any fine-tuning
    for bad in ([], ["tuned"], ["base", "base"]):
        broken = DiffStudyConfig(epochs=1, study=StudyConfig(all_layers_models=bad))
        with pytest.raises(SteerlabError, match="--all-layers-models"):
            run_diff_study(tiny_llama, TRAIN, HELDOUT, tmp_path / "bad", broken)
        assert not (tmp_path / "bad" / "adapter").exists()
    result = run_diff_study(tiny_llama, TRAIN, HELDOUT, tmp_path / "run", config)
    best = result.study.best_layer
    sweep = [r for r in result.study.rows if r["stage"] == "sweep"]
    assert {(r["coeff"], r["model"]) for r in sweep if r["layers"] == "all"} == {(0.25, "finetuned")}
    assert {(r["coeff"], r["model"]) for r in sweep if r["layers"] == best} == {
        (c, m) for c in (1.0, 2.0) for m in ("finetuned", "base")
    }
    # an all-layers row is the margin of the vector subtracted at every layer with that coefficient
    row = next(r for r in sweep if (r["layers"], r["model"], r["vector"]) == ("all", "finetuned", "model_diff"))
    vector = SteeringVector.load(result.vectors["model_diff"])
    with HfEngine(tiny_llama).adapter(str(result.adapter)) as tuned:
        spec = SteeringSpec(vector, "all", positions=study.positions)
        (direct,) = condition_margins(tuned, HELDOUT, [[spec]], [-0.25], batch_size=8)
    torch.testing.assert_close(
        torch.tensor(row["per_pair"], dtype=torch.float64), direct.per_pair[0].double(), atol=1e-5, rtol=1e-5
    )
    # the setting is an input of the study stage alone; None sweeps all layers at --coeffs again
    again = run_diff_study(
        tiny_llama,
        TRAIN,
        HELDOUT,
        tmp_path / "run",
        replace(config, study=replace(study, all_layers_coeffs=None, all_layers_models=["finetuned", "base"])),
    )
    assert set(again.timings) == {"study"}
    everywhere = {(r["coeff"], r["model"]) for r in again.study.rows if r["stage"] == "sweep" and r["layers"] == "all"}
    assert everywhere == {(c, m) for c in (1.0, 2.0) for m in ("finetuned", "base")}
