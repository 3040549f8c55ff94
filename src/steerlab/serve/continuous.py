"""The serving worker on vLLM (``steerlab serve --engine vllm``): vLLM's continuous batching, steerlab's
API, limits and answers.

One background thread owns the engine. Between two engine steps it admits waiting jobs while the rows
running stay within ``max_batch``: each row (prompt x ``n``) becomes one vLLM request carrying its
job's steering (resolved by :meth:`steerlab.engines.vllm.engine.VllmEngine.generation_requests`:
per-row interventions, registered vectors, a cache salt per condition), so requests with different
steering, sampling or lengths share every step, and a request that arrives mid-generation joins at the
next step instead of waiting for a batch to end. Each step's new tokens go through the same
:class:`~steerlab.serve.rows.RowDecoder` as the ``hf`` server: a row ends at its ``max_tokens``, stop
string or end-of-turn token (the engine request is then aborted), a live stream gets its text as it
grows, and a job is answered when its rows are done. A cancelled client's requests are aborted.

The queue is bounded as on the ``hf`` server: at most ``max_queue`` accepted jobs wait for admission;
:meth:`ContinuousBatcher.submit` refuses more with 429 and a ``Retry-After`` estimate.
"""

from __future__ import annotations

import logging
import queue
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..engines.vllm.engine import VllmEngine
from ..errors import SteerlabError
from ..steering.generation import Generation, encode_prompts
from .jobs import Job, Row
from .protocol import APIError
from .rows import RowDecoder
from .worker import ServingWorker

log = logging.getLogger("steerlab.serve")


@dataclass(eq=False)
class _Running:
    """One engine request: its row, how many of its tokens were taken, and their log-probabilities."""

    row: Row
    seen: int = 0
    logprobs: list[float] = field(default_factory=list)
    tops: list[list[tuple[int, float]]] = field(default_factory=list)


class ContinuousBatcher(ServingWorker):
    """Runs jobs on ``engine`` with vLLM's continuous batching (module docstring); the queue, thread and
    counters of :class:`~steerlab.serve.worker.ServingWorker`. Raises SteerlabError for ``max_batch``
    or ``max_queue`` below 1."""

    thread_name = "steerlab-serve-vllm"

    def __init__(self, engine: VllmEngine, max_batch: int = 32, max_queue: int = 64) -> None:
        super().__init__(
            max_batch, max_queue, {"steps": 0, "rows": 0, "requests": 0, "max_running_rows": 0, "failed": 0}
        )
        self.engine = engine
        self.decoder = RowDecoder(engine.tokenizer, engine.eos_ids)
        self._pending: list[Job] = []
        self._running: dict[str, _Running] = {}
        self._jobs: dict[int, tuple[Job, list[str], list[_Running]]] = {}

    def _running_jobs(self) -> int:
        return len(self._jobs)

    def health(self) -> dict[str, Any]:
        """:meth:`ServingWorker.health` (``steps``: engine steps; ``max_running_rows``: the most rows in
        the engine at once) and ``engine``: ``vllm``."""
        return {**super().health(), "engine": "vllm"}

    # worker
    def _loop(self) -> None:
        stopping = False
        while not stopping:
            stopping = self._take(block=not self._running and not self._pending)
            if stopping:
                break
            self._admit()
            self._drop_cancelled()
            if not self._running:
                continue
            try:
                outputs = self.engine.llm.llm_engine.step()
            except Exception as exc:  # the engine failed: fail what runs, keep serving if it can
                self._fail_running(exc)
                continue
            self.stats["steps"] += 1
            for output in outputs:
                self._consume(output)
        self._abort(list(self._running))
        for job, _, _ in list(self._jobs.values()):
            job.fail(APIError(503, "the server is shutting down", "server_error", code="shutting_down"))
        for job in self._pending:
            job.fail(APIError(503, "the server is shutting down", "server_error", code="shutting_down"))
        with self._count_lock:
            self._waiting -= len(self._pending)
        self._pending, self._jobs, self._running = [], {}, {}

    def _take(self, block: bool) -> bool:
        """Move queued jobs to pending (waiting for the first one when nothing runs). True on shutdown."""
        try:
            job = self._queue.get() if block else self._queue.get_nowait()
        except queue.Empty:
            return False
        while True:
            if job is None:
                return True
            self._pending.append(job)
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return False

    def _admit(self) -> None:
        """Add pending jobs (oldest first) while the running rows stay within ``max_batch``."""
        while self._pending:
            job = self._pending[0]
            if job.cancelled.is_set():
                self._pending.pop(0)
                self._release(1)
                continue
            if self._running and len(self._running) + job.n_rows > self.max_batch:
                return
            self._pending.pop(0)
            self._release(1)
            try:
                self._add(job)
            except SteerlabError as exc:
                job.fail(APIError(400, str(exc), code="invalid_steering"))
            except Exception as exc:  # never let the worker die
                log.exception("could not add a request")
                job.fail(APIError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error"))

    def _add(self, job: Job) -> None:
        prompts = [p for p in job.prompts for _ in range(job.n)]
        encoded = encode_prompts(self.engine.tokenizer, prompts, None, job.chat)
        specs = [it.spec() for it in job.items]
        requests, params = self.engine.generation_requests(
            encoded, specs, max_tokens=job.max_tokens, temperature=job.temperature, top_p=job.top_p,
            seed=job.seed if job.temperature > 0 else None, logprobs=job.logprobs,
        )  # fmt: skip
        job.rows = [Row(job, p * job.n + j) for p in range(len(job.prompts)) for j in range(job.n)]
        job.remaining = len(job.rows)
        ids, states = [], []
        llm_engine = self.engine.llm.llm_engine
        for row, request, param in zip(job.rows, requests, params, strict=True):
            rid = f"steerlab-{uuid.uuid4().hex}"
            llm_engine.add_request(rid, request, param, lora_request=self.engine.lora_request)
            states.append(_Running(row))
            self._running[rid] = states[-1]
            ids.append(rid)
        self._jobs[id(job)] = (job, ids, states)
        self.stats["rows"] += len(job.rows)
        self.stats["requests"] += 1
        self.stats["max_running_rows"] = max(self.stats["max_running_rows"], len(self._running))
        job.started = time.monotonic()  # type: ignore[attr-defined]

    def _consume(self, output: Any) -> None:
        state = self._running.get(output.request_id)
        if state is None:
            return
        completion = output.outputs[0]
        tokens = list(completion.token_ids)
        row = state.row
        for j in range(state.seen, len(tokens)):
            if completion.logprobs is not None and j < len(completion.logprobs):
                step = completion.logprobs[j]
                state.logprobs.append(step[tokens[j]].logprob)
                ranked = sorted(step.items(), key=lambda kv: kv[1].rank)
                state.tops.append([(int(t), float(lp.logprob)) for t, lp in ranked])
            if row.finish is None:
                self.decoder.advance(row, int(tokens[j]))
        state.seen = len(tokens)
        if row.finish is None and output.finished:
            self.decoder.finish(row, "length" if completion.finish_reason == "length" else "stop")
        if row.finish is not None:
            if not output.finished:
                self._abort([output.request_id])
            self._retire(output.request_id)

    def _retire(self, rid: str) -> None:
        """A row is done: forget its request; answer a job with logprobs once all its rows are."""
        state = self._running.pop(rid, None)
        if state is None:
            return
        job = state.row.job
        entry = self._jobs.get(id(job))
        if entry is None or any(r in self._running for r in entry[1]):
            return
        del self._jobs[id(job)]
        self._observe(time.monotonic() - getattr(job, "started", time.monotonic()))
        if job.logprobs is not None:
            self.decoder.answer(job, [self._generation(s) for s in entry[2]])

    @staticmethod
    def _generation(state: _Running) -> Generation:
        row = state.row
        return Generation(row.text, row.tokens, 0, row.finish or "length", state.logprobs, state.tops)

    def _drop_cancelled(self) -> None:
        for job, rids, _ in list(self._jobs.values()):
            if job.cancelled.is_set():
                live = [r for r in rids if r in self._running]
                self._abort(live)
                for r in live:
                    self._running.pop(r, None)
                del self._jobs[id(job)]

    def _abort(self, rids: list[str]) -> None:
        if rids:
            try:
                self.engine.llm.llm_engine.abort_request(rids)
            except Exception:  # pragma: no cover - an engine that already forgot them
                log.debug("abort of %d requests failed", len(rids))

    def _fail_running(self, exc: Exception) -> None:
        self.stats["failed"] += len(self._jobs)
        log.exception("the engine failed while %d requests ran", len(self._jobs))
        message = f"generation failed: {type(exc).__name__}: {exc}"
        for job, _, _ in self._jobs.values():
            job.fail(APIError(500, message, "server_error", code="generation_failed"))
        self._abort(list(self._running))
        self._jobs, self._running = {}, {}
