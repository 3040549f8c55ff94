"""SteeringVector: files, algebra, cosine, validation."""

import json
import math
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from steerlab import SteeringVector, cosine, random_cosine_baseline
from steerlab.errors import SteerlabError

META = {
    "model": "tiny-llama",
    "method": "contrastive",
    "reduction": "response_avg",
    "n_samples": 12,
    "config": {"pairs": "p.jsonl", "split": None},
}


def make(seed=0, n_layers=4, d_model=8, meta=None):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(torch.randn(n_layers, d_model, generator=g), dict(meta or META))


def test_save_load_bit_for_bit(tmp_path):
    v = make()
    v.data[1, 3] = 1e-38  # subnormal-ish and extreme values survive
    v.data[2, 0] = -3.4e38
    path = v.save(tmp_path / "v.safetensors")
    assert path == tmp_path / "v.safetensors"
    assert os.listdir(tmp_path) == ["v.safetensors"]  # no temp file left behind
    w = SteeringVector.load(path)
    assert torch.equal(w.data, v.data) and w.data.dtype == torch.float32
    assert w.metadata == v.metadata  # model, method, config, version, creation time ...
    for key in ("steerlab_version", "created", "model", "method", "reduction", "n_samples"):
        assert key in w.metadata
    with safe_open(str(path), "pt") as f:
        header = f.metadata()
    stored = json.loads(header["steerlab"])
    assert header["format"] == "steerlab.steering_vector/1"
    assert stored["norms"] == pytest.approx(v.norms().tolist(), rel=1e-5)


def test_metadata_defaults():
    v = SteeringVector(torch.ones(2, 3))
    assert v.metadata["steerlab_version"]
    assert v.metadata["created"].startswith("20")
    assert (v.n_layers, v.d_model) == (2, 3)
    one = SteeringVector(torch.ones(5))
    assert one.data.shape == (1, 5)


def test_algebra():
    a, b = make(0), make(1)
    assert torch.equal((a + b).data, a.data + b.data)
    assert torch.equal((a - b).data, a.data - b.data)
    assert torch.equal((a * 2.5).data, a.data * 2.5)
    assert torch.equal((2.5 * a).data, a.data * 2.5)
    assert torch.equal((-a).data, -a.data)
    assert torch.equal((a * 3).data, a.data * 3)
    d = a - b
    assert d.metadata["derived"] == "sub" and d.metadata["model"] == "tiny-llama"
    assert "norms" not in d.metadata
    with pytest.raises(SteerlabError, match="shape mismatch"):
        a + make(0, d_model=9)


def test_normalized_per_layer_with_zero_layers():
    v = make(0, n_layers=5)
    v.data[2] = 0.0
    n = v.normalized()
    norms = n.norms()
    assert torch.allclose(norms[[0, 1, 3, 4]], torch.ones(4), atol=1e-6)
    assert torch.equal(n.data[2], torch.zeros(v.d_model))
    assert torch.isfinite(n.data).all()
    c = cosine(n, v)
    assert torch.allclose(c[[0, 1, 3, 4]], torch.ones(4), atol=1e-6) and c[2] == 0
    # scaling a layer does not change its normalized direction
    w = SteeringVector(v.data * torch.tensor([1.0, 10.0, 1.0, 1e-3, 7.0])[:, None])
    assert torch.allclose(w.normalized().data, n.data, atol=1e-6)


def test_blend():
    a, b, c = make(0), make(1), make(2)
    mix = SteeringVector.blend([a, b, c], [0.5, -1.0, 2.0])
    torch.testing.assert_close(mix.data, 0.5 * a.data - b.data + 2.0 * c.data, rtol=0, atol=1e-6)
    assert mix.metadata["method"] == "blend"
    assert mix.metadata["weights"] == [0.5, -1.0, 2.0]
    assert torch.equal(SteeringVector.blend([a], [1.0]).data, a.data)
    with pytest.raises(SteerlabError, match="as many weights"):
        SteeringVector.blend([a, b], [1.0])
    with pytest.raises(SteerlabError, match="as many weights"):
        SteeringVector.blend([], [])
    with pytest.raises(SteerlabError, match="shape mismatch"):
        SteeringVector.blend([a, make(0, n_layers=3)], [1.0, 1.0])


def test_cosine_per_layer():
    x = torch.tensor([[1.0, 0.0], [1.0, 2.0], [0.0, 3.0], [0.0, 0.0], [2.0, 2.0]])
    y = torch.tensor([[5.0, 0.0], [-2.0, -4.0], [4.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    c = cosine(SteeringVector(x), SteeringVector(y))
    assert c.shape == (5,)
    assert c.tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0, 0.0], abs=1e-7)
    assert torch.isfinite(c).all()
    assert cosine(x, y).tolist() == c.tolist()  # plain tensors work too
    z = SteeringVector(torch.tensor([[1.0, 1.0], [3.0, 4.0]]))
    w = SteeringVector(torch.tensor([[1.0, 0.0], [4.0, 3.0]]))
    assert cosine(z, w).tolist() == pytest.approx([1 / math.sqrt(2), 24 / 25], abs=1e-6)
    with pytest.raises(SteerlabError, match="shapes"):
        cosine(x, y[:, :1])


def test_random_cosine_baseline():
    d = 256
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4000, d, generator=g), torch.randn(4000, d, generator=g)
    empirical = cosine(a, b).abs().mean().item()
    assert empirical == pytest.approx(random_cosine_baseline(d), rel=0.05)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_vector_rejected(bad):
    data = torch.zeros(4, 8)
    data[2, 5] = bad
    with pytest.raises(SteerlabError, match=r"NaN/inf values at layers \[2\]"):
        SteeringVector(data)


@pytest.mark.parametrize("shape", [(0, 8), (4, 0), (2, 3, 4)])
def test_bad_shape_rejected(shape):
    with pytest.raises(SteerlabError, match="n_layers, d_model"):
        SteeringVector(torch.zeros(shape))


def test_check_compatible(tiny_llama):
    v = make(0, n_layers=tiny_llama.n_layers, d_model=tiny_llama.d_model)
    v.check_compatible(tiny_llama.n_layers, tiny_llama.d_model)  # fits
    w = make(0, n_layers=tiny_llama.n_layers, d_model=32)
    with pytest.raises(SteerlabError, match=r"d_model 32 does not match .*d_model 64") as exc:
        w.check_compatible(tiny_llama.n_layers, tiny_llama.d_model)
    assert "tiny-llama" in str(exc.value)  # names the model the vector was made for
    with pytest.raises(SteerlabError, match="vector has 3 layers but the model has 4"):
        make(0, n_layers=3, d_model=64).check_compatible(4, 64)


def test_load_missing_file(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(SteerlabError, match="not found") as exc:
        SteeringVector.load(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("name", ["bad.safetensors", "bad.pt", "bad.gguf"])
@pytest.mark.parametrize("content", [b"", b"garbage that is not a tensor file" * 4])
def test_load_corrupt_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SteerlabError) as exc:
        SteeringVector.load(path)
    assert str(path) in str(exc.value)


def test_load_truncated_safetensors(tmp_path):
    path = make().save(tmp_path / "v.safetensors")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(SteerlabError, match=r"not a readable \.safetensors") as exc:
        SteeringVector.load(path)
    assert str(path) in str(exc.value)


def test_load_safetensors_without_vector_or_with_nan(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"weights": torch.ones(2, 2)}, str(other))
    with pytest.raises(SteerlabError, match="no tensor named 'vector'") as exc:
        SteeringVector.load(other)
    assert str(other) in str(exc.value)
    nan = tmp_path / "nan.safetensors"
    save_file({"vector": torch.full((2, 2), float("nan"))}, str(nan))
    with pytest.raises(SteerlabError, match="NaN") as exc:
        SteeringVector.load(nan)
    assert str(nan) in str(exc.value)
    badmeta = tmp_path / "badmeta.safetensors"
    save_file({"vector": torch.ones(2, 2)}, str(badmeta), metadata={"steerlab": "{not json"})
    with pytest.raises(SteerlabError, match="'steerlab' is not valid JSON"):
        SteeringVector.load(badmeta)


def test_persona_vectors_pt_import_drops_row_0(tmp_path):
    data = torch.randn(5, 8)  # persona-vectors: [n_layers + 1, d], row 0 = embeddings
    path = tmp_path / "evil_response_avg_diff.pt"
    torch.save(data, path)
    with pytest.warns(UserWarning, match="row 0"):
        v = SteeringVector.load(path)
    assert v.data.shape == (4, 8)
    assert torch.equal(v.data, data[1:])
    assert v.metadata["method"] == "imported" and v.metadata["source"] == str(path)
    bad = tmp_path / "one_d.pt"
    torch.save(torch.randn(8), bad)
    with pytest.raises(SteerlabError, match=r"expected a \[n_layers \+ 1, d_model\] tensor"):
        SteeringVector.load(bad)
