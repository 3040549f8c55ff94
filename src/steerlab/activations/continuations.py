"""Activation capture from shared prompts: each distinct prompt runs once.

The reductions that read only the last prompt token and the response (``prompt_last``,
``response_avg``, ``first_k``) do not need the prompt's other tokens except as context. Samples that
share a prompt (both answers of a pair, several answers per question) therefore continue from one
KV cache of the prompt minus its last token (:func:`steerlab.model.prefix_cache.shared_prefixes`):
a row runs only its last prompt token and its response. In those continuation coordinates position
0 is the last prompt token and positions 1.. are the response. Results equal full sequences to float
rounding (tests compare them).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..model.chat import EncodedChat
from ..model.hooks import output_hooks
from ..model.loading import LoadedModel
from ..model.prefix_cache import shared_prefixes
from ..progress import progress_bar

if TYPE_CHECKING:
    from .capture import Reduction

CONTINUATION_REDUCTIONS = ("prompt_last", "response_avg", "first_k")


class _Stop(Exception):
    """Raised in the last needed block's hook: the rest of the forward is not needed."""


def continuation_weights(lengths: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Per-position weights ``[b, S]`` (rows sum to 1, or 0 for an empty response) over
    continuations of ``lengths[i]`` tokens (last prompt token + response), right-padded to
    ``S = max(lengths)``."""
    pos = torch.arange(int(lengths.max()), device=lengths.device)[None, :]
    n = lengths[:, None]
    if reduction.kind == "prompt_last":
        mask = pos == 0
    elif reduction.kind == "response_avg":
        mask = (pos >= 1) & (pos < n)
    else:
        mask = (pos >= 1) & (pos < torch.clamp(n, max=1 + reduction.k))
    weights = mask.float()
    return weights / weights.sum(-1, keepdim=True).clamp(min=1)


def iter_continuation_activations(
    lm: LoadedModel,
    encoded: Sequence[EncodedChat],
    reductions: Sequence[Reduction],
    layers: Sequence[int],
    batch_size: int,
    description: str,
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]] | None:
    """Batches ``(sample indices, {reduction: [b, len(layers), d_model]})`` as
    :func:`steerlab.activations.capture.iter_activations` yields them, from shared prompts; None
    when the model has no selectable KV cache (only the first group's prompt pass has run then).
    Prompts are grouped ``batch_size`` distinct prompts at a time, so one prompt pass and one
    group's cache are held at once."""
    groups = shared_prefixes(lm, [e.ids[: e.prompt_len - 1] for e in encoded], batch_size)
    first = next(groups)
    if first[0] is None:
        return None
    return _batches(lm, encoded, reductions, layers, batch_size, description, first, groups)


def _batches(
    lm: LoadedModel,
    encoded: Sequence[EncodedChat],
    reductions: Sequence[Reduction],
    layers: Sequence[int],
    batch_size: int,
    description: str,
    first: Any,
    rest: Iterator[Any],
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    tails = [e.ids[e.prompt_len - 1 :] for e in encoded]
    with progress_bar(description, len(encoded)) as advance:
        for cache, rows, which in itertools.chain([first], rest):  # lazily: one group's cache at a time
            prompt_of = dict(zip(rows, which, strict=True))
            order = sorted(rows, key=lambda i: len(tails[i]))
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                yield (
                    idx,
                    _reduce_batch(lm, cache, [prompt_of[i] for i in idx], [tails[i] for i in idx], reductions, layers),
                )
                advance(len(idx))


def _reduce_batch(
    lm: LoadedModel,
    cache: Any,
    which: list[int],
    tails: list[list[int]],
    reductions: Sequence[Reduction],
    layers: Sequence[int],
) -> dict[str, torch.Tensor]:
    """One continuation pass, stopped after the last needed block; ``{reduction: [b, len(layers), d]}``."""
    lengths = torch.tensor([len(t) for t in tails], device=lm.device)
    weights = {r.name: continuation_weights(lengths, r) for r in reductions}
    out = {r.name: torch.empty(len(tails), len(layers), lm.d_model) for r in reductions}
    tokens = (torch.arange(int(lengths.max()), device=lm.device)[None, :] < lengths[:, None])[..., None]
    slot = {layer: i for i, layer in enumerate(layers)}
    last = max(layers)

    def reduce(layer: int):
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden.float().masked_fill(~tokens.to(hidden.device), 0.0)
            for name, w in weights.items():
                out[name][:, slot[layer]] = torch.einsum("bt,btd->bd", w.to(hidden.device), hidden).cpu()
            if layer == last:
                raise _Stop

        return hook

    try:
        with output_hooks((lm.blocks[layer], reduce(layer)) for layer in layers):
            cache.continue_rows(lm, torch.tensor(which), tails)
    except _Stop:
        pass
    return out
