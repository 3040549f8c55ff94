"""Integration: the demo at its reduced (ci) size on the embedded smollm2, end to end."""

import json

import pytest

from steerlab.pipelines.demo import run_demo
from steerlab.report.html import build_report


@pytest.mark.slow
def test_demo_ci_size_end_to_end(tmp_path):
    summary = run_demo(tmp_path, size="ci")
    build_report(tmp_path)  # the pipeline computes; the report is rendered on top of its artifacts
    for name in ("summary.json", "report.html", "monitor.json", "diff/study.json", "diff/compare.json",
                 "diff/adapter/adapter_config.json", "persona/persona_steering.json"):
        assert (tmp_path / name).is_file(), name
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["model"] == "smollm2" and on_disk["n_layers"] == 30
    assert len(on_disk["cosine_per_layer"]) == 30
    assert on_disk["reading"] and summary["timings"]["diff_study"] > 0
    # fine-tuning on the train split's deceptive answers raises the held-out behaviour margin
    assert on_disk["margins"]["finetuned"] > on_disk["margins"]["base"]
    # a rerun reuses every finished stage
    again = run_demo(tmp_path, size="ci")
    assert "diff.finetune" not in again["timings"] and "diff.study" not in again["timings"]
