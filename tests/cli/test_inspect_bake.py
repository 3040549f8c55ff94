"""`steerlab inspect` and `steerlab bake` on the tiny model directory: results on stdout, --out files
equal to the Python API's, and one-line errors (exit 2) that name what is wrong, with nothing written."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import assert_user_error, flat, invoke
from transformers import AutoModelForCausalLM

from steerlab import SteeringVector, load_model, readout_vector
from steerlab.steering.bake import BAKE_FILE


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    path = tmp_path_factory.mktemp("vectors")
    gen = torch.Generator().manual_seed(0)
    v = SteeringVector(torch.randn(4, 64, generator=gen), {"method": "test"}).save(path / "v.safetensors")
    w = SteeringVector(torch.randn(4, 64, generator=gen)).save(path / "w.safetensors")
    narrow = SteeringVector(torch.randn(4, 32, generator=gen)).save(path / "narrow.safetensors")
    zero = SteeringVector(torch.zeros(4, 64)).save(path / "zero.safetensors")
    return {"v": v, "w": w, "narrow": narrow, "zero": zero}


def test_inspect_prints_a_table_and_writes_the_readout(tiny_dir, vectors, tmp_path, one_thread):
    out = tmp_path / "readout.json"
    result = invoke(
        "inspect", vectors["v"], "-m", tiny_dir, "-l", "1-2", "--top-k", "3", "--compare", vectors["w"], "-o", out
    )
    assert result.exit_code == 0, result.output
    assert "promoted" in result.stdout and "cos w" in result.stdout  # the table is the result: stdout
    assert flat(f"wrote {out}") in flat(result.output)
    doc = json.loads(out.read_text())
    expected = readout_vector(
        load_model(str(tiny_dir)),
        SteeringVector.load(vectors["v"]),
        "1-2",
        top_k=3,
        compare={"w": SteeringVector.load(vectors["w"])},
    )
    assert [r["layer"] for r in doc["layers"]] == [1, 2]
    for got, want in zip(doc["layers"], expected["layers"], strict=True):
        assert [t["id"] for t in got["promoted"]] == [t["id"] for t in want["promoted"]]
        assert got["cosine"]["w"] == pytest.approx(want["cosine"]["w"], abs=1e-6)
        assert got["residual_norm"] == pytest.approx(want["residual_norm"], rel=1e-5)
        assert json.dumps(got["promoted"][0]["token"], ensure_ascii=False) in result.stdout
    assert doc["vector"]["file"] == str(vectors["v"]) and len(doc["vector"]["sha256"]) == 64


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("narrow", ["narrow.safetensors", "d_model 32 does not match"]),
        ("layer", ["--layer 9 is out of range"]),
        ("zero", ["zero.safetensors", "zero at every layer"]),
        ("suffix", ["--out", ".json"]),
        ("compare", ["narrow", "d_model 32"]),
    ],
)
def test_inspect_bad_input(case, needles, tiny_dir, vectors, tmp_path):
    vector, extra, out = vectors["v"], [], tmp_path / "r.json"
    if case in ("narrow", "zero"):
        vector = vectors[case]
    elif case == "layer":
        extra = ["-l", "9"]
    elif case == "suffix":
        out = tmp_path / "r.txt"
    elif case == "compare":
        extra = ["--compare", vectors["narrow"]]
    result = invoke("inspect", vector, "-m", tiny_dir, "-o", out, *extra)
    assert_user_error(result, *needles)
    assert not out.exists()


def test_bake_writes_a_loadable_model_directory(tiny_dir, vectors, tmp_path, one_thread):
    out = tmp_path / "baked"
    result = invoke("bake", "-m", tiny_dir, "-v", vectors["v"], "-l", "2", "-o", out)
    assert result.exit_code == 0, result.output
    assert flat(str(out)) in flat(result.stdout) and "9 weight tensors" in result.stdout
    meta = json.loads((out / BAKE_FILE).read_text())
    assert meta["vector"]["layer"] == 2 and meta["vector"]["file"] == str(vectors["v"])
    baked = AutoModelForCausalLM.from_pretrained(out)
    unit = SteeringVector.load(vectors["v"]).data[2]
    unit = unit / unit.norm()
    embed = baked.get_input_embeddings().weight.detach()
    assert float((embed @ unit).abs().max()) < 1e-5
    original = load_model(str(tiny_dir)).model
    assert torch.equal(baked.lm_head.weight, original.lm_head.weight)


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("narrow", ["narrow.safetensors", "d_model", "32", "64"]),
        ("no_layer", ["--layer", "has 4 rows"]),
        ("layer", ["--layer 4 is out of range"]),
        ("zero", ["zero.safetensors is zero at layer 1"]),
        ("grammar", ["--layer", "expected 'all'"]),
    ],
)
def test_bake_bad_input(case, needles, tiny_dir, vectors, tmp_path):
    vector, layer = vectors["v"], ["-l", "1"]
    if case in ("narrow", "zero"):
        vector = vectors[case]
    elif case == "no_layer":
        layer = []
    elif case == "layer":
        layer = ["-l", "4"]
    elif case == "grammar":
        layer = ["-l", "one"]
    out = tmp_path / "baked"
    result = invoke("bake", "-m", tiny_dir, "-v", vector, *layer, "-o", out)
    assert_user_error(result, *needles)
    assert not out.exists() and list(tmp_path.iterdir()) == []
