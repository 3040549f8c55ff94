"""GGUF control vectors (llama.cpp format): export, import, interop, bad files."""

import os
import warnings

import gguf
import numpy as np
import pytest
import torch

from steerlab import SteeringVector, export_gguf, import_gguf
from steerlab.errors import SteerlabError

N_LAYERS, D_MODEL = 6, 16


def make(layer0_zero=False):
    g = torch.Generator().manual_seed(0)
    data = torch.randn(N_LAYERS, D_MODEL, generator=g)
    if layer0_zero:
        data[0] = 0
    return SteeringVector(data, {"model": "tiny-llama", "model_type": "llama",
                                 "method": "contrastive", "n_samples": 3})


def write_gguf(path, tensors, arch="controlvector", kv=None):
    """Write a GGUF by hand, the way other tools (repeng, llama.cpp) do."""
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in (kv or {}).items():
        if isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_uint32(key, value)
    for name, values in tensors.items():
        writer.add_tensor(name, np.asarray(values))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_round_trip_exact_with_layer0(tmp_path):
    v = make()
    path = tmp_path / "v.gguf"
    with pytest.warns(UserWarning, match="layer 0"):
        assert export_gguf(v, path) == path
    w = import_gguf(path)
    assert torch.equal(w.data, v.data)  # layer 0 too, via steerlab.layer0
    for key, value in v.metadata.items():
        assert w.metadata[key] == value
    assert w.metadata["model_hint"] == "llama"
    # SteeringVector.load dispatches on the suffix
    assert torch.equal(SteeringVector.load(path).data, v.data)
    assert os.listdir(tmp_path) == ["v.gguf"]


def test_no_warning_when_layer0_is_zero(tmp_path):
    v = make(layer0_zero=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_gguf(v, tmp_path / "v.gguf")
    assert torch.equal(import_gguf(tmp_path / "v.gguf").data, v.data)


def test_file_layout_read_by_gguf_reader(tmp_path):
    v = make(layer0_zero=True)
    path = export_gguf(v, tmp_path / "v.gguf", model_hint="smollm2")
    reader = gguf.GGUFReader(str(path))
    arch = reader.get_field("general.architecture")
    assert arch.contents() == "controlvector"
    hint = reader.get_field("controlvector.model_hint")
    assert hint.types == [gguf.GGUFValueType.STRING] and hint.contents() == "smollm2"
    count = reader.get_field("controlvector.layer_count")
    assert count.types == [gguf.GGUFValueType.UINT32] and count.contents() == N_LAYERS - 1
    names = [t.name for t in reader.tensors]
    assert names == [f"direction.{i}" for i in range(1, N_LAYERS)]  # nothing else
    for t in reader.tensors:
        layer = int(t.name.split(".")[1])
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert t.n_elements == D_MODEL and list(t.shape) == [D_MODEL]
        assert np.array_equal(np.asarray(t.data), v.data[layer].numpy())


def test_default_model_hint(tmp_path):
    v = SteeringVector(torch.tensor([[0.0] * 4, [1.0] * 4, [2.0] * 4]), {"model": "some/model"})
    path = export_gguf(v, tmp_path / "v.gguf")
    assert gguf.GGUFReader(str(path)).get_field("controlvector.model_hint").contents() == "some/model"


def test_import_repeng_style_file(tmp_path):
    # repeng writes model_hint, layer_count = number of directions, direction.N for some layers
    dirs = {n: np.random.default_rng(n).standard_normal(D_MODEL).astype(np.float32)
            for n in (2, 3, 5)}
    path = write_gguf(
        tmp_path / "repeng.gguf",
        {f"direction.{n}": d for n, d in dirs.items()},
        kv={"controlvector.model_hint": "mistral", "controlvector.layer_count": len(dirs)},
    )
    v = import_gguf(path)
    assert v.data.shape == (6, D_MODEL)  # up to the highest direction
    for n in range(6):
        expected = torch.from_numpy(dirs[n]) if n in dirs else torch.zeros(D_MODEL)
        assert torch.equal(v.data[n], expected), n
    assert v.metadata["method"] == "imported"
    assert v.metadata["model_hint"] == "mistral"


def test_import_llama_cpp_style_file_layer_count(tmp_path):
    # llama.cpp's cvector-generator: layer_count = n_layers - 1; trailing layers may be absent
    path = write_gguf(
        tmp_path / "cv.gguf",
        {"direction.1": np.ones(4, np.float32), "direction.2": np.full(4, 2, np.float32)},
        kv={"controlvector.model_hint": "llama", "controlvector.layer_count": 5},
    )
    v = import_gguf(path)
    assert v.data.shape == (6, 4)
    assert v.data[1].tolist() == [1.0] * 4 and v.data[2].tolist() == [2.0] * 4
    assert v.data[[0, 3, 4, 5]].abs().sum() == 0


def test_import_f16_directions(tmp_path):
    values = np.linspace(-1, 1, 8, dtype=np.float16)
    path = write_gguf(tmp_path / "f16.gguf", {"direction.1": values})
    v = import_gguf(path)
    assert torch.equal(v.data[1], torch.from_numpy(values.astype(np.float32)))


@pytest.mark.parametrize(
    ("tensors", "arch", "match"),
    [
        ({"direction.1": np.ones(4, np.float32)}, "llama", "general.architecture is 'llama'"),
        ({"direction.0": np.ones(4, np.float32)}, "controlvector", "unexpected tensor 'direction.0'"),
        ({"token_embd": np.ones(4, np.float32)}, "controlvector", "unexpected tensor 'token_embd'"),
        ({}, "controlvector", "no direction.N tensors"),
        ({"direction.1": np.ones(4, np.float32), "direction.2": np.ones(6, np.float32)},
         "controlvector", "'direction.2' has length 6"),
    ],
)
def test_bad_gguf_files(tmp_path, tensors, arch, match):
    path = write_gguf(tmp_path / "bad.gguf", tensors, arch=arch)
    with pytest.raises(SteerlabError, match=match) as exc:
        import_gguf(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("content", [b"", b"GGUF", b"not a gguf file at all" * 10])
def test_unreadable_gguf(tmp_path, content):
    path = tmp_path / "junk.gguf"
    path.write_bytes(content)
    with pytest.raises(SteerlabError, match="not a readable GGUF file") as exc:
        import_gguf(path)
    assert str(path) in str(exc.value)
    with pytest.raises(SteerlabError, match="not a readable GGUF"):
        import_gguf(tmp_path / "missing.gguf")


def test_failed_export_leaves_no_file(tmp_path, monkeypatch):
    def boom(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(make(layer0_zero=True), tmp_path / "v.gguf")
    assert os.listdir(tmp_path) == []
