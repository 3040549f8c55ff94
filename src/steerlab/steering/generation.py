"""Batched (steered) generation.

Prompts (strings or chat messages, optional system prompt) are rendered through the chat template,
sorted by length, left-padded into batches and generated with ``model.generate`` (KV cache) under
the given steering. A steering coefficient may be a sequence with one value per prompt: each batch
gets its rows' values (per-row coefficients), so a whole coefficient sweep runs as one batch
stream. Likewise a spec's ``rows`` (a mask over the prompts, or prompt indices) makes it act on
those prompts only, so several conditions run as rows of shared batches. Greedy when
``temperature == 0``; sampled with ``seed`` otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import SteerlabError
from ..model.batching import collate
from ..model.chat import Prompt, render_prompt
from ..model.loading import LoadedModel
from ..progress import progress_bar
from .conditions import gate_samples, resolve_conditions
from .steerer import SteeringSpec, steer


@dataclass
class Generation:
    """One completion: text, token counts, why it stopped, and optional log-probabilities."""

    text: str
    token_ids: list[int]
    n_prompt_tokens: int
    finish_reason: str  # "stop" (end of turn / stop string) or "length"
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    cached_tokens: int | None = None  # prompt tokens served from a prefix cache (None: the engine does not say)

    @property
    def n_new_tokens(self) -> int:
        """Generated tokens kept, ``len(token_ids)``: up to, not including, the end-of-turn token (a stop
        string cuts ``text``, not the tokens)."""
        return len(self.token_ids)


def stop_token_ids(lm: LoadedModel) -> list[int]:
    """End-of-turn ids: the tokenizer's EOS plus the generation config's EOS ids."""
    return eos_token_ids(lm.tokenizer, getattr(lm.model, "generation_config", None))


def eos_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """End-of-turn ids of a tokenizer and a ``GenerationConfig`` (either's ``eos_token_id``: an id or a
    list), sorted: what every engine stops generation at."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    eos = getattr(generation_config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(e) for e in eos)
    return sorted(ids)


def auto_batch_size(lm: LoadedModel, n_rows: int, max_tokens: int) -> int:
    """Rows per generate call: as many as about half the free memory holds as KV cache (plus a
    logits row each), at most 512 — on CUDA the device's free memory, on CPU the machine's available
    memory. On CPU one large batch keeps the matrix products wide (fewer, fuller calls); measured by
    ``bench/sweep.py`` against one batch of all rows."""
    if lm.device.type != "cuda":
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return max(1, min(n_rows, 512, int(0.5 * free / _bytes_per_row(lm, max_tokens))))
    free, _ = torch.cuda.mem_get_info(lm.device)
    return max(1, min(n_rows, 512, int(0.5 * free / _bytes_per_row(lm, max_tokens))))


def _bytes_per_row(lm: LoadedModel, max_tokens: int) -> int:
    """KV cache of one row of ``max_tokens`` tokens plus a float32 logits row, in bytes."""
    config = lm.model.config
    heads = getattr(config, "num_key_value_heads", None) or getattr(config, "num_attention_heads", 1)
    head_dim = getattr(config, "head_dim", None) or lm.d_model // getattr(config, "num_attention_heads", 1)
    bytes_per_token = 2 * lm.n_layers * heads * head_dim * torch.finfo(lm.dtype).bits // 8
    return max(1, max_tokens * bytes_per_token + 4 * len(lm.tokenizer))


def _check_coeffs(specs: Sequence[SteeringSpec], n_rows: int) -> list[SteeringSpec]:
    """Specs with one-value coefficient tensors made scalars; per-row coefficients checked."""
    out = []
    for spec in specs:
        coeff = spec.coeff
        if not isinstance(coeff, int | float):
            tensor = torch.as_tensor(coeff, dtype=torch.float32).reshape(-1)
            if tensor.numel() == 1:
                spec = spec.with_coeff(float(tensor))
            elif tensor.numel() != n_rows:
                raise SteerlabError(f"--coeff: {tensor.numel()} per-row coefficients given for {n_rows} prompts")
        out.append(spec)
    return out


def check_generation_args(
    prompts: Sequence[Prompt],
    steering: SteeringSpec | Sequence[SteeringSpec],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
) -> list[SteeringSpec]:
    """Check a generation request (every engine does, before any work) and return its steering specs
    as a list, one-value coefficient tensors made scalars.

    Raises SteerlabError for no prompts, ``max_new_tokens < 1``, a negative temperature, ``top_p``
    outside (0, 1], or per-row coefficients whose count is not ``len(prompts)``.
    """
    if not prompts:
        raise SteerlabError("no prompts given")
    if max_new_tokens < 1:
        raise SteerlabError(f"--max-new-tokens {max_new_tokens}: expected at least 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise SteerlabError("temperature must be >= 0 and top_p in (0, 1]")
    specs = [steering] if isinstance(steering, SteeringSpec) else list(steering)
    return _check_coeffs(specs, len(prompts))


def encode_prompts(tokenizer: Any, prompts: Sequence[Prompt], system: str | None, chat: bool) -> list[list[int]]:
    """Token ids of each prompt as generation feeds it: rendered through the chat template (with
    ``system``) and tokenized without adding special tokens; with ``chat=False`` a string prompt is raw
    text tokenized as the tokenizer does for text (its BOS added)."""
    texts = [render_prompt(tokenizer, p, system) if chat or not isinstance(p, str) else p for p in prompts]
    return [list(tokenizer(t, add_special_tokens=not chat)["input_ids"]) for t in texts]


def _truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def generate_batch(
    lm: LoadedModel,
    prompts: Sequence[Prompt],
    *,
    system: str | None = None,
    steering: SteeringSpec | Sequence[SteeringSpec] = (),
    max_new_tokens: int = 64,
    min_new_tokens: int = 0,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    batch_size: int | None = None,
    stop: Sequence[str] = (),
    top_logprobs: int | None = None,
    reference_norms: torch.Tensor | None = None,
    chat: bool = True,
    description: str = "generating",
    batch_kwargs: Callable[[list[int]], dict[str, Any]] | None = None,
) -> list[Generation]:
    """Generate a completion per prompt under ``steering``; returns them in prompt order.

    ``chat=False`` treats string prompts as raw text (no chat template). ``batch_kwargs(rows)``, if
    given, is called for every model batch with the prompt indices of its rows (in batch row order)
    and returns extra keyword arguments for ``model.generate`` (e.g. ``stopping_criteria``, a
    ``streamer``); ``steerlab.serve`` uses it for per-row limits and token streaming.

    Prompts are rendered through the chat template (with ``system``), left-padded and generated in
    batches of similar length (``batch_size``, default :func:`auto_batch_size`); a spec's per-row
    ``coeff``/``rows`` are given per prompt (``[len(prompts)]``), so a coefficient sweep is one call
    (see :func:`expand_grid`). ``temperature`` 0 is greedy; ``seed`` seeds sampling.
    ``reference_norms`` (``[n_layers]``) is needed for scale ``relative``. A spec with a ``condition``
    steers only the prompts that pass it, decided once per prompt before generating
    (:mod:`steerlab.steering.conditions`).

    Raises SteerlabError for no prompts, ``max_new_tokens < 1``, a negative temperature or ``top_p``
    outside (0, 1], per-row coefficients whose count is not ``len(prompts)``, or steering (or a
    condition) that does not fit the model.
    """
    specs = check_generation_args(prompts, steering, max_new_tokens, temperature, top_p)
    specs = resolve_conditions(lm, specs, gate_samples(prompts, system, chat), batch_size or 16)
    encoded = encode_prompts(lm.tokenizer, prompts, system, chat)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    if batch_size is None:
        batch_size = auto_batch_size(lm, len(encoded), max(map(len, encoded)) + max_new_tokens)
    eos_ids = stop_token_ids(lm)
    pad_id = lm.tokenizer.pad_token_id
    if seed is not None:
        torch.manual_seed(seed)
    results: list[Generation | None] = [None] * len(encoded)
    with progress_bar(description, len(encoded)) as advance:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = collate([encoded[i] for i in idx], pad_id, lm.device)
            width = batch.width
            batch_specs = [spec.select_rows(idx, len(prompts)) for spec in specs]
            kwargs = dict(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens or None,
                pad_token_id=pad_id,
                eos_token_id=eos_ids,
                do_sample=temperature > 0,
                return_dict_in_generate=True,
                output_logits=top_logprobs is not None,
            )
            if temperature > 0:
                kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            if batch_kwargs is not None:
                kwargs.update(batch_kwargs(idx))
            with steer(lm, batch_specs, reference_norms), torch.inference_mode():
                out = lm.model.generate(**kwargs)
            new = out.sequences[:, width:].cpu()
            step_logprobs = (
                [torch.log_softmax(s.float(), -1).cpu() for s in out.logits] if top_logprobs is not None else None
            )
            for row, i in enumerate(idx):
                results[i] = _finish_row(lm, new[row], eos_ids, len(encoded[i]), stop, step_logprobs, row, top_logprobs)
            advance(len(idx))
    return [r for r in results if r is not None]


def _finish_row(
    lm: LoadedModel,
    tokens: torch.Tensor,
    eos_ids: list[int],
    n_prompt: int,
    stop: Sequence[str],
    step_logprobs: list[torch.Tensor] | None,
    row: int,
    k: int | None,
) -> Generation:
    token_list = tokens.tolist()
    logprobs = tops = None
    if step_logprobs is not None:
        steps = step_logprobs[: len(token_list)]
        logprobs = [float(s[row, t]) for s, t in zip(steps, token_list, strict=True)]
        if k:
            top = [s[row].topk(k) for s in steps]
            tops = [list(zip(t.indices.tolist(), t.values.tolist(), strict=True)) for t in top]
    return finish_generation(lm.tokenizer, token_list, eos_ids, n_prompt, stop, logprobs, tops)


def finish_generation(
    tokenizer: Any,
    token_ids: Sequence[int],
    eos_ids: Sequence[int],
    n_prompt: int,
    stop: Sequence[str] = (),
    logprobs: Sequence[float] | None = None,
    top_logprobs: Sequence[list[tuple[int, float]]] | None = None,
) -> Generation:
    """A :class:`Generation` from the tokens a row generated, the same way on every engine: the tokens
    up to (not including) the first end-of-turn id, decoded with special tokens skipped, the text cut
    at the first stop string. ``finish_reason`` is ``stop`` (end of turn or stop string) or ``length``.
    ``logprobs`` / ``top_logprobs`` (one entry per generated token) are cut to the kept tokens."""
    token_list = [int(t) for t in token_ids]
    end = next((j for j, t in enumerate(token_list) if t in eos_ids), None)
    finish = "stop" if end is not None else "length"
    token_list = token_list[:end] if end is not None else token_list
    text = tokenizer.decode(token_list, skip_special_tokens=True)
    text, stopped = _truncate_at_stop(text, stop)
    if stopped:
        finish = "stop"
    gen = Generation(text, token_list, n_prompt, finish)
    if logprobs is not None:
        gen.logprobs = [float(x) for x in logprobs[: len(token_list)]]
    if top_logprobs is not None:
        gen.top_logprobs = [list(t) for t in top_logprobs[: len(token_list)]]
    return gen


def generate(lm: LoadedModel, prompts: Sequence[Prompt], **kwargs) -> list[str]:
    """Texts only; see :func:`generate_batch` for the arguments."""
    return [g.text for g in generate_batch(lm, prompts, **kwargs)]


def expand_grid(prompts: Sequence[Prompt], coeffs: Sequence[float]) -> tuple[list[Prompt], list[float]]:
    """Rows for a coefficient sweep: every prompt at every coefficient (coefficient-major)."""
    rows = [p for _ in coeffs for p in prompts]
    row_coeffs = [float(c) for c in coeffs for _ in prompts]
    return rows, row_coeffs


__all__ = [
    "Generation",
    "check_generation_args",
    "encode_prompts",
    "eos_token_ids",
    "expand_grid",
    "finish_generation",
    "generate",
    "generate_batch",
]
