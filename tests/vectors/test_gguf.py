"""GGUF control vectors (llama.cpp format): export, import, interop, bad files."""

import contextlib
import json
import os
import warnings

import gguf
import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke
from safetensors.torch import save_file

from steerlab import SteeringVector, export_gguf, import_gguf
from steerlab.activations.capture import ChatSample
from steerlab.errors import SteerlabError
from steerlab.evaluate.monitor import project
from steerlab.steering.steerer import SteeringSpec, steer
from steerlab.vectors.vector import format_layers

N_LAYERS, D_MODEL = 6, 16


def make(layer0_zero=False):
    g = torch.Generator().manual_seed(0)
    data = torch.randn(N_LAYERS, D_MODEL, generator=g)
    if layer0_zero:
        data[0] = 0
    return SteeringVector(data, {"model": "tiny-llama", "model_type": "llama", "method": "contrastive", "n_samples": 3})


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
    dirs = {n: np.random.default_rng(n).standard_normal(D_MODEL).astype(np.float32) for n in (2, 3, 5)}
    path = write_gguf(
        tmp_path / "repeng.gguf",
        {f"direction.{n}": d for n, d in dirs.items()},
        kv={"controlvector.model_hint": "mistral", "controlvector.layer_count": len(dirs)},
    )
    v = import_gguf(path)
    assert v.data.shape == (6, D_MODEL)  # up to the highest direction
    assert v.is_partial and v.layers_present == [2, 3, 5]
    assert v.metadata["layers_present"] == [2, 3, 5] and v.metadata["source"] == str(path)
    for n in range(6):
        expected = torch.from_numpy(dirs[n]) if n in dirs else torch.zeros(D_MODEL)
        assert torch.equal(v.data[n], expected), n
    assert v.metadata["method"] == "imported"
    assert v.metadata["model_hint"] == "mistral"


def test_import_llama_cpp_style_file_layer_count(tmp_path):
    # llama.cpp's cvector-generator: layer_count = n_layers - 1; trailing layers may be absent.
    # As llama.cpp reads it, the rows go up to the highest direction; layer_count is only recorded.
    path = write_gguf(
        tmp_path / "cv.gguf",
        {"direction.1": np.ones(4, np.float32), "direction.2": np.full(4, 2, np.float32)},
        kv={"controlvector.model_hint": "llama", "controlvector.layer_count": 5},
    )
    v = import_gguf(path)
    assert v.data.shape == (3, 4)
    assert v.data[1].tolist() == [1.0] * 4 and v.data[2].tolist() == [2.0] * 4
    assert v.data[0].abs().sum() == 0
    assert v.layers_present == [1, 2] and v.metadata["gguf_layer_count"] == 5
    v.check_compatible(6, 4)  # fits the 6-layer model it was made for ...
    v.check_compatible(30, 4)  # ... and any deeper model of the same width


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
        (
            {"direction.1": np.ones(4, np.float32), "direction.2": np.ones(6, np.float32)},
            "controlvector",
            "'direction.2' has length 6",
        ),
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


# --- control vectors that hold only some layers (repeng, llama.cpp's cvector-generator) ---------


def repeng_file(path, layers, d_model=64, layer_count=None, hint="llama"):
    """A control vector as repeng writes it: model_hint, layer_count = number of directions (unless
    given), direction.N for the listed layers only. Returns (path, {layer: direction})."""
    dirs = {n: np.random.default_rng(100 + n).standard_normal(d_model).astype(np.float32) for n in layers}
    write_gguf(
        path,
        {f"direction.{n}": d for n, d in dirs.items()},
        kv={
            "controlvector.model_hint": hint,
            "controlvector.layer_count": len(dirs) if layer_count is None else layer_count,
        },
    )
    return path, dirs


def block_output(lm, layer, spec=None, text="how should I store bread"):
    """Output of block ``layer`` ``[1, T, d]`` for one prompt, under ``spec`` when given."""
    ids = lm.tokenizer([text], return_tensors="pt", add_special_tokens=False)["input_ids"]
    seen = []
    handle = lm.blocks[layer].register_forward_hook(
        lambda _m, _i, out: seen.append((out[0] if isinstance(out, tuple) else out).detach().clone())
    )
    try:
        with steer(lm, spec) if spec is not None else contextlib.nullcontext(), torch.no_grad():
            lm.model(ids)
    finally:
        handle.remove()
    return seen[0]


def test_issue_example_directions_13_to_25_fit_a_30_layer_model(tmp_path):
    # the issue's file: directions 13..25, layer_count = 13 (the number of directions), on smollm2
    # (30 layers, d_model 576): loads, fits, and steering layer 20 is allowed; layer 12 is not
    path, dirs = repeng_file(tmp_path / "cv.gguf", range(13, 26), d_model=576)
    v = SteeringVector.load(path)
    assert v.layers_present == list(range(13, 26)) and v.n_layers == 26
    v.check_compatible(30, 576, "smollm2", layers=[20])
    assert torch.equal(v[20], torch.from_numpy(dirs[20]))
    with pytest.raises(SteerlabError, match=r"holds directions only for layers 13-25; layer 12 is absent") as exc:
        v.check_compatible(30, 576, "smollm2", layers=[12])
    assert str(path) in str(exc.value)
    with pytest.raises(SteerlabError, match=r"holds directions for layers 13-25 but smollm2 has 20 layers"):
        v.check_compatible(20, 576, "smollm2")
    with pytest.raises(SteerlabError, match="d_model 576 does not match smollm2's d_model 64"):
        v.check_compatible(30, 64, "smollm2")


@pytest.mark.parametrize(
    ("layers", "layer_count", "steered"),
    [
        ((1, 2), None, 2),  # repeng: layer_count = number of directions
        ((1, 3), 4, 3),  # llama.cpp style: layer_count counts the model's layers, with a gap at 2
        ((2,), None, 2),  # a wider layer index than layer_count: still fits the 4-layer model
    ],
)
def test_partial_file_steers_a_layer_it_holds(tmp_path, tiny_llama, layers, layer_count, steered):
    path, dirs = repeng_file(tmp_path / "cv.gguf", layers, tiny_llama.d_model, layer_count)
    v = SteeringVector.load(path)
    assert v.layers_present == list(layers) and v.metadata["method"] == "imported"
    for n in range(v.n_layers):  # absent layers are zero, as llama.cpp treats them
        expected = torch.from_numpy(dirs[n]) if n in dirs else torch.zeros(tiny_llama.d_model)
        assert torch.equal(v.data[n], expected), n
    base = block_output(tiny_llama, steered)
    out = block_output(tiny_llama, steered, SteeringSpec(v, steered, coeff=3.0))
    assert torch.equal(out, base + 3.0 * torch.from_numpy(dirs[steered]))
    absent = next(n for n in range(tiny_llama.n_layers) if n not in dirs)
    with pytest.raises(SteerlabError, match=rf"layer {absent} is absent") as exc:
        steer(tiny_llama, SteeringSpec(v, absent))
    assert str(path) in str(exc.value) and f"only for layers {format_layers(layers)}" in str(exc.value)
    with pytest.raises(SteerlabError, match=r"layers 0\S* are absent"):  # "all" includes layer 0, never held
        steer(tiny_llama, SteeringSpec(v, "all"))


def test_partial_vector_absent_layer_errors_everywhere(tmp_path, tiny_llama):
    path, _ = repeng_file(tmp_path / "cv.gguf", (1, 2), tiny_llama.d_model)
    v = import_gguf(path)
    with pytest.raises(SteerlabError, match="layer 3 is absent"):
        v[3]
    with pytest.raises(SteerlabError, match="layers 0,3 are absent"):
        SteeringSpec(v, [0, 1, 3]).interventions(tiny_llama)
    sample = [ChatSample("how should I store bread", "in a box")]
    assert project(tiny_llama, sample, v, 2, ["response_avg"])["response_avg"].shape == (1, 1)
    with pytest.raises(SteerlabError, match="layer 3 is absent"):
        project(tiny_llama, sample, v, 3, ["response_avg"])
    deep, _ = repeng_file(tmp_path / "deep.gguf", (5, 6), tiny_llama.d_model)
    with pytest.raises(SteerlabError, match="holds directions for layers 5-6 but tiny-llama has 4 layers"):
        steer(tiny_llama, SteeringSpec(SteeringVector.load(deep), 1))


def test_cli_generate_with_partial_file(tmp_path, tiny_dir):
    path, _ = repeng_file(tmp_path / "cv.gguf", (1, 2))
    result = invoke("generate", "-m", tiny_dir, "-v", path, "-l", 2, "-c", "4", "-n", 2, "hello")
    assert result.exit_code == 0, result.output
    result = invoke("generate", "-m", tiny_dir, "-v", path, "-l", 3, "-n", 2, "hello")
    assert_user_error(result, str(path), "holds directions only for layers 1-2; layer 3 is absent")


def test_partial_export_import_exact(tmp_path):
    path, _ = repeng_file(tmp_path / "repeng.gguf", (1, 3), d_model=8, layer_count=5, hint="mistral")
    v = import_gguf(path)
    out = export_gguf(v, tmp_path / "again.gguf")  # no layer 0 held: no warning, no steerlab.layer0
    reader = gguf.GGUFReader(str(out))
    assert [t.name for t in reader.tensors] == ["direction.1", "direction.3"]
    assert reader.get_field("steerlab.layer0") is None
    assert reader.get_field("controlvector.model_hint").contents() == "mistral"
    w = import_gguf(out)
    assert torch.equal(w.data, v.data) and w.layers_present == [1, 3]
    assert {k: x for k, x in w.metadata.items() if k != "source"} == {
        k: x for k, x in v.metadata.items() if k != "source"
    }
    assert w.metadata["source"] == str(out)
    # .safetensors keeps the present layers too, and names the file it was loaded from
    back = SteeringVector.load(v.save(tmp_path / "v.safetensors"))
    assert torch.equal(back.data, v.data) and back.layers_present == [1, 3]
    assert back.metadata["source"] == str(tmp_path / "v.safetensors")


def test_complete_export_import_has_no_partial_marks(tmp_path):
    v = make(layer0_zero=True)
    w = import_gguf(export_gguf(v, tmp_path / "v.gguf"))
    assert not w.is_partial and "source" not in w.metadata and "layers_present" not in w.metadata
    assert w.layers_present == list(range(N_LAYERS))
    assert {k: x for k, x in w.metadata.items() if k != "model_hint"} == v.metadata


def test_other_formats_still_load(tmp_path):
    v = make()
    assert torch.equal(SteeringVector.load(v.save(tmp_path / "v.safetensors")).data, v.data)
    torch.save(torch.cat([torch.zeros(1, D_MODEL), v.data]), tmp_path / "pv.pt")
    with pytest.warns(UserWarning, match="persona-vectors layout"):
        pt = SteeringVector.load(tmp_path / "pv.pt")
    assert torch.equal(pt.data, v.data) and not pt.is_partial


def test_partial_algebra_keeps_present_layers(tmp_path):
    a = SteeringVector(torch.ones(4, 2), {"layers_present": [1, 2]})
    b = SteeringVector(torch.ones(4, 2), {"layers_present": [2, 3]})
    assert (a + b).layers_present == [1, 2, 3] and (a - b).layers_present == [1, 2, 3]
    assert (2.0 * a).layers_present == [1, 2] and a.normalized().layers_present == [1, 2]
    assert SteeringVector.blend([a, b], [0.5, 0.5]).layers_present == [1, 2, 3]
    full = SteeringVector(torch.ones(4, 2))
    assert not (full + full).is_partial and (a + full).layers_present == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ([1, 9], "'layers_present' 1,9 is outside the vector's 4 rows"),
        ("1-2", "must be a list of layer indices"),
        ([1.5], "must be a list of layer indices"),
    ],
)
def test_bad_layers_present(tmp_path, value, match):
    with pytest.raises(SteerlabError, match=match):
        SteeringVector(torch.ones(4, 2), {"layers_present": value})
    path = tmp_path / "v.safetensors"
    save_file({"vector": torch.ones(4, 2)}, str(path), metadata={"steerlab": json.dumps({"layers_present": value})})
    with pytest.raises(SteerlabError, match=match) as exc:
        SteeringVector.load(path)
    assert str(path) in str(exc.value)


def test_bad_partial_files(tmp_path):
    quantized = gguf.quants.quantize(np.ones((1, 64), np.float32), gguf.GGMLQuantizationType.Q8_0)
    writer = gguf.GGUFWriter(str(tmp_path / "q.gguf"), "controlvector")
    writer.add_tensor("direction.1", quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(SteerlabError, match=r"'direction\.1' has type Q8_0, expected F32 or F16"):
        import_gguf(tmp_path / "q.gguf")
    path = write_gguf(
        tmp_path / "count.gguf", {"direction.1": np.ones(4, np.float32)}, kv={"controlvector.layer_count": "five"}
    )
    with pytest.raises(SteerlabError, match="layer_count is 'five', expected a non-negative integer"):
        import_gguf(path)
    only0 = SteeringVector(torch.ones(3, 4), {"layers_present": [0]})
    with pytest.raises(SteerlabError, match="holds no layer >= 1"):
        export_gguf(only0, tmp_path / "none.gguf")
    assert not (tmp_path / "none.gguf").exists()


def test_format_layers():
    assert format_layers([13, 14, 15, 20, 22, 23]) == "13-15,20,22-23"
    assert format_layers([3]) == "3" and format_layers([]) == "(none)"
