"""Loading models: the embedded default, Hugging Face ids or directories, GGUF files, PEFT adapters.

A model spec is one string: ``smollm2`` (embedded default), a Hugging Face id or local directory, a
``.gguf`` file, or any of these plus an adapter as ``BASE+ADAPTER_DIR``.
Default device/dtype: CUDA with bfloat16 where available (``device_map="auto"``), else CPU float32.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SteerlabError
from . import embedded
from .blocks import find_decoder_blocks, unwrap_model
from .chat import ensure_chat_template, has_system_role
from .layers import check_layer_index

log = logging.getLogger("steerlab")

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """The torch dtype for a ``--dtype`` value: a torch dtype as is; ``None``/``auto`` bfloat16 on
    CUDA (or ``device="auto"``) and float32 otherwise (docs/design.md §2); else one of float32/fp32,
    bfloat16/bf16, float16/fp16.

    Raises SteerlabError naming ``--dtype`` for any other string.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") or device == "auto" else torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise SteerlabError(f"--dtype {dtype!r}: expected one of {', '.join(_DTYPES)}") from None


def resolve_device(device: str | None) -> str:
    """The device for a ``--device`` value: ``None`` is ``auto`` (``device_map="auto"``) when CUDA is
    available, else ``cpu``; other values are returned as given.

    Raises SteerlabError naming ``--device`` for a ``cuda`` device on a machine without CUDA.
    """
    if device is None:
        return "auto" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SteerlabError(f"--device {device!r}: CUDA is not available on this machine")
    return device


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and decoder blocks.

    ``layer L`` is the output of decoder block ``L`` (0-based), i.e. ``hidden_states[L + 1]``.
    """

    model: nn.Module
    tokenizer: Any
    name: str
    blocks_path: str
    adapter: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def blocks(self) -> nn.ModuleList:
        """The decoder blocks (``nn.ModuleList``) found at ``blocks_path``; block L's output is layer L."""
        return find_decoder_blocks(self.model, self.blocks_path)[0]

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks; valid layers are ``0 .. n_layers - 1``."""
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        """Width of the residual stream (the input embeddings' size); a vector holds ``[d_model]`` per layer."""
        return unwrap_model(self.model).get_input_embeddings().weight.shape[-1]

    @property
    def device(self) -> torch.device:
        """Device of the input embeddings, where inputs go (with ``device_map="auto"`` blocks may sit elsewhere)."""
        return unwrap_model(self.model).get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights (of the input embeddings): float32 on CPU, bfloat16 on CUDA by default."""
        return unwrap_model(self.model).get_input_embeddings().weight.dtype

    @property
    def has_system_role(self) -> bool:
        """Whether the chat template renders a ``system`` message (else it is merged into the first user turn)."""
        return has_system_role(self.tokenizer)

    def check_layer(self, layer: int, flag: str = "--layer") -> int:
        """Validate a layer index (negative counts from the end); returns it non-negative.

        Raises SteerlabError naming ``flag`` when out of range (see :mod:`steerlab.model.layers`).
        """
        return check_layer_index(layer, self.n_layers, flag, self.name)

    def info(self) -> dict[str, Any]:
        """What was loaded, as a JSON-able dict (``steerlab info`` prints it): name, architecture,
        model_type, n_layers, d_model, dtype, device, blocks_path, chat_template (False when the
        fallback template is used), system_role, adapter, vocab_size."""
        config = unwrap_model(self.model).config
        return {
            "name": self.name,
            "architecture": (getattr(config, "architectures", None) or [type(unwrap_model(self.model)).__name__])[0],
            "model_type": getattr(config, "model_type", None),
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "blocks_path": self.blocks_path,
            "chat_template": bool(getattr(self.tokenizer, "chat_template", None))
            and not self.extra.get("fallback_template", False),
            "system_role": self.has_system_role,
            "adapter": self.adapter,
            "vocab_size": len(self.tokenizer),
        }


def prepare_tokenizer(tokenizer: Any) -> bool:
    """Left padding, a pad token, and a chat template (fallback if none). Returns fallback used."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return ensure_chat_template(tokenizer)


def wrap_model(
    model: nn.Module, tokenizer: Any = None, name: str | None = None, blocks_path: str | None = None
) -> LoadedModel:
    """Wrap an already loaded transformers model (and tokenizer) as a LoadedModel."""
    if isinstance(model, LoadedModel):
        return model
    _, path = find_decoder_blocks(model, blocks_path)
    fallback = prepare_tokenizer(tokenizer) if tokenizer is not None else False
    config = getattr(unwrap_model(model), "config", None)
    name = name or getattr(config, "name_or_path", None) or type(model).__name__
    return LoadedModel(model, tokenizer, name, path, extra={"fallback_template": fallback})


def _gguf_cache_dir(path: Path) -> Path:
    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return embedded.cache_dir() / "models" / f"{path.stem}-{key}"


def resolve_source(spec: str) -> str:
    """Map a model spec (``smollm2``, a ``.gguf`` file, a HF id or directory) to something
    ``from_pretrained`` (and vLLM) reads: the embedded model's and GGUF files' cached safetensors
    directories (converted once), other specs as they are. Raises SteerlabError for a missing GGUF file."""
    if spec == embedded.EMBEDDED_NAME:
        target = embedded.converted_dir()
        if not (target / "config.json").is_file():
            log.info("converting the embedded smollm2 GGUF to safetensors (once) ...")
        return str(embedded.ensure_converted())
    if spec.endswith(".gguf"):
        path = Path(spec)
        if not path.is_file():
            raise SteerlabError(f"model {spec!r}: GGUF file not found")
        target = _gguf_cache_dir(path)
        if not (target / "config.json").is_file():
            log.info("converting %s to safetensors in %s (once) ...", path, target)
            embedded.convert_gguf(path, target)
        return str(target)
    return spec


def load_tokenizer(spec: str) -> tuple[str, Any, bool]:
    """``(source, tokenizer, fallback)`` for a model spec without loading its weights: the source as
    :func:`resolve_source` gives it, the tokenizer prepared as :func:`load_model` prepares it (left
    padding, a pad token, a chat template) and whether the chat template is steerlab's fallback.
    Raises SteerlabError for an unknown model."""
    from transformers import AutoTokenizer

    if not spec or not spec.strip():
        raise SteerlabError("--model: empty model spec")
    source = resolve_source(spec)
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, KeyError) as exc:
        raise SteerlabError(
            f"unknown model {spec!r}: no tokenizer could be loaded from it ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]})"
        ) from None
    return source, tokenizer, prepare_tokenizer(tokenizer)


def load_model(
    spec: str,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    adapter: str | None = None,
    blocks_path: str | None = None,
) -> LoadedModel:
    """Load a causal LM by spec (see module docstring) in eval mode, tokenizer left-padded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not spec or not spec.strip():
        raise SteerlabError("--model: empty model spec")
    if "+" in spec and adapter is None:
        spec, adapter = spec.split("+", 1)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    source = resolve_source(spec)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if device == "auto":
        kwargs["device_map"] = "auto"
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        local = os.path.exists(spec)
        raise SteerlabError(
            f"unknown model {spec!r}: it is not 'smollm2', a .gguf file, "
            f"{'a loadable model directory' if local else 'an existing directory'} "
            f"or a reachable Hugging Face id ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from None
    if device != "auto":
        model.to(device)
    if adapter:
        model = _attach_adapter(model, adapter)
    model.eval()
    loaded = wrap_model(model, tokenizer, name=spec, blocks_path=blocks_path)
    loaded.adapter = adapter
    log.info(
        "loaded %s%s: %d layers, d_model %d, %s on %s",
        spec,
        f" + adapter {adapter}" if adapter else "",
        loaded.n_layers,
        loaded.d_model,
        str(loaded.dtype).removeprefix("torch."),
        loaded.device,
    )
    return loaded


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' progress bars (loading, writing shards) inside the block; steerlab logs
    what was loaded or written instead."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _attach_adapter(model: nn.Module, adapter: str) -> nn.Module:
    from peft import PeftModel

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise SteerlabError(f"--adapter {adapter!r}: no adapter_config.json in that directory")
    try:
        return PeftModel.from_pretrained(model, adapter, is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise SteerlabError(
            f"--adapter {adapter!r} does not fit this base model "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"
        ) from None
