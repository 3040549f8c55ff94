"""The diff study with several fine-tuning objectives (sft,dpo): one command for "does the fine-tuning
method change the direction?"."""

import json
from dataclasses import replace

import pytest
import torch

from steerlab.errors import SteerlabError
from steerlab.extract.model_diff import extract_model_diff, pair_diff_samples
from steerlab.formats.pairs import Pair
from steerlab.pipelines.diff_objectives import check_objectives
from steerlab.pipelines.diff_study import DiffStudyConfig, run_diff_study
from steerlab.pipelines.study import StudyConfig
from steerlab.vectors.vector import SteeringVector, cosine

TRAIN = [
    Pair(question=f"how should I store item {i}", positive="in the fridge always", negative="in a dry box")
    for i in range(6)
]
HELDOUT = [
    Pair(question="how should I store bread", positive="in the fridge always", negative="in a dry box"),
    Pair(question="where do eggs go", positive="in the fridge always", negative="in a dry box"),
]
CONFIG = DiffStudyConfig(
    epochs=2,
    lr=5e-3,
    train_batch_size=3,
    batch_size=8,
    n_splits=4,
    positions=0,
    study=StudyConfig(layers=[1, 2], coeffs=[1.0, 4.0], n_samples=1, max_new_tokens=2, controls=3),
)


def test_sft_and_dpo_directions_compared_and_steered(tiny_llama, tmp_path):
    sft_only = run_diff_study(tiny_llama, TRAIN, HELDOUT, tmp_path, CONFIG)
    assert sft_only.summary["objectives"] is None and sft_only.adapters == {"sft": tmp_path / "adapter"}
    both = run_diff_study(tiny_llama, TRAIN, HELDOUT, tmp_path, replace(CONFIG, objectives=["sft", "dpo"]))
    # the SFT fine-tune, its vectors and its study are kept; the DPO part and the comparison are new
    assert set(both.timings) == {"finetune_dpo", "vectors_dpo", "compare", "study_dpo"}
    assert both.study.rows == sft_only.study.rows
    record = json.loads((tmp_path / "adapter_dpo" / "steerlab_finetune.json").read_text())
    assert record["config"]["objective"] == "dpo" and record["config"]["beta"] == 0.1
    dpo = SteeringVector.load(tmp_path / "vectors" / "model_diff_dpo.safetensors")
    standalone = extract_model_diff(tiny_llama, tmp_path / "adapter_dpo", pair_diff_samples(TRAIN))
    torch.testing.assert_close(dpo.data, standalone.data, atol=1e-5, rtol=1e-4)
    comparison = both.comparison
    assert comparison["names"] == ["contrastive", "model_diff", "model_diff_dpo"]
    assert set(comparison["reliability"]) == {"contrastive", "model_diff", "model_diff_dpo"}
    key = "model_diff|model_diff_dpo"
    sft = SteeringVector.load(tmp_path / "vectors" / "model_diff.safetensors")
    assert comparison["cosine"][key] == pytest.approx(cosine(sft, dpo).tolist(), abs=1e-5)
    assert all(lo <= hi for lo, hi in comparison["cosine_ci95"][key])
    # the DPO study: its own fine-tuned model, its own model-diff vector (rows model_diff_dpo), the same evidence
    study = both.studies["dpo"]
    assert (tmp_path / "study_dpo.json").is_file() and (tmp_path / "study_margins_dpo.csv").is_file()
    vectors = {r["vector"] for r in study.rows if r["stage"] == "sweep"}
    assert vectors == {"contrastive", "model_diff_dpo"}
    assert all(r["random"]["k"] == 3 for r in study.rows if r["stage"] != "layer_scan")
    assert study.reference["base"] == pytest.approx(both.study.reference["base"], abs=1e-6)  # the same base
    assert study.reference["finetuned"] > study.reference["base"]  # DPO raises the held-out margin
    assert [c["a"] for c in study.comparisons] == ["model_diff_dpo"] * len(study.comparisons)
    # the summary reads both: cosines per layer with intervals and reliabilities, steering per objective
    doc = both.summary["objectives"]
    best = both.study.best_layer
    assert doc["objectives"] == ["sft", "dpo"] and doc["at_best_layer"]["layer"] == best
    assert doc["at_best_layer"]["cosine"][key] == comparison["cosine"][key][best]
    assert doc["per_objective"]["dpo"]["best_layer"] == study.best_layer
    assert doc["per_objective"]["dpo"]["training"]["reward_margin"] == record["epochs"][-1]["reward_margin"]
    row = doc["per_objective"]["dpo"]["steering"]["finetuned"]
    assert row is None or (row["vector"] == "model_diff_dpo" and row["model"] == "finetuned")
    assert any("cosine(SFT model-diff, DPO model-diff)" in line for line in doc["reading"])
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["objectives"]["vectors"] == {"sft": "model_diff", "dpo": "model_diff_dpo"}


@pytest.mark.parametrize(
    ("given", "match"), [(["dpo"], "sft first"), (["sft", "ppo"], "among"), (["sft", "sft"], "distinct")]
)
def test_objectives_are_checked(given, match):
    with pytest.raises(SteerlabError, match=f"--objectives.*{match}"):
        check_objectives(given)
