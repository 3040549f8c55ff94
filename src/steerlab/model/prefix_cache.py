"""Shared prompt prefixes: run each distinct prefix once, continue many rows from its KV cache.

Teacher-forced scoring asks the same question many times: both answers of a pair, every
coefficient of a sweep, every steering condition and random control. When nothing changes the
prompt's tokens before its last one (steering at ``response`` positions, docs/design.md §4, or none), their
keys and values are the same in every row, so :class:`PrefixCache` computes them once per distinct
prefix (one forward pass, left-padded, ``use_cache=True``) and :meth:`PrefixCache.continue_rows`
runs only each row's continuation — the last prompt token and the response — attending to the
cached prefix. Results equal a full forward of the whole sequence to float rounding (tested on
every tiny architecture).

Layout of one continuation batch of ``b`` rows, prefix width ``P`` and continuation width ``S``::

    attention_mask = [prefix mask (left-padded) | continuation mask (right-padded)]   [b, P + S]
    position_ids   = prefix length of the row + 0..S-1                                 [b, S]

so every token keeps the position it has in the unpadded sequence (docs/design.md §3).

Steering at layer L leaves blocks 0..L-1 as they are, so when every row of a batch is steered at
layer L or later, :func:`skipped_blocks` replaces blocks 0..L-1 by the hidden state they would
produce (computed once per sequence, unsteered): the batch runs blocks L..end only. Their KV cache
entries for the continuation are not needed, since later blocks attend through their own caches.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .batching import attention_mask, pad_sequences
from .blocks import unwrap_model
from .hooks import input_hook, installed_hooks
from .loading import LoadedModel

# Distinct prefixes whose KV caches are held at once (see :func:`shared_prefixes`).
PREFIX_GROUP = 256


@dataclass
class PrefixCache:
    """The KV cache of ``U`` distinct prefixes, built by :meth:`build`.

    ``cache``: transformers ``Cache`` with batch ``U``; ``mask``: ``[U, P]`` long, left-padded;
    ``lengths``: ``[U]`` tokens per prefix (each >= 1).
    """

    cache: Any
    mask: torch.Tensor
    lengths: torch.Tensor

    @classmethod
    def build(cls, lm: LoadedModel, prefixes: Sequence[Sequence[int]]) -> PrefixCache | None:
        """One forward pass over the left-padded ``prefixes`` (token ids, each non-empty) with
        ``use_cache=True``. Returns None for a model whose cache is not made of plain key/value
        layers (:func:`selectable`): such models are scored by full passes."""
        lengths = [len(p) for p in prefixes]
        ids = pad_sequences(prefixes, lm.tokenizer.pad_token_id or 0, "left").to(lm.device)
        mask = attention_mask(lengths).to(lm.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with packed_logits(lm, torch.zeros_like(mask, dtype=torch.bool)), torch.inference_mode():
            out = lm.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache = getattr(out, cache_argument(lm), None)
        if not selectable(cache):
            return None
        return cls(cache, mask, torch.tensor(lengths, device=lm.device))

    def select(self, which: torch.Tensor) -> Any:
        """A transformers ``Cache`` holding prefixes ``which`` (``[b]`` indices, repeats allowed) as
        its rows, to pass (as :func:`cache_argument`) to a forward that continues them; the shared cache is left as
        it is (the per-layer objects are copied, not their tensors)."""
        # CPU indices select rows of tensors on any device (layers may sit on several GPUs).
        return _rows_of(self.cache, torch.as_tensor(which, dtype=torch.long, device="cpu"))

    def continue_rows(
        self,
        lm: LoadedModel,
        which: torch.Tensor,
        continuations: Sequence[Sequence[int]],
        keep: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``continuations[i]`` (token ids) after prefix ``which[i]``; returns ``(logits, mask)``:
        logits ``[b, S, vocab]`` at every continuation position (or, with ``keep`` ``[b, S]`` bool,
        ``[n_kept, vocab]`` at the kept positions in row-major order, see :func:`packed_logits`) and
        the continuation mask ``[b, S]`` (right-padded: 1 on tokens). The shared cache is not
        modified (rows are selected into a copy)."""
        which = torch.as_tensor(which, dtype=torch.long, device="cpu")
        cache = self.select(which)
        ids = pad_sequences(continuations, lm.tokenizer.pad_token_id or 0, "right").to(lm.device)
        tail = attention_mask([len(c) for c in continuations], side="right").to(lm.device)
        full_mask = torch.cat([self.mask[which], tail], dim=1)
        positions = self.lengths[which][:, None] + torch.arange(ids.shape[1], device=lm.device)[None, :]
        # Padding (masked out) gets position 0, so no row's padding reaches past the model's positions.
        positions = torch.where(tail.bool(), positions, 0)
        packing = packed_logits(lm, keep) if keep is not None else contextlib.nullcontext()
        with packing, torch.inference_mode():
            logits = lm.model(
                input_ids=ids,
                attention_mask=full_mask,
                position_ids=positions,
                use_cache=True,
                **{cache_argument(lm): cache},
            ).logits
        return (logits[0] if keep is not None else logits), tail


def cache_argument(lm: LoadedModel) -> str:
    """The name under which the model's forward takes, and its output returns, the KV cache:
    ``past_key_values`` (transformers up to 5.20 at least) or ``cache`` (later releases renamed it)."""
    forward = inspect.signature(type(unwrap_model(lm.model)).forward).parameters
    return "cache" if "cache" in forward and "past_key_values" not in forward else "past_key_values"


def can_share_prompts(lm: LoadedModel, prompt_lens: Sequence[int]) -> bool:
    """Whether rows with these prompt lengths may continue from shared prompt caches on ``lm``: every
    prompt leaves a prefix (2 tokens or more), and no steerlab hook (an outer steerer) is on the
    model, which would see the prompt pass and the continuations apart."""
    return min(prompt_lens) > 1 and not installed_hooks(lm.model)


def selectable(cache: Any) -> bool:
    """Whether ``cache`` is a transformers ``Cache`` whose every layer is a plain (or sliding-window)
    key/value layer, so selecting rows selects everything it holds. Linear-attention and other
    state layers, quantized or offloaded caches are not: their models use whole sequences."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    layers = getattr(cache, "layers", None)
    return (
        isinstance(layers, list)
        and bool(layers)
        and not getattr(cache, "offloading", False)
        and all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)
    )


def can_skip_blocks(lm: LoadedModel) -> bool:
    """Whether :func:`skipped_blocks` is exact for ``lm``: not when later layers read earlier layers'
    keys and values (KV sharing across layers, e.g. Gemma 3n), which skipped blocks would not write."""
    config = unwrap_model(lm.model).config
    text = getattr(config, "get_text_config", lambda: config)()
    return not (getattr(text, "num_kv_shared_layers", 0) or 0)


def shared_prefixes(
    lm: LoadedModel, prefixes: Sequence[Sequence[int]], group: int | None = None
) -> Iterator[tuple[PrefixCache | None, list[int], list[int]]]:
    """Rows grouped by their prefix: yields ``(cache, rows, which)`` per group of at most ``group``
    distinct prefixes (at most :data:`PREFIX_GROUP`; callers pass their batch size, so a prompt pass
    is one batch), shortest prefixes first, where ``rows`` are indices into ``prefixes``
    and ``which[j]`` is the index of row ``rows[j]``'s prefix in ``cache``. ``cache`` is None for a
    model without a selectable KV cache (the caller then runs whole sequences). Groups bound the
    memory of cached prefixes."""
    group = min(group or PREFIX_GROUP, PREFIX_GROUP)
    index: dict[tuple[int, ...], int] = {}
    of = [index.setdefault(tuple(p), len(index)) for p in prefixes]
    distinct = list(index)
    order = sorted(range(len(distinct)), key=lambda u: len(distinct[u]))  # similar lengths side by side
    rank = {u: r for r, u in enumerate(order)}
    for first in range(0, len(order), group):
        cache = PrefixCache.build(lm, [distinct[u] for u in order[first : first + group]])
        rows = [i for i, u in enumerate(of) if first <= rank[u] < first + group]
        yield cache, rows, [rank[of[i]] - first for i in rows]


def packed_logits(lm: LoadedModel, keep: torch.Tensor) -> contextlib.AbstractContextManager[None]:
    """Context manager: the LM head of ``lm`` reads only the positions where ``keep`` (``[b, T]`` bool,
    for a forward over ``[b, T]`` tokens) is True, packed into one row, so the forward returns
    logits ``[1, keep.sum(), vocab]`` and no head work is spent on padding or unneeded positions.
    What the model does after its head (e.g. Gemma 2's logit soft-capping) is elementwise and
    unchanged."""
    head = unwrap_model(lm.model).get_output_embeddings()

    def pack(_module: Any, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
        hidden = inputs[0]
        return (hidden[keep.to(hidden.device)][None], *inputs[1:])

    return input_hook(head, pack)


def _rows_of(cache: Any, which: torch.Tensor) -> Any:
    """A cache holding rows ``which`` of ``cache`` (repeats allowed), leaving ``cache`` untouched:
    the per-layer objects are copied (selection assigns new tensors to them), not their tensors."""
    layers = getattr(cache, "layers", None)
    if isinstance(layers, list):
        rows = copy.copy(cache)
        rows.layers = [copy.copy(layer) for layer in layers]
    else:  # another Cache layout: copy it whole
        rows = copy.deepcopy(cache)
    rows.batch_select_indices(which)
    return rows


@contextlib.contextmanager
def skipped_blocks(lm: LoadedModel, n_blocks: int, hidden: torch.Tensor) -> Iterator[None]:
    """Within this block, forward passes of ``lm`` skip decoder blocks ``0..n_blocks-1``: block 0
    returns ``hidden`` (``[batch, seq, d_model]``, the output of block ``n_blocks - 1`` for the batch
    that will run) and the others pass their input through. Restored on every exit path.

    Only for blocks that return the hidden state itself (transformers >= 5 decoder layers); callers
    check :func:`returns_hidden_only` on a real pass first. ``n_blocks`` 0 changes nothing.
    """
    blocks = list(lm.blocks)[:n_blocks]
    saved = [block.__dict__.get("forward") for block in blocks]

    def first(*_args: Any, **_kwargs: Any) -> torch.Tensor:
        return hidden

    def through(*args: Any, **kwargs: Any) -> torch.Tensor:
        return args[0] if args else kwargs["hidden_states"]

    try:
        for i, block in enumerate(blocks):
            block.forward = first if i == 0 else through
        yield
    finally:
        for block, forward in zip(blocks, saved, strict=True):
            if forward is None:
                block.__dict__.pop("forward", None)
            else:
                block.forward = forward


def returns_hidden_only(output: Any) -> bool:
    """Whether a decoder block's output is the hidden state tensor itself (not a tuple), which
    :func:`skipped_blocks` needs."""
    return isinstance(output, torch.Tensor)
