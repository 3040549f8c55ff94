"""The job model: a validated request (:class:`Job`) with its rows (one per prompt x ``n``), resolved
steering items and the choices it is answered with.

A job is made on the event loop, run on the worker thread, and answered through ``Job.events`` (an
asyncio queue fed with ``loop.call_soon_threadsafe``): ``("delta", index, text)`` and
``("finish", index, reason)`` while a live stream runs, then one ``("result", [Choice, ...])`` or
``("error", APIError)``."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field

import torch

from ..model.chat import Prompt
from ..steering.conditions import Condition
from ..steering.steerer import SteeringSpec
from ..vectors.vector import SteeringVector
from .protocol import APIError

# (token, logprob, [(top token, logprob), ...]) for one generated token
LogprobEntry = tuple[str, float, list[tuple[str, float]]]


@dataclass
class ResolvedItem:
    """One steering item with its vector loaded and layers parsed. ``key`` identifies it for per-row
    coefficient merging: (vector name, vector object id, layers, operator, positions, scale, condition,
    repeat), the condition as (vector name, vector object id, layer, threshold, comparator, reduction)
    or None."""

    key: tuple
    vector: SteeringVector
    layers: tuple[int, ...]
    coeff: float
    operator: str
    positions: str
    scale: str
    ceiling: float | None
    floor: float | None
    condition: Condition | None = None

    def spec(self, coeff: float | torch.Tensor | None = None, rows: torch.Tensor | None = None) -> SteeringSpec:
        """The SteeringSpec (with the item's condition), with ``coeff`` (a float, or a tensor ``[rows]``
        of per-row coefficients) in place of the item's own coefficient when given, on ``rows`` (a bool
        mask) when given."""
        return SteeringSpec(
            self.vector,
            list(self.layers),
            self.coeff if coeff is None else coeff,
            self.operator,
            self.positions,
            self.scale,
            self.ceiling,
            self.floor,
            rows=rows,
            condition=self.condition,
        )


@dataclass
class Choice:
    """One answered choice: text (stop-truncated), finish reason (``stop``/``length``), number of
    generated tokens (end-of-turn not counted), logprobs when asked and, for streams with logprobs,
    the text of each token (``pieces``, concatenating to ``text``)."""

    index: int
    text: str
    finish_reason: str
    n_tokens: int
    logprobs: list[LogprobEntry] | None = None
    pieces: list[str] | None = None


@dataclass(eq=False)
class Row:
    """One generated sequence of a job while it runs: choice ``index`` = prompt index x n + j."""

    job: Job
    index: int
    tokens: list[int] = field(default_factory=list)
    finish: str | None = None
    text: str = ""
    streamed: str = ""  # text already streamed


@dataclass(eq=False)
class Job:
    """A validated request: its prompts and their token counts, generation settings, resolved steering
    and reply channel. ``max_tokens`` already fits the context; ``logprobs`` is None (no logprobs) or
    k (the chosen token's logprob and the top k)."""

    prompts: list[Prompt]
    prompt_tokens: list[int]
    n: int
    chat: bool
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    logprobs: int | None
    items: list[ResolvedItem]
    stream: bool
    stream_usage: bool
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    rows: list[Row] = field(default_factory=list)
    remaining: int = 0
    answered: bool = False

    @property
    def n_rows(self) -> int:
        """Rows generated for this job: prompts x n."""
        return len(self.prompts) * self.n

    @property
    def has_cap(self) -> bool:
        """Whether an item uses ``cap`` (which has no coefficient to set to 0 on other rows)."""
        return any(it.operator == "cap" for it in self.items)

    @property
    def live_stream(self) -> bool:
        """Streamed as generated (a stream with logprobs is sent after its batch)."""
        return self.stream and self.logprobs is None

    def group_key(self) -> tuple:
        """Jobs with equal keys may share a batch: same chat/raw mode and sampling (greedy together;
        sampled by temperature and top_p; a seeded sampled job alone, to be reproducible), and, when
        ``cap`` is used, identical steering."""
        if self.temperature == 0:
            sampling: tuple = ("greedy",)
        elif self.seed is not None:
            sampling = ("seeded", id(self))
        else:
            sampling = ("sample", self.temperature, self.top_p)
        steering = None
        if self.has_cap:
            steering = tuple((it.key, it.coeff, it.ceiling, it.floor) for it in self.items)
        return (self.chat, sampling, steering)

    def emit(self, event: tuple) -> None:
        """Send ``event`` to the request's handler (thread-safe; dropped when its loop is closed)."""
        with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is listening any more
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def fail(self, error: APIError) -> None:
        """Answer with ``error`` unless already answered."""
        if not self.answered:
            self.answered = True
            self.emit(("error", error))
