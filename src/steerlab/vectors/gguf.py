"""llama.cpp control vectors (GGUF): export and import.

Format: ``general.architecture = "controlvector"``, ``controlvector.model_hint`` (string),
``controlvector.layer_count`` (uint32), F32 tensors ``direction.N`` of length d_model, which
llama.cpp adds to the output of block N. llama.cpp rejects ``direction.0``, so steerlab's layer 0
cannot be expressed there: it is kept in the steerlab-only key ``steerlab.layer0`` (ignored by
other tools) and a warning says so when it is non-zero. Export then import is exact.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import gguf
import numpy as np
import torch

from ..errors import SteerlabError
from ..io.atomic import atomic_path
from .vector import SteeringVector

ARCH = "controlvector"


def export_gguf(vector: SteeringVector, path: str | Path, model_hint: str | None = None) -> Path:
    """Write ``vector`` as a llama.cpp control vector; layers 1..n-1 become ``direction.1..``."""
    path = Path(path)
    hint = model_hint or vector.metadata.get("model_type") or vector.metadata.get("model") or "unknown"
    layer0 = vector.data[0].numpy().astype(np.float32)
    if np.any(layer0 != 0):
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
        writer.add_array("steerlab.layer0", layer0.tolist())
        for layer in range(1, vector.n_layers):
            writer.add_tensor(f"direction.{layer}", vector.data[layer].numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def import_gguf(path: str | Path) -> SteeringVector:
    """Read a llama.cpp control vector (from steerlab, repeng or llama.cpp's cvector tools)."""
    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader raises ValueError/struct errors on bad files
        raise SteerlabError(f"{path}: not a readable GGUF file ({exc})") from None
    arch = reader.get_field("general.architecture")
    if arch is None or arch.contents() != ARCH:
        raise SteerlabError(
            f"{path}: general.architecture is {arch.contents() if arch else None!r}, "
            f"expected {ARCH!r} (a control vector)"
        )
    directions: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        prefix, _, index = tensor.name.partition(".")
        if prefix != "direction" or not index.isdigit() or int(index) < 1:
            raise SteerlabError(f"{path}: unexpected tensor {tensor.name!r} (want direction.N, N >= 1)")
        values = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
        if directions and len(values) != len(next(iter(directions.values()))):
            raise SteerlabError(
                f"{path}: tensor {tensor.name!r} has length {len(values)}, the other directions "
                f"have {len(next(iter(directions.values())))}"
            )
        directions[int(index)] = values
    if not directions:
        raise SteerlabError(f"{path}: no direction.N tensors")
    d_model = len(next(iter(directions.values())))
    count_field = reader.get_field(f"{ARCH}.layer_count")
    n_layers = max(max(directions), int(count_field.contents()) if count_field else 0) + 1
    data = torch.zeros(n_layers, d_model)
    for layer, values in directions.items():
        data[layer] = torch.from_numpy(values.copy())
    meta_field = reader.get_field("steerlab.metadata")
    try:
        meta = json.loads(meta_field.contents()) if meta_field else {"method": "imported"}
    except json.JSONDecodeError:
        raise SteerlabError(f"{path}: key 'steerlab.metadata' is not valid JSON") from None
    layer0 = reader.get_field("steerlab.layer0")
    if layer0 is not None:
        data[0] = torch.tensor(np.asarray(layer0.contents(), dtype=np.float32))
    hint = reader.get_field(f"{ARCH}.model_hint")
    if hint is not None:
        meta.setdefault("model_hint", hint.contents())
    return SteeringVector(data, meta)
