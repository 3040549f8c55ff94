"""Bad vector files: steerlab ``.safetensors``, llama.cpp ``.gguf`` control vectors and
persona-vectors ``.pt`` that are truncated, empty, wrongly typed, non-float, huge or oddly named.
``SteeringVector.load`` works or fails with one clear SteerlabError naming the file (docs/design.md §10)."""

import json
import warnings

import gguf
import numpy as np
import pytest
import torch
from bad_inputs import (
    BAD_INPUT,
    LONG_NAME,
    clear_error,
    corruptions,
    huge_json_texts,
    json_values,
    odd_names,
    read_or_clear_error,
    scratch,
    write,
)
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file

from steerlab.vectors.gguf import export_gguf
from steerlab.vectors.vector import SteeringVector

SUFFIXES = (".safetensors", ".gguf", ".pt")
VECTOR = SteeringVector(torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7 + 1, {"model": "tiny", "method": "x"})


def load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the persona-vectors layout note of .pt files
        return SteeringVector.load(path)


def valid_bytes(suffix: str) -> bytes:
    with scratch() as tmp:
        path = tmp / f"v{suffix}"
        if suffix == ".safetensors":
            VECTOR.save(path)
        elif suffix == ".gguf":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # layer 0 kept in steerlab.layer0
                export_gguf(VECTOR, path)
        else:
            torch.save(torch.cat([torch.zeros(1, 6), VECTOR.data]), path)
        return path.read_bytes()


VALID = {suffix: valid_bytes(suffix) for suffix in SUFFIXES}


def write_gguf(path, tensors, kv, arch="controlvector"):
    """A GGUF control vector written by hand (as repeng and llama.cpp do), with any key types."""
    writer = gguf.GGUFWriter(str(path), arch)
    for key, (kind, value) in kv.items():
        getattr(writer, f"add_{kind}")(key, value)
    for name, values in tensors.items():
        writer.add_tensor(name, np.asarray(values, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_valid_files_load(tmp_path):
    for suffix in SUFFIXES:
        loaded = load(write(tmp_path / f"v{suffix}", VALID[suffix]))
        assert torch.equal(loaded.data, VECTOR.data), suffix


@BAD_INPUT
@given(data=st.data(), suffix=st.sampled_from(SUFFIXES))
def test_corrupt_vector_files_fail_clearly(data, suffix):
    content = data.draw(corruptions(VALID[suffix]).filter(lambda b: b != VALID[suffix]))
    with scratch() as tmp:
        read_or_clear_error(load, write(tmp / f"v{suffix}", content))


@BAD_INPUT
@given(suffix=st.sampled_from(SUFFIXES), cut=st.floats(0, 0.999))
def test_truncated_vector_files_fail_clearly(suffix, cut):
    with scratch() as tmp:
        path = write(tmp / f"v{suffix}", VALID[suffix][: int(len(VALID[suffix]) * cut)])
        clear_error(load, path)


DTYPES = [
    torch.int64,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.float8_e4m3fn,
]
SHAPES = [(), (6,), (0, 6), (4, 0), (2, 3, 4), (4, 6)]


@BAD_INPUT
@given(dtype=st.sampled_from(DTYPES), shape=st.sampled_from(SHAPES), suffix=st.sampled_from([".safetensors", ".pt"]))
def test_tensors_of_any_dtype_and_shape(dtype, shape, suffix):
    with scratch() as tmp:
        path = tmp / f"v{suffix}"
        good_shape = (len(shape) == 2 and 0 not in shape) or (suffix == ".safetensors" and shape == (6,))
        if suffix == ".pt" and len(shape) == 2:  # persona-vectors files carry one more row (embeddings)
            shape = (shape[0] + 1, shape[1])
        tensor = torch.ones(shape).to(dtype)
        if suffix == ".pt":
            torch.save(tensor, path)
        else:
            save_file({"vector": tensor}, str(path))
        message = read_or_clear_error(load, path)
        assert (message is None) == (dtype.is_floating_point and good_shape), message


@BAD_INPUT
@given(text=st.one_of(json_values().map(json.dumps), huge_json_texts(), st.text(max_size=20)))
def test_safetensors_header_metadata_of_any_type(text):
    with scratch() as tmp:
        path = tmp / "v.safetensors"
        save_file({"vector": VECTOR.data}, str(path), metadata={"steerlab": text})
        message = read_or_clear_error(load, path)
        if message is not None:
            assert "header field 'steerlab'" in message or "metadata" in message, message


KEY_VALUES = st.one_of(
    st.tuples(st.just("uint32"), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("string"), st.text(max_size=20) | huge_json_texts()),
    st.tuples(st.just("float32"), st.floats(-1e6, 1e6)),
    st.tuples(st.just("bool"), st.booleans()),
)


@BAD_INPUT
@given(
    value=KEY_VALUES,
    key=st.sampled_from(
        ["controlvector.layer_count", "steerlab.metadata", "controlvector.model_hint", "steerlab.layer0"]
    ),
)
def test_gguf_keys_of_any_type(value, key):
    with scratch() as tmp:
        kv = {"controlvector.layer_count": ("uint32", 3), key: value}
        path = write_gguf(tmp / "v.gguf", {"direction.1": np.ones(6), "direction.3": np.ones(6)}, kv)
        read_or_clear_error(load, path)


@BAD_INPUT
@given(arch=st.text(max_size=30))
def test_gguf_of_another_architecture(arch):
    with scratch() as tmp:
        path = write_gguf(tmp / "v.gguf", {"direction.1": np.ones(6)}, {}, arch=arch)
        message = read_or_clear_error(load, path)
        assert (message is None) == (arch == "controlvector"), message


@BAD_INPUT
@given(
    names=st.lists(
        st.sampled_from(
            [
                "direction.1",
                "direction.0",
                "direction.x",
                "direction.²",
                "dir.2",
                "direction.4097",
                "direction.99999999999",
                "direction.-1",
            ]
        ),
        min_size=1,
        max_size=3,
        unique=True,
    )
)
def test_gguf_tensor_names(names):
    with scratch() as tmp:
        path = write_gguf(tmp / "v.gguf", {n: np.ones(6) for n in names}, {})
        message = read_or_clear_error(load, path)
        assert (message is None) == (names == ["direction.1"]), message


def test_huge_gguf_claims_fail_without_allocating(tmp_path):
    """A layer_count or a direction index of billions must not allocate billions of rows."""
    count = write_gguf(
        tmp_path / "count.gguf",
        {"direction.1": np.ones(6)},
        {"controlvector.layer_count": ("uint32", 2**32 - 1), "steerlab.metadata": ("string", "{}")},
    )
    clear_error(load, count, "controlvector.layer_count is '4294967295', expected a non-negative integer")
    index = write_gguf(tmp_path / "index.gguf", {"direction.4000000000": np.ones(6)}, {})
    clear_error(load, index, "tensor 'direction.4000000000' is for layer 4000000000")
    wide = write_gguf(tmp_path / "2d.gguf", {"direction.1": np.ones((2, 3))}, {})
    clear_error(load, wide, "has shape [3, 2], expected one dimension (d_model)")
    layer0 = write_gguf(
        tmp_path / "l0.gguf",
        {"direction.1": np.ones(6)},
        {"steerlab.metadata": ("string", "{}"), "steerlab.layer0": ("string", "zeros")},
    )
    clear_error(load, layer0, "key 'steerlab.layer0' must be an array of 6 numbers")
    meta = write_gguf(tmp_path / "meta.gguf", {"direction.1": np.ones(6)}, {"steerlab.metadata": ("uint32", 7)})
    clear_error(load, meta, "key 'steerlab.metadata' is not a JSON object")


def test_values_beyond_float32_are_refused(tmp_path):
    path = tmp_path / "wide.safetensors"
    save_file({"vector": torch.full((2, 3), 1e300, dtype=torch.float64)}, str(path))
    clear_error(load, path, "NaN/inf values at layers [0, 1] (float64 values beyond float32's range count as inf)")


@BAD_INPUT
@given(name=odd_names(".safetensors"), exists=st.booleans())
def test_odd_file_names(name, exists):
    with scratch() as tmp:
        path = tmp / name
        if exists and LONG_NAME not in name:
            write(path, VALID[".safetensors"])
            assert torch.equal(load(path).data, VECTOR.data)
        else:
            clear_error(load, path, "file name too long" if LONG_NAME in name else "vector file not found")


@pytest.mark.parametrize("suffix", [".GGUF", ".Pt"])
def test_suffixes_in_any_case(tmp_path, suffix):
    path = write(tmp_path / f"v{suffix}", VALID[suffix.lower()])
    assert torch.equal(load(path).data, VECTOR.data)


def test_messages_name_the_file_and_what_was_expected(tmp_path):
    """Before: OSError [Errno 36], TypeError, AttributeError, RecursionError, UnicodeDecodeError,
    NotImplementedError tracebacks; after: one SteerlabError each."""
    long = tmp_path / (LONG_NAME + ".safetensors")
    assert clear_error(load, long) == (
        f"vector file {long}: file name too long (312 bytes in one name; file systems allow 255)"
    )
    assert clear_error(load, tmp_path) == f"vector file {tmp_path}: is a directory, expected a file"
    listed = tmp_path / "list.safetensors"
    save_file({"vector": VECTOR.data}, str(listed), metadata={"steerlab": "[1, 2]"})
    assert clear_error(load, listed) == f"{listed}: header field 'steerlab' must be a JSON object, got list"
    ints = tmp_path / "ints.safetensors"
    save_file({"vector": torch.ones(2, 3, dtype=torch.int64)}, str(ints))
    assert clear_error(load, ints) == f"{ints}: expected a floating-point tensor, got dtype int64"
    fp8 = tmp_path / "fp8.safetensors"
    save_file({"vector": torch.ones(2, 3).to(torch.float8_e4m3fn)}, str(fp8))
    assert load(fp8).data.dtype == torch.float32
    weights = tmp_path / "model.safetensors"
    save_file({f"layers.{i}.weight": torch.ones(2) for i in range(40)}, str(weights))
    clear_error(
        load,
        weights,
        "no tensor named 'vector' (found 40 tensor(s): 'layers.0.weight', 'layers.1.weight'",
        "...); expected a steering vector saved by steerlab",
    )
    pt = tmp_path / "dict.pt"
    torch.save({"vector": torch.ones(3, 4)}, pt)
    clear_error(load, pt, "expected a [n_layers + 1, d_model] tensor (persona-vectors layout), got dict")
    garbage = write(tmp_path / "g.gguf", VALID[".gguf"][:100])
    clear_error(load, garbage, f"{garbage}: not a readable GGUF file (", "expected a llama.cpp control vector (.gguf)")
