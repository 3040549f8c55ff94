"""Reference statistics measured on prompts: mean residual norms (for scale ``relative``) and
percentiles of projections on a direction (for ``cap`` thresholds). Layer L = output of block L.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..activations.capture import ChatSample, iter_batches, run_block_hooks
from ..errors import SteerlabError
from ..model.loading import LoadedModel


def _as_samples(prompts: Sequence[str | ChatSample]) -> list[ChatSample]:
    return [p if isinstance(p, ChatSample) else ChatSample(p) for p in prompts]


def mean_residual_norms(
    lm: LoadedModel, prompts: Sequence[str | ChatSample], batch_size: int = 16
) -> torch.Tensor:
    """Mean ‖h‖ over every (non-pad) token of the prompts, per layer: ``[n_layers]``."""
    layers = list(range(lm.n_layers))
    total = torch.zeros(lm.n_layers, dtype=torch.float64)
    count = 0
    for _, batch in iter_batches(lm, _as_samples(prompts), batch_size, description="residual norms"):
        mask = batch.attention_mask.bool()

        def on_hidden(layer: int, hidden: torch.Tensor, mask=mask) -> None:
            total[layer] += hidden.norm(dim=-1)[mask.to(hidden.device)].double().sum().cpu()

        run_block_hooks(lm, batch, layers, on_hidden)
        count += int(mask.sum())
    return (total / count).float()


def projections(
    lm: LoadedModel, prompts: Sequence[str | ChatSample], vector: torch.Tensor, layer: int,
    batch_size: int = 16,
) -> torch.Tensor:
    """h·v̂ at ``layer`` for every (non-pad) token of the prompts, as a flat tensor."""
    layer = lm.check_layer(layer)
    vector = torch.as_tensor(vector).float().reshape(-1)
    if float(vector.norm()) == 0:
        raise SteerlabError(f"layer {layer}: zero vector has no direction to project on")
    unit = vector / vector.norm()
    values: list[torch.Tensor] = []
    for _, batch in iter_batches(lm, _as_samples(prompts), batch_size, description="projections"):
        mask = batch.attention_mask.bool()

        def on_hidden(_layer: int, hidden: torch.Tensor, mask=mask) -> None:
            values.append((hidden @ unit.to(hidden.device))[mask.to(hidden.device)].cpu())

        run_block_hooks(lm, batch, [layer], on_hidden)
    return torch.cat(values)


def projection_percentile(
    lm: LoadedModel, prompts: Sequence[str | ChatSample], vector: torch.Tensor, layer: int,
    percentile: float, batch_size: int = 16,
) -> float:
    """The ``percentile`` (0-100) of h·v̂ at ``layer`` over the prompts' tokens (cap threshold τ)."""
    if not 0 <= percentile <= 100:
        raise SteerlabError(f"--cap-percentile {percentile}: expected a number in 0..100")
    values = projections(lm, prompts, vector, layer, batch_size)
    return float(torch.quantile(values.double(), percentile / 100.0))
