"""From generated tokens to answers, row by row, while ``model.generate`` runs: each row stops at its
own ``max_tokens``, stop string, end-of-turn token or cancelled client; a live stream gets its text as
it grows (held back only while it could be the start of a stop string or an incomplete UTF-8
character); a job is answered with its :class:`~steerlab.serve.jobs.Choice` list as soon as its own
rows are done (a job with logprobs: when its batch has finished, since they come from its logits).

Logprob tokens are the tokenizer's decoding of each token id alone, so a token holding part of a
multi-byte character reads as U+FFFD."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from transformers.generation import StoppingCriteria, StoppingCriteriaList

from ..steering.generation import Generation
from .jobs import Choice, Job, Row

log = logging.getLogger("steerlab.serve")


def find_stop(text: str, stop: Sequence[str]) -> int | None:
    """Index of the earliest stop string in ``text``, or None."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(cuts) if cuts else None


def held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could still become a stop string, or are part of an
    incomplete UTF-8 character (U+FFFD), and so must not be streamed yet."""
    hold = 0
    for s in stop:
        for length in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:length]):
                hold = length
                break
    while hold < len(text) and text[len(text) - hold - 1] == "\ufffd":
        hold += 1
    return hold


class _StopRows(StoppingCriteria):
    """The stopping criterion handed to ``model.generate``: feeds each new token to the decoder and
    reports which rows are done (``[batch]`` bool)."""

    def __init__(self, decoder: RowDecoder, rows: list[Row]) -> None:
        self.decoder = decoder
        self.rows = rows
        self.batch_rows: list[Row] = []

    def generate_kwargs(self, idx: list[int]) -> dict[str, Any]:
        self.batch_rows = [self.rows[i] for i in idx]
        return {"stopping_criteria": StoppingCriteriaList([self])}

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        done = []
        for row, token in zip(self.batch_rows, input_ids[:, -1].tolist(), strict=True):
            if row.finish is None:
                self.decoder.advance(row, int(token))
            done.append(row.finish is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class RowDecoder:
    """Decodes rows with ``tokenizer``; ``eos_ids`` end a row (finish_reason ``stop``, not counted).
    Used by the worker thread only."""

    def __init__(self, tokenizer: Any, eos_ids: Iterable[int]) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = set(eos_ids)
        self._token_text: dict[int, str] = {}

    def batch_kwargs(self, rows: list[Row]) -> Callable[[list[int]], dict[str, Any]]:
        """The ``batch_kwargs`` callback of ``generate_batch`` for ``rows`` (in batch order): it installs
        the per-row stopping criterion on each ``model.generate`` call."""
        return _StopRows(self, rows).generate_kwargs

    def decode(self, tokens: list[int]) -> str:
        """The text of ``tokens``, special tokens skipped."""
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def advance(self, row: Row, token: int) -> None:
        """Take the row's next ``token``: finish the row or stream its new safe text."""
        job = row.job
        if job.cancelled.is_set():
            row.finish = "cancelled"
            return
        if token in self.eos_ids:
            self.finish(row, "stop")
            return
        row.tokens.append(token)
        text = None
        if job.stop or job.live_stream:
            text = self.decode(row.tokens)
            if job.stop and find_stop(text, job.stop) is not None:
                self.finish(row, "stop")
                return
        if len(row.tokens) >= job.max_tokens:
            self.finish(row, "length")
        elif text is not None and job.live_stream:
            safe = len(text) - held_back(text, job.stop)
            if safe > len(row.streamed) and text.startswith(row.streamed):
                job.emit(("delta", row.index, text[len(row.streamed) : safe]))
                row.streamed = text[:safe]

    def finish(self, row: Row, reason: str) -> None:
        """End ``row`` (``stop``/``length``; cut at a stop string); answer its job when it was the last
        row and no logprobs are needed."""
        job = row.job
        text = self.decode(row.tokens)
        cut = find_stop(text, job.stop)
        if cut is not None:
            text, reason = text[:cut], "stop"
        row.text, row.finish = text, reason
        if job.live_stream:
            if not text.startswith(row.streamed):  # pragma: no cover - decoding is prefix-stable
                log.warning("streamed text of choice %d diverged from the final text", row.index)
            if len(text) > len(row.streamed):
                job.emit(("delta", row.index, text[len(row.streamed) :]))
                row.streamed = text
            job.emit(("finish", row.index, reason))
        job.remaining -= 1
        if job.remaining == 0 and job.logprobs is None:
            self.answer(job, None)

    def token_str(self, token: int) -> str:
        """The text of one token id alone (cached)."""
        text = self._token_text.get(token)
        if text is None:
            text = self._token_text[token] = self.tokenizer.decode([token])
        return text

    def pieces(self, tokens: list[int], final: str) -> list[str]:
        """Text per token whose concatenation is ``final`` (the stop-truncated text)."""
        pieces, done = [], 0
        for t in range(1, len(tokens) + 1):
            prefix = self.decode(tokens[:t]) if t < len(tokens) else final
            prefix = prefix[: len(prefix) - held_back(prefix, ())][: len(final)]
            end = len(prefix) if final.startswith(prefix) else done
            end = max(end, done)
            pieces.append(final[done:end])
            done = end
        if pieces:
            pieces[-1] += final[done:]
        return pieces

    def answer(self, job: Job, gens: Sequence[Generation] | None) -> None:
        """Answer ``job`` with its choices (logprobs from ``gens``, its rows' generations, when asked);
        no-op when it is answered or cancelled."""
        if job.answered or job.cancelled.is_set():
            return
        choices = []
        for r, row in enumerate(job.rows):
            choice = Choice(row.index, row.text, row.finish or "length", len(row.tokens))
            if gens is not None and job.logprobs is not None:
                gen = gens[r]
                n = len(row.tokens)
                lps = (gen.logprobs or [])[:n]
                tops = (gen.top_logprobs or [[] for _ in range(n)])[:n]
                choice.logprobs = [
                    (self.token_str(tok), lp, [(self.token_str(i), v) for i, v in top[: job.logprobs]])
                    for tok, lp, top in zip(row.tokens, lps, tops, strict=True)
                ]
                if job.stream:
                    choice.pieces = self.pieces(row.tokens, row.text)
            choices.append(choice)
        job.answered = True
        job.emit(("result", choices))
