"""The batching worker: one background thread owns the model and runs queued jobs in batches.

The worker takes the oldest job and collects more until ``max_batch`` rows, or until no new request
has come for ``batch_window_ms`` (so a burst is caught whole), at most ``WAIT_CAP`` windows after the
oldest one arrived (requests that queued during the previous batch do not wait again); then it runs
one :func:`steerlab.steering.generation.generate_batch` call for a group of compatible jobs (``n``
choices = ``n`` rows). Jobs with different steering coefficients, vectors, layers, operators,
positions or scales share a batch through per-row coefficients: each distinct (vector, layers,
operator, positions, scale) gets one SteeringSpec whose coefficient tensor holds the job's
coefficient on its rows and 0.0 on every other row (coefficient 0 is exactly the identity for
``add`` and ``ablate``). A job joins a group only if the order of its steering items stays
consistent with the group's, and if the group's longest prompt + largest ``max_tokens`` stay within
the context. See :meth:`steerlab.serve.jobs.Job.group_key` for what never shares a batch.

Rows are generated up to the group's largest ``max_tokens``; a per-row stopping criterion ends each
row at its own ``max_tokens`` or stop string (finish_reason ``length`` / ``stop``; the end-of-turn
token is not counted), streams its text as it grows, and a job without logprobs is answered as soon
as its own rows are done, not when the whole batch ends. If a batch raises anyway, each of its
unanswered jobs gets a 500 error and the worker keeps serving.

The queue is bounded: at most ``max_queue`` accepted jobs wait for the model (not counting the batch
running now); :meth:`Batcher.submit` refuses more with 429 and a ``Retry-After`` estimate."""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Sequence

import torch

from ..model.chat import Prompt
from ..model.loading import LoadedModel
from ..steering.generation import generate_batch, stop_token_ids
from ..steering.steerer import SteeringSpec
from .jobs import Job, ResolvedItem, Row
from .protocol import APIError
from .rows import RowDecoder
from .worker import ServingWorker

log = logging.getLogger("steerlab.serve")

WAIT_CAP = 5  # a batch waits at most this many batch windows for more requests


def merge_order(order: list[tuple], keys: Sequence[tuple]) -> list[tuple] | None:
    """Insert a request's item keys into a group's ordered keys, keeping both orders; None if the
    orders conflict. Items of other requests have coefficient 0 on this request's rows, so only
    the relative order of its own items matters to it."""
    merged = list(order)
    pos = -1
    for key in keys:
        if key in merged:
            idx = merged.index(key)
            if idx < pos:
                return None
            pos = idx
        else:
            merged.insert(pos + 1, key)
            pos += 1
    return merged


class Batcher(ServingWorker):
    """Owns ``lm`` on one background thread; groups queued jobs into ``generate_batch`` calls.
    ``context`` bounds a group's longest prompt + largest max_tokens (tokens); ``max_queue`` bounds
    the jobs waiting for the model (:class:`~steerlab.serve.worker.ServingWorker`). Raises
    SteerlabError for ``max_batch`` or ``max_queue`` below 1."""

    def __init__(
        self,
        lm: LoadedModel,
        max_batch: int = 32,
        batch_window_ms: float = 10.0,
        context: int | None = None,
        max_queue: int = 64,
    ) -> None:
        super().__init__(
            max_batch,
            max_queue,
            {"batches": 0, "rows": 0, "requests": 0, "max_batch_rows": 0, "failed_batches": 0},
        )
        self.lm = lm
        self.context = context
        self.window = max(0.0, batch_window_ms) / 1000.0
        self.decoder = RowDecoder(lm.tokenizer, stop_token_ids(lm))
        self._pending: list[Job] = []
        self._running = 0  # jobs in the batch running now

    def _running_jobs(self) -> int:
        return self._running

    # worker
    def _loop(self) -> None:
        stopping = False
        while not stopping:
            if not self._pending:
                job = self._queue.get()
                if job is None:
                    break
                self._pending.append(job)
            stopping = self._collect()
            live = [j for j in self._pending if not j.cancelled.is_set()]
            self._release(len(self._pending) - len(live))
            self._pending = live
            if stopping or not self._pending:
                continue
            group, order = self._form_group()
            chosen = {id(j) for j in group}
            self._pending = [j for j in self._pending if id(j) not in chosen]
            with self._count_lock:
                self._waiting -= len(group)
                self._running = len(group)
            start = time.monotonic()
            try:
                self._run_group(group, order)
            except Exception as exc:  # never let the worker die
                self._fail_group(group, exc)
            finally:
                with self._count_lock:
                    self._running = 0
                self._observe(time.monotonic() - start)
        for job in self._pending:
            job.fail(APIError(503, "the server is shutting down", "server_error", code="shutting_down"))
        self._release(len(self._pending))
        self._pending = []

    def _collect(self) -> bool:
        """Gather jobs until the head's group is full, or no request came for ``window`` (each
        arrival extends the wait, so clients re-sending together after a batch are caught in one
        group), but never longer than ``WAIT_CAP`` windows after the head arrived. Requests that
        queued during the previous batch therefore start at once. True on shutdown."""
        cap = self._pending[0].enqueued + WAIT_CAP * self.window
        while True:
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    return True
                self._pending.append(job)
            group, _ = self._form_group()
            deadline = min(cap, max(j.enqueued for j in self._pending) + self.window)
            remaining = deadline - time.monotonic()
            if sum(j.n_rows for j in group) >= self.max_batch or remaining <= 0:
                return False
            try:
                job = self._queue.get(timeout=remaining)
            except queue.Empty:
                return False
            if job is None:
                return True
            self._pending.append(job)

    def _form_group(self) -> tuple[list[Job], list[tuple]]:
        """The oldest pending job plus every later compatible one that fits (FIFO). Every row of a
        group runs for the group's largest max_tokens at positions after the longest prompt (left
        padding), so that sum must stay within the context."""
        head = self._pending[0]
        key = head.group_key()
        group, rows = [head], head.n_rows
        longest, most = max(head.prompt_tokens), head.max_tokens
        order = [it.key for it in head.items]
        for job in self._pending[1:]:
            if rows >= self.max_batch:
                break
            if job.cancelled.is_set() or rows + job.n_rows > self.max_batch or job.group_key() != key:
                continue
            if self.context and max(longest, *job.prompt_tokens) + max(most, job.max_tokens) > self.context:
                continue
            merged = order if head.has_cap else merge_order(order, [it.key for it in job.items])
            if merged is None:
                continue
            group.append(job)
            rows += job.n_rows
            longest, most = max(longest, *job.prompt_tokens), max(most, job.max_tokens)
            order = merged
        return group, order

    def _group_specs(self, group: list[Job], order: list[tuple], n_rows: int) -> list[SteeringSpec]:
        head = group[0]
        if head.has_cap:  # every job in the group carries the identical steering
            return [it.spec() for it in head.items]
        items: dict[tuple, ResolvedItem] = {}
        coeffs = {key: torch.zeros(n_rows) for key in order}
        rows = {key: torch.zeros(n_rows, dtype=torch.bool) for key in order}
        start = 0
        for job in group:
            for it in job.items:
                items.setdefault(it.key, it)
                coeffs[it.key][start : start + job.n_rows] = it.coeff
                rows[it.key][start : start + job.n_rows] = True
            start += job.n_rows
        # A conditional item acts on (and reads the prompts of) its own jobs' rows only.
        return [items[key].spec(coeffs[key], rows[key] if items[key].condition else None) for key in order]

    def _run_group(self, group: list[Job], order: list[tuple]) -> None:
        rows: list[Row] = []
        prompts: list[Prompt] = []
        for job in group:
            job.rows = [Row(job, p * job.n + j) for p in range(len(job.prompts)) for j in range(job.n)]
            job.remaining = len(job.rows)
            rows.extend(job.rows)
            prompts.extend(p for p in job.prompts for _ in range(job.n))
        self.stats["batches"] += 1
        self.stats["rows"] += len(rows)
        self.stats["requests"] += len(group)
        self.stats["max_batch_rows"] = max(self.stats["max_batch_rows"], len(rows))
        log.debug("batch: %d rows from %d requests", len(rows), len(group))
        head = group[0]
        ks = [j.logprobs for j in group if j.logprobs is not None]
        gens = generate_batch(
            self.lm,
            prompts,
            steering=self._group_specs(group, order, len(rows)),
            max_new_tokens=max(j.max_tokens for j in group),
            temperature=head.temperature,
            top_p=head.top_p,
            seed=head.seed if head.temperature > 0 else None,
            batch_size=len(rows),
            top_logprobs=max(ks) if ks else None,
            chat=head.chat,
            description="serving",
            batch_kwargs=self.decoder.batch_kwargs(rows),
        )
        for row, gen in zip(rows, gens, strict=True):
            if row.finish is None:  # cannot happen with the tracker installed; kept as a safety net
                row.tokens = gen.token_ids[: row.job.max_tokens]
                self.decoder.finish(row, "stop" if gen.finish_reason == "stop" else "length")
        start = 0
        for job in group:
            if not job.answered and not job.cancelled.is_set():
                self.decoder.answer(job, gens[start : start + job.n_rows])
            start += job.n_rows

    def _fail_group(self, group: list[Job], exc: Exception) -> None:
        self.stats["failed_batches"] += 1
        log.exception("a batch of %d requests failed", len(group))
        message = f"generation failed: {type(exc).__name__}: {exc}"
        for job in group:
            job.fail(APIError(500, message, "server_error", code="generation_failed"))
