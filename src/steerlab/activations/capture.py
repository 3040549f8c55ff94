"""Activation capture: one batched forward pass captures every requested layer at once.

Layer L is the output of decoder block L (``hidden_states[L + 1]``). Each sequence is reduced
inside the block hooks to what is asked, so memory grows with batch x layers x d_model, never with
sequence length kept around or with the number of samples (for :func:`mean_activations`).

Reductions: ``prompt_last`` (last prompt token), ``prompt_avg`` (mean over prompt tokens),
``response_avg`` (mean over response tokens), ``first_k`` / ``first_k:K`` (mean over the first K
response tokens, default K=5), ``position:I`` (the token at 0-based position I of the sequence,
counted from its first real token, prompt and response alike; I=0 is the first token, e.g. BOS).
Sequences are left-padded with an attention mask and explicit position ids, so batched results
equal per-sample results. When every reduction reads only the last prompt token and the response,
samples that share a prompt run it once (:mod:`steerlab.activations.continuations`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ..errors import SteerlabError
from ..model.batching import Batch, collate
from ..model.chat import EncodedChat, Prompt, encode_chat
from ..model.hooks import output_hooks
from ..model.loading import LoadedModel
from ..model.prefix_cache import can_share_prompts
from ..progress import progress_bar
from .continuations import CONTINUATION_REDUCTIONS, iter_continuation_activations

REDUCTION_KINDS = ("prompt_last", "prompt_avg", "response_avg", "first_k", "position")
DEFAULT_FIRST_K = 5


@dataclass(frozen=True)
class Reduction:
    """How a sequence becomes one vector per layer; ``k`` is K for ``first_k`` and the token
    position I for ``position`` (unused otherwise)."""

    kind: str
    k: int = DEFAULT_FIRST_K

    @classmethod
    def parse(cls, spec: str | Reduction) -> Reduction:
        """``prompt_last``, ``prompt_avg``, ``response_avg``, ``first_k[:K]`` or ``position:I``."""
        if isinstance(spec, Reduction):
            return spec
        kind, _, k = spec.partition(":")
        if kind not in REDUCTION_KINDS or (k and kind not in ("first_k", "position")):
            raise SteerlabError(
                f"--reduction {spec!r}: expected one of prompt_last, prompt_avg, response_avg, "
                "first_k, first_k:K or position:I"
            )
        if kind == "position":
            if not k.isdigit():
                raise SteerlabError(f"--reduction {spec!r}: position:I needs a token position I >= 0")
            return cls(kind, int(k))
        if k and (not k.isdigit() or int(k) < 1):
            raise SteerlabError(f"--reduction {spec!r}: K must be a positive integer")
        return cls(kind, int(k) if k else DEFAULT_FIRST_K)

    @property
    def name(self) -> str:
        """The reduction as written in files and flags (``first_k:K``, ``position:I``)."""
        return f"{self.kind}:{self.k}" if self.kind in ("first_k", "position") else self.kind

    @property
    def needs_response(self) -> bool:
        """Whether the reduction reads response tokens (so samples need a response)."""
        return self.kind in ("response_avg", "first_k")


@dataclass(frozen=True)
class ChatSample:
    """A prompt (string or messages), an optional response to teacher-force, a system prompt.

    ``chat=False``: the prompt is plain text, tokenized as the tokenizer does for text (its special
    tokens, e.g. BOS, added; no chat template); such a sample has no response or system prompt.
    """

    prompt: Prompt
    response: str = ""
    system: str | None = None
    chat: bool = True


class _StopForward(Exception):
    """Raised in the last needed block's hook to skip the rest of the forward pass."""


def reduction_weights(batch: Batch, reduction: Reduction) -> torch.Tensor:
    """Per-token weights ``[b, T]`` (rows sum to 1) that implement a reduction on a batch."""
    width = batch.input_ids.shape[1]
    pos = torch.arange(width, device=batch.input_ids.device)[None, :]
    prompt_start = batch.pads[:, None]
    response_start = prompt_start + batch.prompt_lens[:, None]
    end = prompt_start + batch.lengths[:, None]
    if reduction.kind == "prompt_last":
        mask = pos == response_start - 1
    elif reduction.kind == "prompt_avg":
        mask = (pos >= prompt_start) & (pos < response_start)
    elif reduction.kind == "response_avg":
        mask = (pos >= response_start) & (pos < end)
    elif reduction.kind == "position":
        if bool((batch.lengths <= reduction.k).any()):
            raise SteerlabError(
                f"reduction {reduction.name}: a sequence has only {int(batch.lengths.min())} tokens, "
                f"so it has no token at position {reduction.k} (positions count from 0)"
            )
        mask = pos == prompt_start + reduction.k
    else:
        mask = (pos >= response_start) & (pos < torch.minimum(end, response_start + reduction.k))
    weights = mask.float()
    return weights / weights.sum(-1, keepdim=True).clamp(min=1)


def encode_samples(lm: LoadedModel, samples: Sequence[ChatSample], need_response: bool) -> list[EncodedChat]:
    """Render and tokenize every sample once through the chat template (``steerlab.model.chat``).

    Raises SteerlabError naming the sample for an empty prompt or, with ``need_response``, an
    empty response.
    """
    encoded = []
    for i, s in enumerate(samples):
        if not s.chat:
            if not isinstance(s.prompt, str) or s.response or s.system:
                raise SteerlabError(
                    f"sample {i}: a plain-text sample (chat=False) is one string, without response or system prompt"
                )
            ids = list(lm.tokenizer(s.prompt)["input_ids"])
            e = EncodedChat(ids, len(ids))
        else:
            e = encode_chat(lm.tokenizer, s.prompt, s.response, s.system)
        if need_response and e.response_len == 0:
            raise SteerlabError(f"sample {i}: a response reduction needs a non-empty response")
        if e.prompt_len == 0:
            raise SteerlabError(f"sample {i}: empty prompt")
        encoded.append(e)
    return encoded


def run_block_hooks(
    lm: LoadedModel,
    batch: Batch,
    layers: Sequence[int],
    on_hidden: Callable[[int, torch.Tensor], None],
) -> None:
    """One forward pass calling ``on_hidden(layer, hidden)`` with each requested block's output
    ``[batch, seq, d_model]`` (float32, padding zeroed), stopping after the last requested block (no
    LM head). The hooks are installed through :mod:`steerlab.model.hooks`: they see the block output
    after any steering active on it and are removed on every exit path."""
    token_mask = batch.attention_mask.bool()[..., None]
    last = max(layers)

    def make_hook(layer: int):
        def hook(_module, _inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            on_hidden(layer, hidden.float().masked_fill(~token_mask.to(hidden.device), 0.0))
            if layer == last:
                raise _StopForward

        return hook

    blocks = lm.blocks
    try:
        with output_hooks((blocks[layer], make_hook(layer)) for layer in layers), torch.inference_mode():
            lm.model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids(),
                use_cache=False,
            )
    except _StopForward:
        pass


def forward_batch(
    lm: LoadedModel, batch: Batch, reductions: Sequence[Reduction], layers: Sequence[int]
) -> dict[str, torch.Tensor]:
    """One forward pass; returns ``{reduction name: [b, len(layers), d_model]}`` in float32."""
    weights = {r.name: reduction_weights(batch, r) for r in reductions}
    out = {r.name: torch.empty(len(batch.lengths), len(layers), lm.d_model) for r in reductions}
    slot = {layer: i for i, layer in enumerate(layers)}

    def reduce(layer: int, hidden: torch.Tensor) -> None:
        for name, w in weights.items():
            out[name][:, slot[layer]] = torch.einsum("bt,btd->bd", w.to(hidden.device), hidden).cpu()

    run_block_hooks(lm, batch, layers, reduce)
    return out


def length_sorted_batches(
    encoded: Sequence[EncodedChat],
    indices: Sequence[int],
    batch_size: int,
    pad_id: int | None,
    device: torch.device,
) -> Iterator[tuple[list[int], Batch]]:
    """Yield ``(indices of the rows, left-padded Batch)`` over ``encoded[i] for i in indices``,
    shortest first (less padding), ``batch_size`` rows at a time."""
    if batch_size < 1:
        raise SteerlabError(f"--batch-size {batch_size}: expected at least 1")
    order = sorted(indices, key=lambda i: len(encoded[i].ids))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield idx, collate([encoded[i] for i in idx], pad_id, device)


def iter_batches(
    lm: LoadedModel,
    samples: Sequence[ChatSample],
    batch_size: int,
    need_response: bool = False,
    description: str = "forward",
) -> Iterator[tuple[list[int], Batch]]:
    """Encode samples and yield left-padded batches in length order, with their sample indices.

    Raises SteerlabError for no samples, an empty prompt, or (``need_response``) an empty response.
    """
    if not samples:
        raise SteerlabError("no samples given")
    yield from _encoded_batches(lm, encode_samples(lm, samples, need_response), batch_size, description)


def _encoded_batches(
    lm: LoadedModel, encoded: Sequence[EncodedChat], batch_size: int, description: str
) -> Iterator[tuple[list[int], Batch]]:
    with progress_bar(description, len(encoded)) as advance:
        for idx, batch in length_sorted_batches(
            encoded, range(len(encoded)), batch_size, lm.tokenizer.pad_token_id, lm.device
        ):
            yield idx, batch
            advance(len(idx))


def iter_activations(
    lm: LoadedModel,
    samples: Sequence[ChatSample],
    reductions: Sequence[str | Reduction] = ("response_avg",),
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    description: str = "capturing activations",
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Yield ``(sample indices, {reduction: [b, n_layers_selected, d]})`` batch by batch.

    Samples are batched in order of length (less padding); indices map rows back to ``samples``.
    """
    parsed = [Reduction.parse(r) for r in reductions]
    layers = list(range(lm.n_layers)) if layers is None else [lm.check_layer(L) for L in layers]
    need_response = any(r.needs_response for r in parsed)
    if not samples:
        raise SteerlabError("no samples given")
    if batch_size < 1:
        raise SteerlabError(f"--batch-size {batch_size}: expected at least 1")
    encoded = encode_samples(lm, samples, need_response)
    # Reductions of the last prompt token and the response: each distinct prompt runs once
    # (steerlab.activations.continuations).
    if all(r.kind in CONTINUATION_REDUCTIONS for r in parsed) and can_share_prompts(
        lm, [e.prompt_len for e in encoded]
    ):
        batches = iter_continuation_activations(lm, encoded, parsed, layers, batch_size, description)
        if batches is not None:
            yield from batches
            return
    for idx, batch in _encoded_batches(lm, encoded, batch_size, description):
        yield idx, forward_batch(lm, batch, parsed, layers)


def capture(
    lm: LoadedModel,
    samples: Sequence[ChatSample],
    reductions: Sequence[str | Reduction] = ("response_avg",),
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
) -> dict[str, torch.Tensor]:
    """Per-sample activations: ``{reduction name: [n_samples, len(layers), d_model]}`` float32.

    Row i is ``samples[i]`` (batches run in length order and are put back); column j is
    ``layers[j]`` (default: every layer, 0..n_layers-1), the output of decoder block ``layers[j]``
    (``hidden_states[layers[j] + 1]``). Reductions as in the module docstring; names are
    :attr:`Reduction.name` (``first_k:5``, ``position:0``). Batched results equal per-sample results
    (fp32, 1e-5). Memory holds the result plus one batch: ``batch x len(layers) x d_model`` per
    reduction.

    Reductions of the last prompt token and the response run each distinct prompt once
    (:mod:`steerlab.activations.continuations`); hooks of your own on the model's modules then see
    the prompt pass and the continuations separately (a steerlab steerer active on the model keeps
    whole sequences).

    Raises SteerlabError for no samples, an empty prompt, an empty response with a response
    reduction, an unknown reduction, a layer out of range, or ``position:I`` beyond a sequence.
    """
    result: dict[str, torch.Tensor] = {}
    for idx, acts in iter_activations(lm, samples, reductions, layers, batch_size):
        for name, a in acts.items():
            if name not in result:
                result[name] = torch.empty(len(samples), *a.shape[1:])
            result[name][idx] = a
    return result


def mean_activations(
    lm: LoadedModel,
    samples: Sequence[ChatSample],
    reductions: Sequence[str | Reduction] = ("response_avg",),
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    description: str = "capturing activations",
) -> dict[str, torch.Tensor]:
    """Streaming mean over samples: ``{reduction: [n_layers_selected, d_model]}`` (float64 sums)."""
    sums: dict[str, torch.Tensor] = {}
    for _, acts in iter_activations(lm, samples, reductions, layers, batch_size, description):
        for name, a in acts.items():
            s = a.double().sum(0)
            sums[name] = sums[name] + s if name in sums else s
    return {name: (s / len(samples)).float() for name, s in sums.items()}
