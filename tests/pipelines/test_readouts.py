"""Readouts of a run directory's vectors (steerlab.pipelines.readouts) and their report section: every
vector in a ``vectors/`` folder is read (other tensors passed over), compared with the others, written
to ``readouts/NAME.json``, and ``steerlab report`` renders each beside the rest of the run."""

from __future__ import annotations

import html
import json

import pytest
import torch
from safetensors.torch import save_file

from steerlab import ReadoutConfig, SteeringVector, generic_prompts, mean_residual_norms, write_readouts
from steerlab.report.html import build_report
from steerlab.vectors.vector import cosine


@pytest.fixture
def run(tmp_path, tiny_llama):
    gen = torch.Generator().manual_seed(0)
    a = SteeringVector(torch.randn(tiny_llama.n_layers, tiny_llama.d_model, generator=gen), {"method": "contrastive"})
    b = SteeringVector(torch.randn(tiny_llama.n_layers, tiny_llama.d_model, generator=gen), {"method": "model_diff"})
    a.save(tmp_path / "vectors" / "a.safetensors")
    b.save(tmp_path / "diff" / "vectors" / "b.safetensors")
    save_file({"samples": torch.zeros(3, 4)}, str(tmp_path / "diff" / "vectors" / "per_sample.safetensors"))
    (tmp_path / "adapter").mkdir()
    save_file({"w": torch.zeros(2)}, str(tmp_path / "adapter" / "adapter_model.safetensors"))
    return tmp_path, a, b


def test_write_readouts_reads_every_vector_and_the_report_shows_them(run, tiny_llama, one_thread):
    path, a, b = run
    written = write_readouts(tiny_llama, path, ReadoutConfig(layers="1", top_k=3, n_prompts=4))
    assert [p.relative_to(path).as_posix() for p in written] == ["readouts/a.json", "readouts/diff-b.json"]
    doc = json.loads(written[0].read_text())
    assert doc["name"] == "a" and doc["compare"] == ["diff-b"] and doc["reference"]["n_prompts"] == 4
    (row,) = doc["layers"]
    assert row["cosine"]["diff-b"] == pytest.approx(float(cosine(a.data[1], b.data[1])), abs=1e-6)
    norms = mean_residual_norms(tiny_llama, generic_prompts()[:4])
    assert row["residual_norm"] == pytest.approx(float(norms[1]), rel=1e-6)

    (path / "readouts" / "broken.json").write_text('{"name": "x"}')
    report, missing = build_report(path)
    page = report.read_text()
    assert "Vector readout: a" in page and "Vector readout: diff-b" in page
    token = row["promoted"][0]["token"]
    assert html.escape(json.dumps(token, ensure_ascii=False)) in page
    assert [m for m in missing if "readout" in m] == [
        "vector readout (readouts/broken.json) (unreadable: KeyError 'model')"
    ]


def test_a_run_without_vectors_gets_no_readouts(tmp_path, tiny_llama):
    assert write_readouts(tiny_llama, tmp_path) == []
    assert not (tmp_path / "readouts").exists()
