"""llama.cpp control vectors (GGUF): export and import.

Format (llama.cpp ``common/common.cpp`` control-vector loader; repeng ``ControlVector.export_gguf``):
``general.architecture = "controlvector"``, ``controlvector.model_hint`` (string),
``controlvector.layer_count`` (uint32), F32 tensors ``direction.N`` of length d_model, which
llama.cpp adds to the output of block N. llama.cpp rejects ``direction.0``, so steerlab's layer 0
cannot be expressed there: it is kept in the steerlab-only key ``steerlab.layer0`` (ignored by
other tools) and a warning says so when it is non-zero.

Files written by steerlab (they carry ``steerlab.metadata``) import exactly as exported: the same
``[layer_count + 1, d_model]`` tensor and metadata. Files written elsewhere (repeng, llama.cpp's
``cvector-generator``) may hold ``direction.N`` for only some layers, and their ``layer_count`` may
count the directions rather than the model's layers. They import as a *partial* vector, as llama.cpp
reads them: rows ``0..max N``, absent layers zero, ``metadata["layers_present"]`` the layers held
(never 0), ``metadata["source"]`` the file, and the file's ``layer_count`` kept as
``metadata["gguf_layer_count"]`` for information only. A partial vector fits any model of the same
d_model with more than ``max N`` layers, and steering a layer it does not hold is an error
(:meth:`SteeringVector.check_compatible`).
"""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import gguf
import numpy as np
import torch

from ..errors import SteerlabError
from ..io.atomic import atomic_path
from ..io.files import file_problem, parse_json
from .vector import SteeringVector

ARCH = "controlvector"
_FLOAT_TYPES = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
MAX_LAYERS = 4096  # bounds the rows a file can ask for (the largest models have a few hundred blocks)
# What gguf.GGUFReader and its lazily decoded fields raise on truncated or corrupt files (numpy
# reshapes and views, struct reads, string decoding, out-of-range enum values).
_READ_ERRORS = (ValueError, IndexError, KeyError, TypeError, OverflowError, struct.error, OSError)


def export_gguf(vector: SteeringVector, path: str | Path, model_hint: str | None = None) -> Path:
    """Write ``vector`` ``[n_layers, d_model]`` as a llama.cpp control vector, atomically.

    Layers 1..n_layers-1 (those the vector holds, for a partial vector) become ``direction.1..``;
    ``layer_count`` is ``n_layers - 1``; layer 0 goes to ``steerlab.layer0`` (warning when non-zero,
    since llama.cpp cannot apply it). ``model_hint`` defaults to the metadata's ``model_hint`` (of an
    imported file), ``model_type`` or ``model``. Raises SteerlabError when the vector holds no layer
    >= 1 (nothing llama.cpp could use). Returns ``path``.
    """
    path = Path(path)
    meta = vector.metadata
    hint = model_hint or meta.get("model_hint") or meta.get("model_type") or meta.get("model") or "unknown"
    present = vector.layers_present
    if not any(layer >= 1 for layer in present):
        raise SteerlabError(
            f"cannot export to {path}: the vector holds no layer >= 1 (llama.cpp control vectors "
            "start at direction.1; layer 0 cannot be expressed)"
        )
    layer0 = vector.data[0].numpy().astype(np.float32)
    if 0 in present and np.any(layer0 != 0):
        warnings.warn(
            "layer 0 (output of block 0) cannot be expressed as a llama.cpp control vector "
            "(direction.0 is invalid there); llama.cpp will not apply it (kept in steerlab.layer0)",
            stacklevel=2,
        )
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", str(hint))
        writer.add_uint32(f"{ARCH}.layer_count", vector.n_layers - 1)
        writer.add_string("steerlab.metadata", json.dumps(vector.metadata, default=str))
        if 0 in present:
            writer.add_array("steerlab.layer0", layer0.tolist())
        for layer in present:
            if layer >= 1:
                writer.add_tensor(f"direction.{layer}", vector.data[layer].numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def _read_directions(path: Path, reader: gguf.GGUFReader) -> dict[int, np.ndarray]:
    """``{N: direction.N as float32 [d_model]}``; raises SteerlabError on any other tensor."""
    directions: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        prefix, _, index = tensor.name.partition(".")
        if prefix != "direction" or not (index.isascii() and index.isdigit()) or int(index) < 1:
            raise SteerlabError(f"{path}: unexpected tensor {tensor.name!r} (want direction.N, N >= 1)")
        if int(index) > MAX_LAYERS:
            raise SteerlabError(
                f"{path}: tensor {tensor.name!r} is for layer {index}; expected a layer of a model "
                f"(at most {MAX_LAYERS})"
            )
        if tensor.tensor_type not in _FLOAT_TYPES:
            raise SteerlabError(
                f"{path}: tensor {tensor.name!r} has type {tensor.tensor_type.name}, expected F32 or F16"
            )
        if sum(int(n) > 1 for n in tensor.shape) > 1:
            raise SteerlabError(
                f"{path}: tensor {tensor.name!r} has shape {[int(n) for n in tensor.shape]}, "
                "expected one dimension (d_model)"
            )
        values = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
        if directions and len(values) != len(next(iter(directions.values()))):
            raise SteerlabError(
                f"{path}: tensor {tensor.name!r} has length {len(values)}, the other directions "
                f"have {len(next(iter(directions.values())))}"
            )
        directions[int(index)] = values
    if not directions:
        raise SteerlabError(f"{path}: no direction.N tensors")
    return directions


def import_gguf(path: str | Path) -> SteeringVector:
    """Read a llama.cpp control vector (from steerlab, repeng or llama.cpp's cvector tools).

    Returns a ``[n_rows, d_model]`` SteeringVector: exactly what steerlab exported for its own files;
    for files written elsewhere a partial vector (see the module docstring). Raises SteerlabError
    naming ``path`` for a path that is not a regular file, unreadable or truncated files (``not a
    readable GGUF file``), another architecture, tensors other than ``direction.N`` (N >= 1,
    F32/F16, one length) or inconsistent steerlab keys.
    """
    problem = file_problem(path)
    try:
        if problem is None:
            return _import(Path(path))
    except _READ_ERRORS as exc:  # the reader parses lazily: a corrupt file fails anywhere in here
        problem = f"{type(exc).__name__}: {exc}"
    raise SteerlabError(f"{path}: not a readable GGUF file ({problem}); expected a llama.cpp control vector (.gguf)")


def _import(path: Path) -> SteeringVector:
    reader = gguf.GGUFReader(str(path))
    arch = reader.get_field("general.architecture")
    if arch is None or arch.contents() != ARCH:
        raise SteerlabError(
            f"{path}: general.architecture is {arch.contents() if arch else None!r}, "
            f"expected {ARCH!r} (a control vector)"
        )
    directions = _read_directions(path, reader)
    d_model = len(next(iter(directions.values())))
    count_field = reader.get_field(f"{ARCH}.layer_count")
    count = count_field.contents() if count_field is not None else None
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_LAYERS):
        raise SteerlabError(
            f"{path}: {ARCH}.layer_count is {str(count)[:60]!r}, expected a non-negative integer "
            f"(a number of layers, at most {MAX_LAYERS})"
        )
    meta_field = reader.get_field("steerlab.metadata")
    layer0 = reader.get_field("steerlab.layer0")
    if meta_field is not None:  # steerlab's own export: rows = layer_count + 1
        text = meta_field.contents()
        try:
            meta = parse_json(text, "") if isinstance(text, str) else None
        except SteerlabError:
            meta = None
        if not isinstance(meta, dict):
            raise SteerlabError(f"{path}: key 'steerlab.metadata' is not a JSON object")
        n_rows = (count if count is not None else max(directions)) + 1
        if max(directions) >= n_rows:
            raise SteerlabError(f"{path}: tensor 'direction.{max(directions)}' is beyond {ARCH}.layer_count {count}")
    else:  # written elsewhere: rows up to the highest direction, as llama.cpp reads it
        meta = {"method": "imported"}
        if count is not None:
            meta["gguf_layer_count"] = count
        n_rows = max(directions) + 1
        layer0 = None
    data = torch.zeros(n_rows, d_model)
    for layer, values in directions.items():
        data[layer] = torch.from_numpy(values.copy())
    present = sorted(directions)
    if layer0 is not None:
        contents = layer0.contents()
        if not isinstance(contents, list) or not all(isinstance(x, int | float) for x in contents):
            raise SteerlabError(f"{path}: key 'steerlab.layer0' must be an array of {d_model} numbers")
        values = np.asarray(contents, dtype=np.float32).reshape(-1)
        if len(values) != d_model:
            raise SteerlabError(f"{path}: key 'steerlab.layer0' has length {len(values)}, expected {d_model}")
        data[0] = torch.from_numpy(values)
        present.insert(0, 0)
    meta.pop("layers_present", None)
    if present != list(range(n_rows)):
        meta["layers_present"] = present
        meta["source"] = str(path)
    hint = reader.get_field(f"{ARCH}.model_hint")
    if hint is not None:
        meta.setdefault("model_hint", str(hint.contents()))
    try:
        return SteeringVector(data, meta)
    except SteerlabError as exc:
        raise SteerlabError(f"{path}: {exc}") from None
