"""Baking a direction into the weights: directional ablation by weight orthogonalisation.

The model an "abliterated" checkpoint is made from, written as a standard Hugging Face directory
that needs no hooks in any engine (Arditi et al. 2024, "Refusal in language models is mediated by
a single direction", arXiv:2406.11717, weight orthogonalisation). Every matrix that writes into the
residual stream — the token embedding (and a learned position embedding), and in every decoder block
the attention output projection and the MLP down projection — gets its output projected off the
unit direction u = v / ‖v‖:

    nn.Linear  y = W x + b,  W [d_model, in]:   W ← W − u (uᵀ W),   b ← b − (u·b) u
    Conv1D     y = x W + b,  W [in, d_model]:   W ← W − (W u) uᵀ,   b ← b − (u·b) u   (GPT-2)
    embedding  E [vocab, d_model]:              E ← E − (E u) uᵀ

The residual stream is the sum of these writes, so none of its states (block inputs, the state
between attention and MLP, block outputs, the final norm's input) keeps a component along u: the
baked model computes what the original computes with ``w − (w·u) u`` applied by hooks to every
write (the embedding output, each attention and each MLP output, biases included). That is more
than ``--operator ablate -l all``, which projects block outputs only (the MLP of a block still reads
its attention output's component along u, and the embeddings are not projected).

What baking cannot express (steer with hooks instead, ``steerlab generate``):

- a different direction per layer: a write persists in every later layer, so a direction is
  removed from the whole stream or not at all — one direction per bake;
- addition (h + c·v): it needs an output bias on a writer, which Llama-family models do not have
  (and a stock architecture cannot gain); capping (a clamp is not linear); positions (weights act
  on every token); a coefficient other than 1;
- architectures whose writes pass through a norm after the projection (Gemma 2/3, OLMo 2: the
  write is ``norm(W x)``, and no change of W makes it equal ``norm(W x)`` with u projected out):
  refused with an error.

Tied input/output embeddings are untied: the unembedding keeps its weights (``lm_head.weight`` is
written and ``config.json`` gets ``tie_word_embeddings: false``). Weights are computed in float32 and
stored in the model's dtype (in bfloat16 a component along u of the order of bf16 rounding remains).
The model in memory is left untouched. What was baked is recorded in ``DIR/steerlab_bake.json``
(:data:`BAKE_FILE`); the directory holds no other ``.safetensors`` than the model's own, since
engines such as vLLM load every ``*.safetensors`` file of a directory without an index.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SteerlabError
from ..io.atomic import atomic_dir, write_json
from ..io.runs import file_digest
from ..model.blocks import unwrap_model
from ..model.layers import check_layer_index
from ..model.loading import LoadedModel, quiet_transformers
from ..vectors.vector import SteeringVector, steerlab_version

log = logging.getLogger("steerlab")

BAKE_FILE = "steerlab_bake.json"
FORMAT = "steerlab.bake/1"


@dataclass(frozen=True)
class ResidualWriters:
    """Where an architecture writes into the residual stream: ``embeddings`` (paths from the causal
    LM, e.g. ``model.embed_tokens``), and in each decoder block ``attention_out`` and ``mlp_out``
    (paths from the block, e.g. ``self_attn.o_proj``)."""

    embeddings: tuple[str, ...]
    attention_out: str
    mlp_out: str


_LLAMA_LIKE = ResidualWriters(("model.embed_tokens",), "self_attn.o_proj", "mlp.down_proj")
RESIDUAL_WRITERS: dict[str, ResidualWriters] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,  # Gemma 1: the embedding is scaled by sqrt(d_model), a linear step
    "gpt2": ResidualWriters(("transformer.wte", "transformer.wpe"), "attn.c_proj", "mlp.c_proj"),
    "gpt_neox": ResidualWriters(("gpt_neox.embed_in",), "attention.dense", "mlp.dense_4h_to_h"),
}
"""The residual-stream writers of each ``config.model_type`` baking knows (tested on tiny models)."""

_POST_NORM = (
    "its attention and MLP outputs pass through a norm after the output projection "
    "(post-attention / post-feedforward norms), so the write into the residual stream is norm(W x) and no "
    "change of W makes it equal norm(W x) with the direction projected out; steer it with hooks "
    "(steerlab generate --operator ablate) instead"
)
REFUSED: dict[str, str] = {"gemma2": _POST_NORM, "gemma3": _POST_NORM, "gemma3_text": _POST_NORM, "olmo2": _POST_NORM}
"""Architectures baking refuses, with the reason."""


@dataclass(frozen=True)
class Writer:
    """One matrix that writes into the residual stream: its parameter prefix in the state dict
    (``model.layers.3.mlp.down_proj``), the module, and ``kind``: ``linear`` (output rows),
    ``conv1d`` or ``embedding`` (output columns)."""

    name: str
    module: nn.Module
    kind: str


@dataclass(frozen=True)
class BakeResult:
    """What :func:`bake_direction` wrote: the directory, the unit direction ``[d_model]`` float32,
    the parameters changed (state-dict names), whether tied embeddings were untied, and the
    metadata written to ``DIR/steerlab_bake.json``."""

    path: Path
    direction: torch.Tensor
    changed: list[str]
    untied: bool
    metadata: dict[str, Any]


def _module(root: nn.Module, path: str) -> nn.Module | None:
    module: Any = root
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module if isinstance(module, nn.Module) else None


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, nn.Linear):
        return "linear"
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # transformers.pytorch_utils.Conv1D
        return "conv1d"
    return None


def residual_writers(lm: LoadedModel) -> list[Writer]:
    """Every matrix of ``lm`` that writes into the residual stream (see :data:`RESIDUAL_WRITERS`):
    the embeddings, then each block's attention output and MLP output projection, in block order.

    Raises SteerlabError naming the model type for an architecture baking refuses
    (:data:`REFUSED`) or does not know, and naming the module for a writer that is missing, of an
    unexpected kind, or whose output is not ``d_model`` wide.
    """
    model = unwrap_model(lm.model)
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    arch = type(model).__name__
    if model_type in REFUSED:
        raise SteerlabError(f"bake: cannot bake into {arch} (model_type {model_type!r}): {REFUSED[model_type]}")
    spec = RESIDUAL_WRITERS.get(model_type or "")
    if spec is None:
        raise SteerlabError(
            f"bake: the matrices that write into the residual stream of {arch} (model_type {model_type!r}) are not "
            f"known; baking supports model types {', '.join(sorted(RESIDUAL_WRITERS))}"
        )
    found: list[tuple[str, nn.Module | None]] = [(path, _module(model, path)) for path in spec.embeddings]
    for i in range(lm.n_layers):
        for path in (spec.attention_out, spec.mlp_out):
            found.append((f"{lm.blocks_path}.{i}.{path}", _module(lm.blocks[i], path)))
    writers = []
    for name, module in found:
        kind = _kind(module) if module is not None else None
        if module is None or kind is None:
            seen = "nothing" if module is None else type(module).__name__
            raise SteerlabError(
                f"bake: {arch} (model_type {model_type!r}) should write into the residual stream through {name}, "
                f"an embedding, Linear or Conv1D, but found {seen} there"
            )
        width = module.weight.shape[0] if kind == "linear" else module.weight.shape[-1]
        if width != lm.d_model:
            raise SteerlabError(f"bake: {name} writes {width} values, not the residual stream's d_model {lm.d_model}")
        writers.append(Writer(name, module, kind))
    return writers


def project_out(x: torch.Tensor, u: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``x`` with its component along the unit vector ``u [d]`` removed along dimension ``dim``
    (``x`` has ``d`` entries there): ``x − u (uᵀ x)`` for ``dim=0`` of a matrix ``[d, in]``, else
    ``x − (x u) uᵀ`` for ``[..., d]``. Computed in float32, returned in ``x``'s dtype and device."""
    xf = x.detach().float()
    uf = u.to(device=xf.device, dtype=torch.float32)
    out = xf - torch.outer(uf, uf @ xf) if dim == 0 and xf.ndim == 2 else xf - (xf @ uf)[..., None] * uf
    return out.to(x.dtype)


def bake_direction(
    lm: LoadedModel,
    vector: SteeringVector | torch.Tensor,
    out: str | Path,
    layer: int | None = None,
    vector_file: str | Path | None = None,
) -> BakeResult:
    """Write ``lm`` with one direction projected out of every residual-stream write to ``out``, a
    Hugging Face model directory (safetensors, ``config.json``, generation config, tokenizer) that
    transformers, vLLM and llama.cpp's ``convert_hf_to_gguf.py`` read as a normal model.

    Args:
        lm: the model; left untouched (no weight, config or tie changes in memory).
        vector: a SteeringVector (its row ``layer`` is the direction; a one-row vector needs no
            ``layer``) or a ``[d_model]`` tensor (an explicit direction). Only the direction
            counts: its norm and sign do not change the result.
        out: the output directory, written atomically (a temp directory renamed); an existing
            directory is replaced only if an earlier bake wrote it (:data:`BAKE_FILE`).
        layer: which row of ``vector`` (negative counts from the end).
        vector_file: the vector's file, recorded with its SHA-256.

    The operation, its formula and what it cannot express are in the module docstring.

    Raises:
        SteerlabError: one message naming the flag or file for a vector of another width or layer
            count, a missing or out-of-range layer, a zero direction, an architecture whose
            residual writers are not known or cannot be baked (named), a model with an adapter,
            quantized or offloaded weights, or an ``out`` that is the model's own directory or an
            existing directory not written by a bake.
    """
    unit, norm, layer_used = _direction(lm, vector, layer, vector_file)
    model = unwrap_model(lm.model)
    _check_model(lm, model)
    writers = residual_writers(lm)
    target = _check_out(out, model)
    state = model.state_dict()  # references to the live tensors: only changed entries are new
    changed = []
    for writer in writers:
        weight = writer.module.weight
        state[f"{writer.name}.weight"] = project_out(weight, unit, dim=0 if writer.kind == "linear" else -1)
        changed.append(f"{writer.name}.weight")
        bias = getattr(writer.module, "bias", None)
        if isinstance(bias, torch.Tensor):
            state[f"{writer.name}.bias"] = project_out(bias, unit)
            changed.append(f"{writer.name}.bias")
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    untied = head is not None and head.weight.data_ptr() == embed.weight.data_ptr()
    metadata = _metadata(lm, vector, layer_used, vector_file, unit, norm, changed, untied)
    with atomic_dir(target) as tmp:
        _save(model, state, tmp)
        _write_config(tmp, untied)
        tokenizer = lm.tokenizer
        if tokenizer is not None:
            if lm.extra.get("fallback_template"):  # steerlab's own fallback is not part of the model
                tokenizer = copy.deepcopy(tokenizer)
                tokenizer.chat_template = None
            tokenizer.save_pretrained(tmp)
        write_json(tmp / BAKE_FILE, metadata)
        _readable(tmp)
    log.info("baked the direction out of %d weight tensors of %s into %s", len(changed), lm.name, target)
    return BakeResult(target, unit, changed, untied, metadata)


def _direction(
    lm: LoadedModel, vector: SteeringVector | torch.Tensor, layer: int | None, vector_file: str | Path | None
) -> tuple[torch.Tensor, float, int | None]:
    """The unit direction ``[d_model]`` float32, the given row's norm, and the row it came from
    (None for a tensor)."""
    label = str(vector_file) if vector_file else "the vector"
    if isinstance(vector, SteeringVector):
        if vector.d_model != lm.d_model:
            raise SteerlabError(
                f"{label}: its width (d_model) is {vector.d_model} but {lm.name}'s residual stream has {lm.d_model}"
            )
        if layer is None:
            if vector.n_layers != 1:
                raise SteerlabError(
                    f"--layer: {label} has {vector.n_layers} rows (one per layer); say which layer's direction to "
                    "bake, e.g. -l 12"
                )
            row, layer_used = vector.data[0], None
        else:
            if vector.n_layers != 1:
                try:
                    vector.check_compatible(lm.n_layers, lm.d_model, lm.name)
                except SteerlabError as exc:
                    raise SteerlabError(f"{label}: {exc}") from None
            layer_used = check_layer_index(layer, vector.n_layers, "--layer", label)
            try:
                row = vector[layer_used]
            except SteerlabError as exc:
                raise SteerlabError(f"--layer {layer}: {exc}") from None
    else:
        if layer is not None:
            raise SteerlabError("bake: layer is for a SteeringVector; an explicit direction is one [d_model] tensor")
        row = torch.as_tensor(vector).detach().float().cpu().reshape(-1)
        layer_used = None
        if row.numel() != lm.d_model:
            raise SteerlabError(f"bake: the direction has {row.numel()} values but {lm.name} has d_model {lm.d_model}")
        if not bool(torch.isfinite(row).all()):
            raise SteerlabError("bake: the direction has NaN/inf values")
    row = row.float()
    norm = float(row.norm())
    if norm == 0.0:
        where = f" at layer {layer_used}" if layer_used is not None else ""
        raise SteerlabError(f"{label} is zero{where}: a zero vector has no direction to remove")
    return row / norm, norm, layer_used


def _check_model(lm: LoadedModel, model: nn.Module) -> None:
    if lm.adapter or model is not lm.model:
        raise SteerlabError(
            f"bake: {lm.name} has an adapter ({lm.adapter or 'PEFT'}); merge it into the base weights first "
            "(peft merge_and_unload, then save_pretrained) and bake the merged model"
        )
    if getattr(model, "hf_quantizer", None) is not None:
        raise SteerlabError(f"bake: {lm.name} is quantized; load it unquantized (e.g. --dtype bfloat16) to bake")
    if any(p.device.type == "meta" for p in model.parameters()):
        raise SteerlabError(f"bake: some weights of {lm.name} are offloaded (meta device); load it fully to bake")


def _check_out(out: str | Path, model: nn.Module) -> Path:
    target = Path(out)
    source = getattr(model.config, "name_or_path", None)
    if source and Path(source).is_dir() and target.exists() and target.resolve() == Path(source).resolve():
        raise SteerlabError(f"--out {target}: that is the model's own directory; write the baked model elsewhere")
    if target.is_dir() and any(target.iterdir()) and not (target / BAKE_FILE).is_file():
        raise SteerlabError(
            f"--out {target}: exists and was not written by steerlab bake (no {BAKE_FILE}); choose a new directory"
        )
    if target.exists() and not target.is_dir():
        raise SteerlabError(f"--out {target}: exists and is not a directory")
    return target


def _save(model: nn.Module, state: dict[str, torch.Tensor], directory: Path) -> None:
    """``save_pretrained`` with ``state``; the config attributes it sets on the live model
    (``dtype``, ``architectures``) are put back afterwards."""
    config = model.config
    kept = {name: getattr(config, name, None) for name in ("dtype", "architectures")}
    try:
        with quiet_transformers():
            model.save_pretrained(directory, state_dict=state)
    finally:
        for name, value in kept.items():
            setattr(config, name, value)


def _readable(directory: Path) -> None:
    """Give every file the usual mode (0666 less the umask): safetensors writes weights as 0600, which
    a server running as another user could not read."""
    mask = os.umask(0)
    os.umask(mask)
    for path in directory.iterdir():
        if path.is_file():
            os.chmod(path, 0o666 & ~mask)


def _write_config(directory: Path, untied: bool) -> None:
    """Mark the embeddings untied in ``config.json`` when the unembedding was written on its own."""
    path = directory / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if untied or config.get("tie_word_embeddings"):
        config["tie_word_embeddings"] = False
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _metadata(
    lm: LoadedModel,
    vector: SteeringVector | torch.Tensor,
    layer: int | None,
    vector_file: str | Path | None,
    unit: torch.Tensor,
    norm: float,
    changed: list[str],
    untied: bool,
) -> dict[str, Any]:
    meta = vector.metadata if isinstance(vector, SteeringVector) else {}
    return {
        "format": FORMAT,
        "operation": "directional ablation by weight orthogonalisation (Arditi et al. 2024): every write w into "
        "the residual stream becomes w - (w.u) u",
        "model": lm.name,
        "model_type": getattr(unwrap_model(lm.model).config, "model_type", None),
        "dtype": str(lm.dtype).removeprefix("torch."),
        "vector": {
            "file": str(vector_file) if vector_file else None,
            "sha256": file_digest(Path(vector_file)) if vector_file else None,
            "layer": layer,
            "method": meta.get("method"),
            "model": meta.get("model"),
        },
        "direction": {
            "sha256": hashlib.sha256(unit.numpy().astype("<f4").tobytes()).hexdigest(),
            "norm": norm,
            "unit": [float(x) for x in unit],
        },
        "changed": changed,
        "untied_embeddings": untied,
        "steerlab_version": steerlab_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
