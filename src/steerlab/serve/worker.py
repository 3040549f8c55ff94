"""What every serving worker has, whatever engine it drives: one background thread that owns the
model, a bounded queue of accepted jobs, and the counters ``GET /health`` reports.

:class:`ServingWorker` is the base of :class:`steerlab.serve.batcher.Batcher` (the ``hf`` engine:
batches of compatible jobs) and :class:`steerlab.serve.continuous.ContinuousBatcher` (vLLM's
continuous batching). At most ``max_queue`` accepted jobs wait for the model; :meth:`submit` refuses
more with 429 and a ``Retry-After`` estimate (a moving average of how long the model takes).
"""

from __future__ import annotations

import math
import queue
import threading
from typing import Any

from ..errors import SteerlabError
from .jobs import Job
from .protocol import APIError


class ServingWorker:
    """The queue, thread and counters of a serving worker. Subclasses implement :meth:`_loop` (which
    takes jobs from ``self._queue`` until it gets None) and :meth:`_running_jobs`. Raises SteerlabError
    for ``max_batch`` or ``max_queue`` below 1."""

    thread_name = "steerlab-serve-worker"

    def __init__(self, max_batch: int, max_queue: int, counters: dict[str, int]) -> None:
        if max_batch < 1:
            raise SteerlabError(f"--max-batch {max_batch}: expected at least 1")
        if max_queue < 1:
            raise SteerlabError(f"--max-queue {max_queue}: expected at least 1")
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.stats = {**counters, "submitted": 0, "rejected": 0}
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._waiting = 0  # accepted jobs that have not reached the model yet
        self._seconds = 0.0  # moving average of how long the model takes, for Retry-After
        self._count_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def start(self) -> None:
        """Start the worker thread (no-op when it runs)."""
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker after what it runs now; waiting jobs get 503 ``shutting_down``."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)
        self._thread = None

    def submit(self, job: Job) -> None:
        """Queue ``job``. Raises APIError 429 (``Retry-After`` header, seconds) when ``max_queue`` jobs
        already wait; the job then never reaches the model."""
        self.start()
        with self._count_lock:
            if self._waiting >= self.max_queue:
                self.stats["rejected"] += 1
                retry = max(1, math.ceil(self._seconds))
                raise APIError(
                    429,
                    f"the server is busy: {self._waiting} requests are waiting for the model "
                    f"(its queue holds at most {self.max_queue}, --max-queue); retry after {retry} s",
                    "requests",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": str(retry)},
                )
            self._waiting += 1
            self.stats["submitted"] += 1
        self._queue.put(job)

    def health(self) -> dict[str, Any]:
        """Counters for ``GET /health``: the worker's own counters, submitted and rejected (429)
        requests, ``queue_depth`` (jobs waiting), ``running`` (jobs in the model) and ``max_queue``."""
        with self._count_lock:
            return {**self.stats, "queue_depth": self._waiting, "running": self._running_jobs(),
                    "max_queue": self.max_queue}  # fmt: skip

    def _release(self, n: int) -> None:
        """``n`` accepted jobs left the queue (to the model, cancelled or refused)."""
        with self._count_lock:
            self._waiting -= n

    def _observe(self, seconds: float) -> None:
        """Fold one run's duration into the moving average behind ``Retry-After``."""
        with self._count_lock:
            self._seconds = seconds if not self._seconds else 0.8 * self._seconds + 0.2 * seconds

    def _running_jobs(self) -> int:  # pragma: no cover - every worker overrides it
        raise NotImplementedError

    def _loop(self) -> None:  # pragma: no cover - every worker overrides it
        raise NotImplementedError
