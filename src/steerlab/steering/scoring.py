"""Teacher-forced response log-likelihoods, under steering, as rows of shared batches.

:func:`response_logprobs` is the one place steerlab scores given answers: the behaviour margin, its
sweeps, the random-direction controls and the prompting baseline all call it. Two ways, one result:

- **Shared prompt** (every steering spec acts at ``response`` positions, or there is none): the
  prompt tokens before the last one are unsteered at every layer, so their keys and values are
  computed once per distinct prompt (:class:`steerlab.model.prefix_cache.PrefixCache`) and each row
  runs only its last prompt token and its answer. Both answers of a pair, every coefficient and
  every condition of a study share one prompt pass.
- **Full sequences** (``all`` or ``prompt`` positions steer the prompt itself, or a model without a
  selectable KV cache): left-padded batches of whole sequences, only the response's logits kept.

The two agree to float rounding (tests compare them on every tiny architecture, steered and not).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..activations.capture import ChatSample, encode_samples
from ..errors import SteerlabError
from ..model.batching import Batch, collate
from ..model.chat import EncodedChat
from ..model.hooks import output_hooks
from ..model.loading import LoadedModel
from ..model.prefix_cache import (
    PrefixCache,
    can_share_prompts,
    can_skip_blocks,
    packed_logits,
    returns_hidden_only,
    shared_prefixes,
    skipped_blocks,
)
from ..progress import progress_bar
from .conditions import gate_samples, resolve_conditions
from .operators import row_mask
from .steerer import SteeringSpec, steer


def response_logprobs(
    lm: LoadedModel,
    samples: Sequence[ChatSample],
    steering: Sequence[SteeringSpec] = (),
    row_coeffs: Sequence[float] | None = None,
    batch_size: int = 16,
    reference_norms: torch.Tensor | None = None,
    share_prompts: bool = True,
) -> torch.Tensor:
    """Mean log p(response token | prefix) per sample, ``[n_samples]`` float64 (teacher-forced,
    nats/token).

    With ``row_coeffs`` (one per sample), every steering spec uses that sample's coefficient. A spec's
    own per-row coefficients and ``rows`` (a mask over, or indices into, ``samples``) are honoured,
    so several conditions run as rows of shared batches. ``share_prompts`` (default) computes each
    distinct prompt once when no spec steers the prompt (module docstring); False forces full
    sequences, as does a steerlab hook already on the model (an outer steerer). Hooks of your own on
    the model's modules see the prompt pass and the continuations separately, and none on skipped
    blocks: pass ``share_prompts=False`` to keep whole forward passes. ``batch_size`` is rows per
    forward pass (and distinct prompts per prompt pass). A spec with a ``condition`` acts only on
    samples whose prompt (without the response) passes it (:mod:`steerlab.steering.conditions`).
    Raises SteerlabError for no samples, a batch size below 1, an empty prompt or response, or
    steering (or a condition) that does not fit the model.
    """
    if not samples:
        raise SteerlabError("no samples given")
    if batch_size < 1:
        raise SteerlabError(f"--batch-size {batch_size}: expected at least 1")
    if row_coeffs is not None:
        coeffs = torch.as_tensor(row_coeffs, dtype=torch.float32)
        steering = [s.with_coeff(coeffs) for s in steering]
    encoded = encode_samples(lm, samples, need_response=True)
    steering = resolve_conditions(lm, steering, gate_samples(samples), batch_size)
    # Not under another steerer: its hooks would see the prompt pass and the continuations apart.
    if (
        share_prompts
        and all(s.positions == "response" for s in steering)
        and can_share_prompts(lm, [e.prompt_len for e in encoded])
    ):
        out = _shared_prompt_logprobs(lm, encoded, steering, batch_size, reference_norms)
        if out is not None:
            return out
    return _full_logprobs(lm, encoded, steering, batch_size, reference_norms)


def _full_logprobs(
    lm: LoadedModel,
    encoded: list[EncodedChat],
    steering: Sequence[SteeringSpec],
    batch_size: int,
    reference_norms: torch.Tensor | None,
) -> torch.Tensor:
    out = torch.empty(len(encoded), dtype=torch.float64)
    with progress_bar("log-likelihoods", len(encoded)) as advance:
        for idx, batch in _condition_batches(encoded, steering, batch_size, lm):
            specs = _active_specs(steering, idx, len(encoded))
            response_start = batch.pads + batch.prompt_lens
            # The LM head reads only the positions that predict a response token (from the last prompt token on).
            pos = torch.arange(batch.width, device=batch.input_ids.device)[None, :]
            keep = (pos >= response_start[:, None] - 1) & (pos < batch.width - 1)
            steerer = steer(lm, specs, reference_norms)
            with steerer, steerer.teacher_forcing(response_start), packed_logits(lm, keep), torch.inference_mode():
                logits = lm.model(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids(),
                    use_cache=False,
                ).logits[0]
            out[idx] = _mean_logp(logits, batch.input_ids[:, 1:][keep[:, :-1]], keep)
            advance(len(idx))
    return out


def _shared_prompt_logprobs(
    lm: LoadedModel,
    encoded: list[EncodedChat],
    steering: Sequence[SteeringSpec],
    batch_size: int,
    reference_norms: torch.Tensor | None,
) -> torch.Tensor | None:
    """Rows continue from the KV cache of their prompt minus its last token, and a batch whose rows
    are all steered at layer L or later starts at block L from the unsteered block outputs (computed
    once per distinct sequence). None when the model has no selectable cache (the caller then runs
    full sequences)."""
    out = torch.empty(len(encoded), dtype=torch.float64)
    # A row's input: the last prompt token, then the response but its last token (which predicts
    # nothing scored and which no other token attends to); it predicts every response token.
    tails = [e.ids[e.prompt_len - 1 : -1] for e in encoded]
    targets = [e.ids[e.prompt_len :] for e in encoded]
    signatures = _signatures(steering, len(encoded))
    with progress_bar("log-likelihoods", len(encoded)) as advance:
        for cache, rows, prompt_index in shared_prefixes(lm, [e.ids[: e.prompt_len - 1] for e in encoded], batch_size):
            if cache is None:
                return None
            which = dict(zip(rows, prompt_index, strict=True))
            batches = []
            for idx in _ordered_chunks(rows, signatures, [len(t) for t in tails], batch_size):
                steerer = steer(lm, _active_specs(steering, idx, len(encoded)), reference_norms)
                batches.append((idx, steerer, min((iv.layer for iv in steerer.interventions), default=0)))
            needed = {layer - 1 for _, _, layer in batches if layer > 0}
            states = _block_outputs(lm, cache, prompt_index, [tails[i] for i in rows], needed, batch_size)
            for idx, steerer, layer in batches:
                rows_of = torch.tensor([which[i] for i in idx])
                skip = layer if states is not None and layer > 0 else 0
                skipping = (
                    skipped_blocks(lm, skip, _stack([states[(which[i], tuple(tails[i]))][skip - 1] for i in idx]))
                    if skip
                    else contextlib.nullcontext()
                )
                # Continuation coordinates: column 0 is the last prompt token, so the response starts at 1.
                starts = torch.ones(len(idx), dtype=torch.long, device=lm.device)
                # Position j predicts response token j; the head reads the rows' real positions only.
                lengths = torch.tensor([len(tails[i]) for i in idx], device=lm.device)
                keep = torch.arange(int(lengths.max()), device=lm.device)[None, :] < lengths[:, None]
                with skipping, steerer, steerer.teacher_forcing(starts):
                    logits, _ = cache.continue_rows(lm, rows_of, [tails[i] for i in idx], keep)
                target = torch.tensor([t for i in idx for t in targets[i]], device=lm.device)
                out[idx] = _mean_logp(logits, target, keep)
                advance(len(idx))
    return out


Sequences = dict[tuple[int, tuple[int, ...]], dict[int, torch.Tensor]]  # (prompt, tail) -> {layer: [len, d]}


class _Enough(Exception):
    """Raised after the last block whose output is recorded."""


def _block_outputs(
    lm: LoadedModel,
    cache: PrefixCache,
    which: Sequence[int],
    tails: Sequence[Sequence[int]],
    layers: set[int],
    batch_size: int,
) -> Sequences | None:
    """Unsteered outputs of blocks ``layers`` over each distinct continuation: ``{(prompt, tail):
    {layer: [len(tail), d_model]}}``; None when blocks do not return a plain hidden state (no
    block is skipped then) or nothing is needed."""
    if not layers or not can_skip_blocks(lm):
        return None
    distinct = list(dict.fromkeys(zip(which, map(tuple, tails), strict=True)))
    states: Sequences = {key: {} for key in distinct}
    outputs: dict[int, Any] = {}

    last = max(layers)

    def record(layer: int):
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            outputs[layer] = output
            if layer == last:
                raise _Enough  # the blocks above and the LM head are not needed

        return hook

    for start in range(0, len(distinct), batch_size):
        keys = distinct[start : start + batch_size]
        try:
            with output_hooks((lm.blocks[layer], record(layer)) for layer in sorted(layers)):
                cache.continue_rows(lm, torch.tensor([k[0] for k in keys]), [list(k[1]) for k in keys])
        except _Enough:
            pass
        for layer, output in outputs.items():
            if not returns_hidden_only(output):
                return None
            for row, key in enumerate(keys):
                states[key][layer] = output[row, : len(key[1])].clone()  # not a view of the whole batch
    return states


def _stack(states: Sequence[torch.Tensor]) -> torch.Tensor:
    """Right-pad ``[len_i, d]`` block outputs into ``[b, max len, d]`` (zeros on padding)."""
    return torch.nn.utils.rnn.pad_sequence(list(states), batch_first=True)


def _signatures(steering: Sequence[SteeringSpec], n_rows: int) -> list[tuple[int, ...]]:
    """Per row, the indices of the specs acting on it (a spec without ``rows`` acts on every row)."""
    if not steering:
        return [()] * n_rows
    masks = torch.stack(
        [torch.ones(n_rows, dtype=torch.bool) if s.rows is None else row_mask(s.rows, n_rows) for s in steering]
    )
    return [tuple(torch.nonzero(column).flatten().tolist()) for column in masks.T]


def _ordered_chunks(
    rows: Sequence[int], signatures: Sequence[tuple[int, ...]], lengths: Sequence[int], batch_size: int
) -> list[list[int]]:
    """``rows`` in batches of ``batch_size``, ordered by the specs acting on them, then by length:
    a batch then holds few conditions (few hooks to run) and little padding."""
    if batch_size < 1:
        raise SteerlabError(f"--batch-size {batch_size}: expected at least 1")
    order = sorted(rows, key=lambda i: (signatures[i], lengths[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _condition_batches(
    encoded: list[EncodedChat], steering: Sequence[SteeringSpec], batch_size: int, lm: LoadedModel
) -> Iterator[tuple[list[int], Batch]]:
    for idx in _ordered_chunks(
        range(len(encoded)), _signatures(steering, len(encoded)), [len(e.ids) for e in encoded], batch_size
    ):
        yield idx, collate([encoded[i] for i in idx], lm.tokenizer.pad_token_id, lm.device)


def _active_specs(steering: Sequence[SteeringSpec], idx: Sequence[int], n_rows: int) -> list[SteeringSpec]:
    """The specs for a batch of rows ``idx``, leaving out those acting on none of them."""
    specs = [s.select_rows(idx, n_rows) for s in steering]
    return [s for s in specs if s.rows is None or bool(row_mask(s.rows, len(idx)).any())]


def _mean_logp(logits: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per row, the mean log p(target) over its kept positions: ``logits`` ``[n, V]`` and ``target``
    ``[n]`` are packed in row-major order of ``keep`` (``[b, T]`` bool); returns ``[b]`` float64."""
    token_logp = -torch.nn.functional.cross_entropy(logits.float(), target, reduction="none")
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(keep.shape[0], dtype=torch.float64, device=logits.device)
    sums.index_add_(0, rows, token_logp.double())
    return (sums / keep.sum(-1)).cpu()
