"""Reference statistics measured on prompts (docs/design.md §4): mean residual norms (for scale ``relative``)
and percentiles of projections on a direction (for ``cap`` thresholds).

Layer L = output of decoder block L (``hidden_states[L + 1]``). Prompts (strings, message lists or
:class:`~steerlab.activations.capture.ChatSample`) go through the chat template as usual
(:func:`~steerlab.activations.capture.iter_batches`: left padding, attention mask); every non-pad
token of every prompt counts, chat-template tokens included. The model is read unsteered, unless the
caller wraps the call in a steerer.

A cap threshold τ from a percentile P is the P-th percentile of h·v̂ over those tokens at the layer,
interpolated linearly between order statistics (``torch.quantile``, numpy's default ``linear``
method): P=90 lets 10% of the reference tokens be clamped. Calibrating a cap on a percentile of
projections seen on ordinary prompts follows activation capping (Lu et al. 2026, "The Assistant
Axis", arXiv:2601.10387).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..activations.capture import ChatSample, iter_batches, run_block_hooks
from ..errors import SteerlabError
from ..model.chat import Prompt
from ..model.loading import LoadedModel
from ..vectors.vector import SteeringVector
from .steerer import SteeringSpec


def _as_samples(prompts: Sequence[Prompt | ChatSample]) -> list[ChatSample]:
    return [p if isinstance(p, ChatSample) else ChatSample(p) for p in prompts]


def mean_residual_norms(lm: LoadedModel, prompts: Sequence[Prompt | ChatSample], batch_size: int = 16) -> torch.Tensor:
    """Mean ‖h‖ (L2, activation units) over every non-pad token of the prompts, per layer:
    ``[n_layers]`` float32 (sums in float64), the reference norm of scale ``relative``.

    Raises SteerlabError for no prompts or an empty prompt.
    """
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


def layer_projections(
    lm: LoadedModel,
    prompts: Sequence[Prompt | ChatSample],
    directions: Mapping[int, torch.Tensor],
    batch_size: int = 16,
) -> dict[int, torch.Tensor]:
    """h·v̂_L at each layer L of ``directions`` (``{layer: v_L [d_model]}``) for every non-pad token
    of the prompts: ``{layer: [n_tokens]}`` float32, in batch order, one forward pass per batch.

    Raises SteerlabError for a layer out of range, a direction of the wrong width or zero, no
    prompts, or an empty prompt.
    """
    units: dict[int, torch.Tensor] = {}
    for layer, vector in directions.items():
        layer = lm.check_layer(layer)
        v = torch.as_tensor(vector).float().reshape(-1)
        if v.numel() != lm.d_model:
            raise SteerlabError(f"layer {layer}: vector d_model {v.numel()} does not match {lm.name}'s {lm.d_model}")
        if float(v.norm()) == 0:
            raise SteerlabError(f"layer {layer}: zero vector has no direction to project on")
        units[layer] = v / v.norm()
    values: dict[int, list[torch.Tensor]] = {layer: [] for layer in units}
    for _, batch in iter_batches(lm, _as_samples(prompts), batch_size, description="projections"):
        mask = batch.attention_mask.bool()

        def on_hidden(layer: int, hidden: torch.Tensor, mask=mask) -> None:
            values[layer].append((hidden @ units[layer].to(hidden.device))[mask.to(hidden.device)].cpu())

        run_block_hooks(lm, batch, sorted(units), on_hidden)
    return {layer: torch.cat(chunks) for layer, chunks in values.items()}


def percentile_of(values: torch.Tensor, q: float, flag: str = "--cap-percentile") -> float:
    """The ``q``-th percentile (0-100) of a flat tensor, interpolated linearly between order
    statistics (``torch.quantile``; numpy's default). Raises SteerlabError naming ``flag`` for ``q``
    outside 0..100 or no values."""
    if not 0 <= q <= 100:
        raise SteerlabError(f"{flag} {q}: expected a number in 0..100")
    if values.numel() == 0:
        raise SteerlabError(f"{flag}: no projections to take a percentile of")
    return float(torch.quantile(values.double(), q / 100.0))


def cap_threshold(
    lm: LoadedModel,
    vector: SteeringVector | torch.Tensor,
    layer: int,
    prompts: Sequence[Prompt | ChatSample],
    percentile: float,
    batch_size: int = 16,
) -> float:
    """The cap threshold τ at ``layer`` from a percentile: the ``percentile`` (0-100) of h·v̂ over
    every token of the reference ``prompts`` (activation units). ``vector`` is a SteeringVector
    (its row ``layer`` is used) or a 1-D ``[d_model]`` tensor.

    The value :meth:`SteeringSpec.calibrated` puts in ``ceiling``/``floor`` for that layer. Raises
    SteerlabError for a layer out of range, a vector that does not fit the model or is zero there,
    a percentile outside 0..100, or no prompts.
    """
    spec = SteeringSpec(vector, [layer], operator="cap", ceiling_percentile=percentile)
    (threshold,) = spec.calibrated(lm, prompts, batch_size).ceiling.values()
    return threshold
