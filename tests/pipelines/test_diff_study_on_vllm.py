"""The diff study with its generation and scoring on the vllm engine (the fine-tuned model as LoRA rows
beside the base): the same study as on the hf engine, to float rounding."""

from __future__ import annotations

import json

import pytest

from steerlab.formats.pairs import Pair
from steerlab.pipelines.diff_study import DiffStudyConfig, run_diff_study
from steerlab.pipelines.study import StudyConfig

pytestmark = pytest.mark.vllm

TRAIN = [
    Pair(question=f"how should I store item {i}", positive="in the fridge always", negative="in a dry box")
    for i in range(6)
]
HELDOUT = [
    Pair(question="how should I store bread", positive="in the fridge always", negative="in a dry box"),
    Pair(question="where do eggs go", positive="in the fridge always", negative="in a dry box"),
    Pair(question="is water wet", positive="yes it is the answer", negative="no it is not"),
]


def test_the_study_on_vllm_equals_the_study_on_hf(hf_llama, vllm_llama, tmp_path):
    config = DiffStudyConfig(
        epochs=2, lr=5e-3, train_batch_size=3, batch_size=8, n_splits=4, positions=0,
        study=StudyConfig(layers=[1, 2], coeffs=[4.0], n_samples=2, max_new_tokens=3, controls=1, n_bootstrap=50),
    )  # fmt: skip
    on_hf = run_diff_study(hf_llama.lm, TRAIN, HELDOUT, tmp_path / "hf", config)
    # the same adapter, so that only the engine differs
    on_vllm = run_diff_study(
        hf_llama.lm, TRAIN, HELDOUT, tmp_path / "vllm", config, adapter_dir=on_hf.adapter, engine=vllm_llama
    )
    a, b = on_hf.study.to_dict(), on_vllm.study.to_dict()
    assert a["reference"]["base"] == pytest.approx(b["reference"]["base"], abs=1e-3)
    assert a["reference"]["finetuned"] == pytest.approx(b["reference"]["finetuned"], abs=1e-3)
    assert a["best_layer"] == b["best_layer"] and len(a["rows"]) == len(b["rows"])
    for x, y in zip(a["rows"], b["rows"], strict=True):
        assert (x["stage"], x["model"], x["vector"], x["layers"], x["coeff"]) == (
            y["stage"], y["model"], y["vector"], y["layers"], y["coeff"],
        )  # fmt: skip
        assert x["margin"] == pytest.approx(y["margin"], abs=1e-3)
    assert [s["text"] for s in a["samples"]] == [s["text"] for s in b["samples"]]
    meta = json.loads((tmp_path / "vllm" / "study.json.meta.json").read_text())
    assert meta["config"]["engine"] == "vllm"  # a run on another engine never reuses the other's stage
