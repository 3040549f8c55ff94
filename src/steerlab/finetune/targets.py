"""What LoRA adapts: the target modules inside the decoder blocks, the blocks, and the peft config.

LoRA (Hu et al. 2021, arXiv:2106.09685) adds a trainable low-rank update ``(alpha / r) * B @ A`` to
each targeted linear layer; peft's ``LoraConfig`` names the layers by their last name component.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ..errors import SteerlabError
from ..model.blocks import unwrap_model
from ..model.loading import LoadedModel
from .config import FinetuneConfig


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"  # GPT-2's transposed linear


def default_target_modules(lm: LoadedModel) -> list[str]:
    """Names (last component, sorted) of the linear layers inside decoder block 0: q/k/v/o and MLP
    projections for Llama-style models, c_attn/c_proj/c_fc for GPT-2, ...

    Raises:
        SteerlabError: block 0 holds no linear layer.
    """
    names = {name.rsplit(".", 1)[-1] for name, module in lm.blocks[0].named_modules() if _is_linear(module)}
    if not names:
        raise SteerlabError(
            f"{lm.name}: found no linear layers in decoder block 0; pass target_modules "
            "(--target-modules) naming the modules to adapt"
        )
    return sorted(names)


def resolve_target_modules(lm: LoadedModel, target_modules: str | Sequence[str] | None) -> list[str] | str:
    """The LoRA targets for ``lm``: None -> :func:`default_target_modules`; ``"all-linear"`` as is;
    a comma-separated string or a list -> the names, each checked to exist in the model.

    Raises:
        SteerlabError: an empty list, or names not found in the model (naming them and the
            available ones).
    """
    if target_modules is None:
        return default_target_modules(lm)
    if isinstance(target_modules, str):
        if target_modules.strip() == "all-linear":
            return "all-linear"
        target_modules = [t.strip() for t in target_modules.split(",") if t.strip()]
    targets = list(target_modules)
    if not targets:
        raise SteerlabError("--target-modules: empty; give module names (q_proj,v_proj) or all-linear")
    present = {name.rsplit(".", 1)[-1] for name, _ in unwrap_model(lm.model).named_modules()}
    missing = [t for t in targets if t not in present]
    if missing:
        raise SteerlabError(
            f"--target-modules: {', '.join(missing)} not found in {lm.name}; linear layers in its "
            f"blocks are {', '.join(default_target_modules(lm))}"
        )
    return targets


def resolve_layers(lm: LoadedModel, layers: Sequence[int] | None) -> list[int] | None:
    """The decoder blocks to adapt, sorted and de-duplicated (negative indices count from the end);
    None for all blocks.

    Raises:
        SteerlabError: a layer out of range (naming ``--layers``).
    """
    return sorted({lm.check_layer(L, "--layers") for L in layers}) if layers is not None else None


def lora_config(lm: LoadedModel, config: FinetuneConfig, targets: list[str] | str, layers: list[int] | None) -> Any:
    """The peft ``LoraConfig`` (causal LM, no bias training) with ``config``'s rank, alpha and dropout,
    adapting ``targets`` in ``layers`` (None: every block) of ``lm``; GPT-2's ``Conv1D`` layers get
    ``fan_in_fan_out``."""
    from peft import LoraConfig

    return LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
        layers_to_transform=layers,
        layers_pattern=lm.blocks_path.rsplit(".", 1)[-1] if layers is not None else None,
        fan_in_fan_out=any(type(m).__name__ == "Conv1D" for m in lm.blocks[0].modules()),
    )
