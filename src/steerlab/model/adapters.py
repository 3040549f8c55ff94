"""PEFT adapters applied to a base model without merging, with a base pass that is the true base.

``attached_adapter(base, adapter_dir)`` yields the base model with the adapter applied, unmerged, as
an :class:`AdaptedModel`. Inside it, ``adapted.base_pass()`` (and ``adapted.model.disable_adapter()``,
which is routed to it) runs the **true base model**; on leaving, normally or by an exception, ``base``
is bit-identical to what it was: every parameter and buffer, requires_grad flags, train/eval flags
and the module tree (types and structure).

Why peft's own switches are not enough: ``disable_adapter()`` only turns the adapter layers off. An
adapter saved with ``bias="all"`` or ``"lora_only"`` (or with its embedding layers saved) carries
base tensors that loading writes **into the base model's tensors**, so the "disabled" pass is not
the base (logits off by ~0.7 on a tiny Qwen2) and ``unload()`` leaves them there; ``unload()`` also
puts the trained copy of every ``modules_to_save`` module into the base model.

Design: two views of one set of modules (no copy of the weights).

1. Before attaching: check the adapter's features against the verified ones (below); snapshot every
   module's attributes (its ``_parameters``/``_buffers``/``_modules`` dicts are copied: references,
   no tensor data), the train and requires_grad flags, and a copy of each base tensor the adapter's
   weight file names -- the only base tensors peft writes when it loads a supported adapter.
2. Attach with peft. Each base tensor peft overwrote is separated: the adapted view gets a new tensor
   holding the adapter's values, the base tensor gets its own values back. From then on nothing
   writes to the base model's tensors.
3. The modules whose attributes differ between the snapshot and the attached state (parents of
   wrapped modules, holders of separated tensors, the root's ``peft_config``) swap those attributes
   to switch views: ``base_pass()`` switches to the snapshot and back; leaving restores it for good.

The base pass thus runs the base model's own modules and tensors, untouched by construction.

Supported (each tested against merging the adapter into a separate copy of the base): peft types
LORA, ADALORA, IA3, LOHA, LOKR, VERA, OFT, LN_TUNING and TRAINABLE_TOKENS, with trained biases,
``modules_to_save``, ``trainable_token_indices`` (also on tied embeddings), ``layers_to_transform``,
rank/alpha patterns, DoRA, rsLoRA, ``lora_bias``, ``target_parameters`` and the initialisations that
leave the base weights alone. Refused with one :class:`SteerlabError` naming the adapter directory
and the feature: initialisations that rewrite the base weights when loaded (PiSSA, OLoRA, CorDA,
LoftQ, LoRA-GA, KaSA), ``layer_replication``, aLoRA, any other non-default feature not verified here,
adapter layers on a weight tied to another module (peft's merged and unmerged forms differ), and
every other peft type (prompt learning among them).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SteerlabError
from .loading import LoadedModel, _attach_adapter

SUPPORTED_TYPES = ("LORA", "ADALORA", "IA3", "LOHA", "LOKR", "VERA", "OFT", "LN_TUNING", "TRAINABLE_TOKENS")

# Fields that may take any value: where adapter layers go and how they compute, never the base weights.
_FREE_FIELDS = frozenset(
    {
        "auto_mapping",
        "base_model_name_or_path",
        "inference_mode",
        "peft_type",
        "peft_version",
        "revision",
        "task_type",
        "r",
        "target_modules",
        "exclude_modules",
        "lora_alpha",
        "alpha",
        "lora_dropout",
        "fan_in_fan_out",
        "bias",
        "use_rslora",
        "modules_to_save",
        "layers_to_transform",
        "layers_pattern",
        "rank_pattern",
        "alpha_pattern",
        "trainable_token_indices",
        "use_dora",
        "lora_bias",
        "target_parameters",
        "ensure_weight_tying",
        "runtime_config",
        "eva_config",
        "megatron_core",
        "qalora_group_size",
        "feedforward_modules",
        "init_ia3_weights",
        "rank_dropout",
        "module_dropout",
        "use_effective_conv2d",
        "decompose_both",
        "decompose_factor",
        "rank_dropout_scale",
        "init_weights",
        "target_r",
        "init_r",
        "tinit",
        "tfinal",
        "deltaT",
        "beta1",
        "beta2",
        "orth_reg_weight",
        "total_step",
        "projection_prng_key",
        "save_projection",
        "vera_dropout",
        "d_initial",
        "oft_block_size",
        "coft",
        "eps",
        "block_share",
        "use_cayley_neumann",
        "num_cayley_neumann_terms",
        "token_indices",
    }
)
_SAFE_INITS = (True, False, "gaussian", "orthogonal", "mica", "eva")
_REWRITES_BASE = (
    "it rewrites the base weights when the adapter is loaded (the adapter is relative to a residual base "
    "model); convert it to a plain LoRA first (peft: save_pretrained(..., "
    "path_initial_model_for_weight_conversion=...))"
)
_REASONS = {
    "init_lora_weights": _REWRITES_BASE,
    "kasa_config": "KaSA truncates the base weights when the adapter is loaded",
    "loftq_config": "LoftQ replaces the base weights by quantized ones",
    "layer_replication": "it stacks copies of decoder layers, so the fine-tuned model has more layers than the base",
    "alora_invocation_tokens": "aLoRA acts only after its invocation tokens, so it is not one fixed fine-tuned "
    "model (peft cannot merge it either)",
    "arrow_config": "Arrow routes each token among several adapters",
    "monteclora_config": "MonteCLoRA samples its adapter weights",
}
_MISSING = object()
_TREE = ("_parameters", "_buffers", "_modules")


@dataclass
class AdaptedModel(LoadedModel):
    """A :class:`LoadedModel` whose model is the base with a PEFT adapter applied (unmerged), made by
    :func:`attached_adapter`; :meth:`base_pass` runs the true base model."""

    views: _Views | None = field(default=None, repr=False)

    def base_pass(self) -> AbstractContextManager[None]:
        """A context in which the base model (``base.model`` of :func:`attached_adapter`) is exactly
        the base, with its own weights; the adapted view comes back on leaving, also by an exception.
        Raises SteerlabError after :func:`attached_adapter` has been left."""
        if self.views is None:
            raise SteerlabError(f"{self.name}: a base pass needs the adapter attached (inside attached_adapter)")
        return self.views.base_pass()


def check_adapter_features(adapter_dir: str | Path) -> Any:
    """Read ``adapter_dir/adapter_config.json`` and check that a model diff supports its features.

    Returns the peft config. Raises SteerlabError naming the directory and the feature for a peft type
    or a feature this module cannot apply with a true base pass (see the module docstring).
    """
    from peft import PeftConfig

    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise SteerlabError(f"--adapter {adapter_dir}: no adapter_config.json in that directory")
    try:
        config = PeftConfig.from_pretrained(str(adapter_dir))
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise SteerlabError(
            f"adapter {adapter_dir}: unreadable adapter_config.json ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]})"
        ) from None
    kind = str(getattr(config.peft_type, "value", config.peft_type))
    if kind not in SUPPORTED_TYPES:
        raise SteerlabError(
            f"adapter {adapter_dir}: peft type {kind} is not supported for a model diff (supported: "
            f"{', '.join(SUPPORTED_TYPES)})"
        )
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if f.name in _FREE_FIELDS or value == default or value is None:
            continue
        if f.name == "init_lora_weights" and any(value is v or value == v for v in _SAFE_INITS):
            continue
        reason = _REASONS.get(f.name, "steerlab has not verified that it leaves the base model intact")
        raise SteerlabError(f"adapter {adapter_dir}: {f.name}={value!r} is not supported for a model diff: {reason}")
    return config


@contextmanager
def attached_adapter(base: LoadedModel, adapter_dir: str | Path) -> Iterator[AdaptedModel]:
    """The base model with a PEFT adapter applied (not merged), as an :class:`AdaptedModel`.

    Inside the block ``base.model`` runs the fine-tuned model and ``adapted.base_pass()`` (or
    ``adapted.model.disable_adapter()``) the true base; on leaving, also by an exception, ``base`` is
    bit-identical to what it was (see the module docstring for how).

    Raises SteerlabError when ``base`` already carries an adapter, when the adapter does not fit the
    base model, or when it uses a feature that cannot be supported (naming the directory and feature).
    """
    from peft import PeftModel

    if isinstance(base.model, PeftModel):
        raise SteerlabError(
            f"the base model {base.name} already carries an adapter ({base.adapter}); load the base model without one"
        )
    check_adapter_features(adapter_dir)
    snapshot = _Snapshot(base.model, _adapter_tensor_names(adapter_dir))
    adapted = None
    try:
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
            warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
            peft_model = _attach_adapter(base.model, str(adapter_dir))
        peft_model.eval()
        _check_tied_targets(peft_model, snapshot, adapter_dir)
        adapted = AdaptedModel(
            peft_model,
            base.tokenizer,
            f"{base.name}+{adapter_dir}",
            base.blocks_path,
            adapter=str(adapter_dir),
            extra=dict(base.extra),
            views=snapshot.separate(peft_model),
        )
        peft_model.disable_adapter = adapted.base_pass  # peft's own keeps the adapter's biases and modules
        yield adapted
    finally:
        if adapted is not None:
            adapted.views = None
        snapshot.restore()


class _Snapshot:
    """The base model's state before attaching: module attributes, flags, and copies of the tensors
    the adapter file names (``[same shape]`` each)."""

    def __init__(self, model: nn.Module, tensor_names: set[str]) -> None:
        self.modules = list(model.modules())
        self.attrs = {id(m): _attributes(m) for m in self.modules}
        self.training = [(m, m.training) for m in self.modules]
        self.grad = [(p, p.requires_grad) for p in model.parameters()]
        self.copies: list[tuple[torch.Tensor, torch.Tensor]] = []
        for name in sorted(tensor_names):
            holder, _, key = name.rpartition(".")
            module = _submodule(model, holder)
            tensor = None if module is None else module._parameters.get(key, module._buffers.get(key))
            if tensor is not None:
                self.copies.append((tensor, tensor.detach().clone()))
        self.changed: dict[int, list[str]] | None = None

    def separate(self, adapted: nn.Module) -> _Views:
        """Give the adapted view its own copy of each base tensor peft overwrote, put the original
        values back, and return the two views of the modules that differ."""
        own: dict[int, torch.Tensor] = {}
        for tensor, original in self.copies:
            if not torch.equal(tensor, original):
                copy = tensor.detach().clone()
                own[id(tensor)] = nn.Parameter(copy, requires_grad=False) if isinstance(tensor, nn.Parameter) else copy
                with torch.no_grad():
                    tensor.copy_(original)
        for module in adapted.modules() if own else ():
            for slots in (module._parameters, module._buffers):
                for name, value in slots.items():
                    if value is not None and id(value) in own:
                        slots[name] = own[id(value)]
        self.copies = [(t, c) for t, c in self.copies if id(t) in own]  # the rest were never written
        self.changed = self._changed()
        modules = {id(m): m for m in self.modules}
        base = {i: {k: self.attrs[i].get(k, _MISSING) for k in keys} for i, keys in self.changed.items()}
        tuned = {i: {k: _attributes(modules[i]).get(k, _MISSING) for k in keys} for i, keys in self.changed.items()}
        return _Views(modules, base, tuned)

    def _changed(self) -> dict[int, list[str]]:
        changed = {}
        for module in self.modules:
            before, now = self.attrs[id(module)], _attributes(module)
            keys = [
                k for k in before.keys() | now.keys() if not _same(k, before.get(k, _MISSING), now.get(k, _MISSING))
            ]
            if keys:
                changed[id(module)] = keys
        return changed

    def restore(self) -> None:
        """Put every attribute peft changed, every flag and every tensor value back as it was."""
        changed = self.changed if self.changed is not None else self._changed()
        for module in self.modules:
            for key in changed.get(id(module), ()):
                _set(module, key, self.attrs[id(module)].get(key, _MISSING))
        for module, training in self.training:
            module.training = training
        for param, flag in self.grad:
            param.requires_grad_(flag)
        with torch.no_grad():
            for tensor, original in self.copies:
                if not torch.equal(tensor, original):
                    tensor.copy_(original)


@dataclass
class _Views:
    """The base and adapted values of the attributes that differ, per module id; the adapted view
    is shown until :meth:`base_pass`."""

    modules: dict[int, nn.Module]
    base: dict[int, dict[str, Any]]
    tuned: dict[int, dict[str, Any]]
    showing_base: bool = False

    def show(self, base: bool) -> None:
        """Show the base (``True``) or the adapted view; the view left keeps its current values."""
        if base == self.showing_base:
            return
        leaving, arriving = (self.tuned, self.base) if base else (self.base, self.tuned)
        for i, values in arriving.items():
            module = self.modules[i]
            for key, value in values.items():
                leaving[i][key] = module.__dict__.get(key, _MISSING)
                _set(module, key, value)
        self.showing_base = base

    @contextmanager
    def base_pass(self) -> Iterator[None]:
        """The base view within the block, the view shown before it after it (nesting is fine)."""
        was = self.showing_base
        self.show(base=True)
        try:
            yield
        finally:
            self.show(base=was)


def _attributes(module: nn.Module) -> dict[str, Any]:
    attrs = dict(vars(module))
    attrs.pop("training", None)
    for key in _TREE:
        attrs[key] = dict(attrs[key])
    return attrs


def _same(key: str, a: Any, b: Any) -> bool:
    if key in _TREE and isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(a[k] is b[k] for k in a)
    return a is b


def _set(module: nn.Module, key: str, value: Any) -> None:
    if value is _MISSING:
        module.__dict__.pop(key, None)
    else:
        module.__dict__[key] = value


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        return None


def _adapter_tensor_names(adapter_dir: str | Path) -> set[str]:
    """Names in the base model of the tensors in the adapter's weight file (``base_layer`` dropped):
    the candidates for base tensors that loading writes (trained biases, saved embedding layers)."""
    path = Path(adapter_dir)
    if (path / "adapter_model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(path / "adapter_model.safetensors"), "pt") as f:
            keys = list(f.keys())
    elif (path / "adapter_model.bin").is_file():
        keys = list(torch.load(path / "adapter_model.bin", map_location="cpu", weights_only=True))
    else:
        return set()
    return {k.removeprefix("base_model.model.").replace(".base_layer.", ".") for k in keys}


def _check_tied_targets(adapted: nn.Module, snapshot: _Snapshot, adapter_dir: str | Path) -> None:
    """Refuse adapter layers on a weight shared with another module (e.g. LoRA on tied embeddings):
    peft merges them into the one shared matrix, so its merged and unmerged models differ."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
    from peft.tuners.tuners_utils import BaseTunerLayer

    holders: dict[int, int] = {}  # id(parameter) -> number of modules holding it
    for module in snapshot.modules:
        for tensor in snapshot.attrs[id(module)]["_parameters"].values():
            if tensor is not None:
                holders[id(tensor)] = holders.get(id(tensor), 0) + 1
    for name, module in adapted.named_modules():
        if not isinstance(module, BaseTunerLayer) or isinstance(module, TrainableTokensLayer):
            continue
        layer = module.get_base_layer()
        for key, tensor in layer._parameters.items():
            if tensor is not None and holders.get(id(tensor), 0) > 1:
                raise SteerlabError(
                    f"adapter {adapter_dir}: adapter layers on {name.removeprefix('base_model.model.')}, "
                    f"whose {key} is tied to another module (tied embeddings), are not supported for a "
                    "model diff: peft merges them into the one shared matrix, so the fine-tuned model is "
                    "ambiguous"
                )


__all__ = ["SUPPORTED_TYPES", "AdaptedModel", "attached_adapter", "check_adapter_features"]
