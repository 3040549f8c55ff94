"""``steerlab serve``: an OpenAI-compatible HTTP server for steered models (FastAPI + uvicorn).

Endpoints (all JSON; errors in the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``):

``GET /v1/models``
    The served model (any ``model`` name in a request is accepted and ignored: one model is served).
``GET /v1/vectors``
    Every ``*.safetensors`` / ``*.gguf`` in the vectors directory: name (the file stem), n_layers,
    d_model, method, metadata, and whether it fits the served model. Files are loaded lazily on first
    use and cached until they change on disk. When a stem exists in both formats, ``.safetensors``
    wins.
``POST /v1/chat/completions``, ``POST /v1/completions``
    ``max_tokens`` (chat: also ``max_completion_tokens``; default: completions 16 as in the OpenAI
    API, chat ``default_max_tokens`` = 256, both capped by the context), ``temperature`` (default 1.0
    as in the OpenAI API; 0 = greedy), ``top_p``, ``seed``, ``stop`` (string or list), ``n``,
    ``stream`` (+ ``stream_options.include_usage``), ``logprobs`` / ``top_logprobs`` (chat: bool +
    int 0..20; completions: int 0..20), and ``usage`` counts. Completions take a string or a list
    of strings (raw text, the tokenizer's special tokens added); chat messages go through the chat
    template (``developer`` is treated as ``system``).
``GET /health``
    ``{"status": "ok"}`` plus batching counters (batches run, rows, largest batch).

Steering, per request, in the body (``extra_body`` with the openai client)::

    "steering": [{"vector": "evil", "layer": 12 | [10, 12] | "10-15" | "all", "coeff": 4.0,
                  "positions": "all|prompt|response", "operator": "add|ablate|cap",
                  "scale": "raw|unit", "ceiling": 1.0, "floor": -1.0}]

``vector`` is a file stem in the vectors directory; layer L is the output of decoder block L;
``ceiling``/``floor`` are for ``cap`` (which has no coefficient). Items apply in the order given.
A request without ``steering`` is unsteered.

Batching. One background thread owns the model. Requests are validated first (vector, layers,
context length, ...; a bad request is answered at once and never reaches the model), then queued.
The worker takes the oldest request and collects more until ``max_batch`` rows, or until no new
request has come for ``batch_window_ms`` (so a burst is caught whole), at most 5 windows after the
oldest one arrived (requests that queued during the previous batch do not wait again); then it runs
one :func:`steerlab.generation.generate_batch` call for a group of compatible requests (``n``
choices = ``n`` rows). Requests with different steering coefficients,
vectors, layers, operators, positions or scales share a batch through per-row coefficients: each
distinct (vector, layers, operator, positions, scale) gets one SteeringSpec whose coefficient
tensor holds the request's coefficient on its rows and 0.0 on every other row (coefficient 0 is
exactly the identity for ``add`` and ``ablate``). A request joins a group only if the order of its
steering items stays consistent with the group's. Separate groups are made for: chat vs raw
completions (they tokenize differently); different sampling settings (greedy requests all group
together whatever their top_p/seed; sampled requests group by temperature and top_p, and a sampled
request with a ``seed`` runs alone so that it is reproducible); and requests using ``cap`` (no
coefficient to zero), which group only with requests carrying the identical steering. Rows are
generated up to the group's largest ``max_tokens``; a per-row stopping criterion ends each row at
its own ``max_tokens`` or stop string (finish_reason ``length`` / ``stop``; ``usage`` counts each
row's own tokens, the end-of-turn token not included), and a request without logprobs is answered
as soon as its own rows are done, not when the whole batch ends. If a batch raises anyway, each of
its unanswered requests gets a 500 error and the worker keeps serving.

Streaming (server-sent events in the OpenAI chunk format, ending with ``data: [DONE]``) is
incremental: text is sent as tokens are generated (held back only while it could be the start of a
stop string or an incomplete UTF-8 character). A stream that asks for logprobs is sent after its
batch has finished (one chunk per token with its logprobs), because the log-probabilities come from
the batch's logits.

Logprob tokens are the tokenizer's decoding of each token id alone (``bytes`` its UTF-8 encoding),
so a token holding part of a multi-byte character reads as U+FFFD.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers.generation import StoppingCriteria, StoppingCriteriaList

from ..errors import SteerlabError
from ..model.blocks import unwrap_model
from ..model.chat import Prompt, render_prompt
from ..model.loading import LoadedModel
from ..steering.generation import Generation, generate_batch, stop_token_ids
from ..steering.steerer import SteeringSpec, parse_layers
from ..vectors.vector import SteeringVector

log = logging.getLogger("steerlab.serve")

VECTOR_SUFFIXES = (".safetensors", ".gguf")
WAIT_CAP = 5  # a batch waits at most this many batch windows for more requests
MAX_TOP_LOGPROBS = 20


# --- errors -------------------------------------------------------------------------------------


class APIError(Exception):
    """An error answered in the OpenAI shape with an HTTP status code."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


# --- request bodies -----------------------------------------------------------------------------


class SteeringItem(BaseModel):
    """One intervention of a request: a named vector from the vectors directory at some layers."""

    model_config = ConfigDict(extra="forbid")

    vector: str = Field(min_length=1)
    layer: int | list[int] | str
    coeff: float = Field(1.0, allow_inf_nan=False)
    positions: Literal["all", "prompt", "response"] = "all"
    operator: Literal["add", "ablate", "cap"] = "add"
    scale: Literal["raw", "unit"] = "raw"
    ceiling: float | None = Field(None, allow_inf_nan=False)
    floor: float | None = Field(None, allow_inf_nan=False)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    steering: list[SteeringItem] | None = None


class ContentPart(BaseModel):
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


class CompletionRequest(_Request):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False


# --- vectors ------------------------------------------------------------------------------------


class VectorStore:
    """The vectors directory: files listed on demand, loaded lazily, cached until they change."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._cache: dict[Path, tuple[tuple[int, int], SteeringVector | SteerlabError]] = {}
        self._lock = threading.Lock()

    def files(self) -> dict[str, Path]:
        """Stem -> file; ``.safetensors`` wins over ``.gguf`` of the same stem."""
        if self.directory is None or not self.directory.is_dir():
            return {}
        found: dict[str, Path] = {}
        for suffix in reversed(VECTOR_SUFFIXES):
            for path in sorted(self.directory.glob(f"*{suffix}")):
                if path.is_file():
                    found[path.stem] = path
        return dict(sorted(found.items()))

    def _load(self, path: Path) -> SteeringVector | SteerlabError:
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._cache.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        try:
            value: SteeringVector | SteerlabError = SteeringVector.load(path)
        except SteerlabError as exc:
            value = exc
        with self._lock:
            self._cache[path] = (stamp, value)
        return value

    def get(self, name: str, param: str = "vector") -> SteeringVector:
        files = self.files()
        path = files.get(name)
        if path is None:
            if self.directory is None:
                where = "no vectors directory is configured (start the server with --vectors DIR)"
            else:
                where = (f"available in {self.directory}: {', '.join(files)}" if files
                         else f"{self.directory} holds no .safetensors or .gguf vectors")
            raise APIError(404, f"{param}: unknown steering vector {name!r}; {where}",
                           param=param, code="vector_not_found")
        try:
            value = self._load(path)
        except OSError as exc:  # removed between listing and loading
            raise APIError(404, f"{param}: vector file {path} cannot be read ({exc})", param=param,
                           code="vector_not_found") from None
        if isinstance(value, SteerlabError):
            raise APIError(400, f"{param}: {value}", param=param, code="invalid_vector")
        return value

    def describe(self, lm: LoadedModel) -> list[dict[str, Any]]:
        out = []
        for name, path in self.files().items():
            entry: dict[str, Any] = {"id": name, "object": "steering_vector", "name": name, "file": path.name,
                                     "format": path.suffix.lstrip(".")}
            try:
                value = self._load(path)
            except OSError as exc:
                value = SteerlabError(str(exc))
            if isinstance(value, SteerlabError):
                entry.update(error=str(value), compatible=False)
            else:
                entry.update(
                    n_layers=value.n_layers, d_model=value.d_model, method=value.metadata.get("method"),
                    metadata=json.loads(json.dumps(value.metadata, default=str)),
                    compatible=value.n_layers == lm.n_layers and value.d_model == lm.d_model,
                )
            out.append(entry)
        return out


# --- jobs ---------------------------------------------------------------------------------------


@dataclass
class _Item:
    """One resolved steering item. ``key`` identifies it for per-row coefficient merging."""

    key: tuple
    vector: SteeringVector
    layers: tuple[int, ...]
    coeff: float
    operator: str
    positions: str
    scale: str
    ceiling: float | None
    floor: float | None

    def spec(self, coeff: float | torch.Tensor | None = None) -> SteeringSpec:
        return SteeringSpec(self.vector, list(self.layers), self.coeff if coeff is None else coeff,
                            self.operator, self.positions, self.scale, self.ceiling, self.floor)


@dataclass
class _Choice:
    index: int
    text: str
    finish_reason: str
    n_tokens: int
    # (token, logprob, [(top token, logprob), ...]) per generated token, when logprobs were asked
    logprobs: list[tuple[str, float, list[tuple[str, float]]]] | None = None
    pieces: list[str] | None = None  # text per token, for streams with logprobs


@dataclass(eq=False)
class _Row:
    job: _Job
    index: int  # choice index within its request
    tokens: list[int] = field(default_factory=list)
    finish: str | None = None
    text: str = ""
    streamed: str = ""  # text already streamed


@dataclass(eq=False)
class _Job:
    """A validated request: its rows, generation settings, resolved steering and reply channel."""

    prompts: list[Prompt]
    prompt_tokens: list[int]
    n: int
    chat: bool
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    logprobs: int | None  # None: no logprobs; k: the chosen token's logprob and the top k
    items: list[_Item]
    stream: bool
    stream_usage: bool
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    rows: list[_Row] = field(default_factory=list)
    remaining: int = 0
    answered: bool = False

    @property
    def n_rows(self) -> int:
        return len(self.prompts) * self.n

    @property
    def has_cap(self) -> bool:
        return any(it.operator == "cap" for it in self.items)

    @property
    def live_stream(self) -> bool:
        return self.stream and self.logprobs is None

    def group_key(self) -> tuple:
        if self.temperature == 0:
            sampling: tuple = ("greedy",)
        elif self.seed is not None:
            sampling = ("seeded", id(self))  # reproducible only when generated alone
        else:
            sampling = ("sample", self.temperature, self.top_p)
        steering = None
        if self.has_cap:
            steering = tuple((it.key, it.coeff, it.ceiling, it.floor) for it in self.items)
        return (self.chat, sampling, steering)

    def emit(self, event: tuple) -> None:
        with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is listening any more
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def fail(self, error: APIError) -> None:
        if not self.answered:
            self.answered = True
            self.emit(("error", error))


def _merge_order(order: list[tuple], keys: Sequence[tuple]) -> list[tuple] | None:
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


def _find_stop(text: str, stop: Sequence[str]) -> int | None:
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(cuts) if cuts else None


def _held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters could still become a stop string (or a whole character)."""
    hold = 0
    for s in stop:
        for length in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:length]):
                hold = length
                break
    while hold < len(text) and text[len(text) - hold - 1] == "\ufffd":
        hold += 1
    return hold


# --- the batching worker ------------------------------------------------------------------------


class _RowTracker(StoppingCriteria):
    """Per-row stopping (own max_tokens, stop strings, cancelled clients) and live streaming,
    called by ``model.generate`` after every new token."""

    def __init__(self, batcher: Batcher, rows: list[_Row]) -> None:
        self.batcher = batcher
        self.rows = rows
        self.batch_rows: list[_Row] = []

    def generate_kwargs(self, idx: list[int]) -> dict[str, Any]:
        self.batch_rows = [self.rows[i] for i in idx]
        return {"stopping_criteria": StoppingCriteriaList([self])}

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        done = []
        for row, token in zip(self.batch_rows, input_ids[:, -1].tolist(), strict=True):
            if row.finish is None:
                self.batcher._advance(row, int(token))
            done.append(row.finish is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class Batcher:
    """Owns the model on one background thread; groups queued jobs into ``generate_batch`` calls."""

    def __init__(self, lm: LoadedModel, max_batch: int = 32, batch_window_ms: float = 10.0,
                 context: int | None = None) -> None:
        if max_batch < 1:
            raise SteerlabError(f"--max-batch {max_batch}: expected at least 1")
        self.lm = lm
        self.max_batch = max_batch
        self.context = context  # longest prompt + largest max_tokens of a group stay within it
        self.window = max(0.0, batch_window_ms) / 1000.0
        self.eos_ids = set(stop_token_ids(lm))
        self.stats = {"batches": 0, "rows": 0, "requests": 0, "max_batch_rows": 0, "failed_batches": 0}
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._pending: list[_Job] = []
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._token_text: dict[int, str] = {}

    # lifecycle
    def start(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="steerlab-serve-worker", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)
        self._thread = None

    def submit(self, job: _Job) -> None:
        self.start()
        self._queue.put(job)

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
            self._pending = [j for j in self._pending if not j.cancelled.is_set()]
            if stopping or not self._pending:
                continue
            group, order = self._form_group()
            chosen = {id(j) for j in group}
            self._pending = [j for j in self._pending if id(j) not in chosen]
            try:
                self._run_group(group, order)
            except Exception as exc:  # never let the worker die
                self._fail_group(group, exc)
        for job in self._pending:
            job.fail(APIError(503, "the server is shutting down", "server_error", code="shutting_down"))
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

    def _form_group(self) -> tuple[list[_Job], list[tuple]]:
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
            merged = order if head.has_cap else _merge_order(order, [it.key for it in job.items])
            if merged is None:
                continue
            group.append(job)
            rows += job.n_rows
            longest, most = max(longest, *job.prompt_tokens), max(most, job.max_tokens)
            order = merged
        return group, order

    def _group_specs(self, group: list[_Job], order: list[tuple], n_rows: int) -> list[SteeringSpec]:
        head = group[0]
        if head.has_cap:  # every job in the group carries the identical steering
            return [it.spec() for it in head.items]
        items: dict[tuple, _Item] = {}
        coeffs = {key: torch.zeros(n_rows) for key in order}
        start = 0
        for job in group:
            for it in job.items:
                items.setdefault(it.key, it)
                coeffs[it.key][start : start + job.n_rows] = it.coeff
            start += job.n_rows
        return [items[key].spec(coeffs[key]) for key in order]

    def _run_group(self, group: list[_Job], order: list[tuple]) -> None:
        rows: list[_Row] = []
        prompts: list[Prompt] = []
        for job in group:
            job.rows = [_Row(job, p * job.n + j) for p in range(len(job.prompts)) for j in range(job.n)]
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
        tracker = _RowTracker(self, rows)
        gens = generate_batch(
            self.lm, prompts, steering=self._group_specs(group, order, len(rows)),
            max_new_tokens=max(j.max_tokens for j in group), temperature=head.temperature,
            top_p=head.top_p, seed=head.seed if head.temperature > 0 else None, batch_size=len(rows),
            top_logprobs=max(ks) if ks else None, chat=head.chat, description="serving",
            batch_kwargs=tracker.generate_kwargs,
        )
        for row, gen in zip(rows, gens, strict=True):
            if row.finish is None:  # cannot happen with the tracker installed; kept as a safety net
                row.tokens = gen.token_ids[: row.job.max_tokens]
                self._finish_row(row, "stop" if gen.finish_reason == "stop" else "length")
        start = 0
        for job in group:
            if not job.answered and not job.cancelled.is_set():
                self._answer(job, gens[start : start + job.n_rows])
            start += job.n_rows

    def _fail_group(self, group: list[_Job], exc: Exception) -> None:
        self.stats["failed_batches"] += 1
        log.exception("a batch of %d requests failed", len(group))
        message = f"generation failed: {type(exc).__name__}: {exc}"
        for job in group:
            job.fail(APIError(500, message, "server_error", code="generation_failed"))

    # per-token work (called by the tracker inside model.generate)
    def _decode(self, tokens: list[int]) -> str:
        return self.lm.tokenizer.decode(tokens, skip_special_tokens=True)

    def _advance(self, row: _Row, token: int) -> None:
        job = row.job
        if job.cancelled.is_set():
            row.finish = "cancelled"
            return
        if token in self.eos_ids:
            self._finish_row(row, "stop")
            return
        row.tokens.append(token)
        text = None
        if job.stop or job.live_stream:
            text = self._decode(row.tokens)
            if job.stop and _find_stop(text, job.stop) is not None:
                self._finish_row(row, "stop")
                return
        if len(row.tokens) >= job.max_tokens:
            self._finish_row(row, "length")
        elif text is not None and job.live_stream:
            safe = len(text) - _held_back(text, job.stop)
            if safe > len(row.streamed) and text.startswith(row.streamed):
                job.emit(("delta", row.index, text[len(row.streamed) : safe]))
                row.streamed = text[:safe]

    def _finish_row(self, row: _Row, reason: str) -> None:
        job = row.job
        text = self._decode(row.tokens)
        cut = _find_stop(text, job.stop)
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
            self._answer(job, None)

    def _token_str(self, token: int) -> str:
        text = self._token_text.get(token)
        if text is None:
            text = self._token_text[token] = self.lm.tokenizer.decode([token])
        return text

    def _pieces(self, tokens: list[int], final: str) -> list[str]:
        """Text per token whose concatenation is ``final`` (the stop-truncated text)."""
        pieces, done = [], 0
        for t in range(1, len(tokens) + 1):
            prefix = self._decode(tokens[:t]) if t < len(tokens) else final
            prefix = prefix[: len(prefix) - _held_back(prefix, ())][: len(final)]
            end = len(prefix) if final.startswith(prefix) else done
            end = max(end, done)
            pieces.append(final[done:end])
            done = end
        if pieces:
            pieces[-1] += final[done:]
        return pieces

    def _answer(self, job: _Job, gens: Sequence[Generation] | None) -> None:
        if job.answered or job.cancelled.is_set():
            return
        choices = []
        for r, row in enumerate(job.rows):
            choice = _Choice(row.index, row.text, row.finish or "length", len(row.tokens))
            if gens is not None and job.logprobs is not None:
                gen = gens[r]
                n = len(row.tokens)
                lps = (gen.logprobs or [])[:n]
                tops = (gen.top_logprobs or [[] for _ in range(n)])[:n]
                choice.logprobs = [
                    (self._token_str(tok), lp, [(self._token_str(i), v) for i, v in top[: job.logprobs]])
                    for tok, lp, top in zip(row.tokens, lps, tops, strict=True)
                ]
                if job.stream:
                    choice.pieces = self._pieces(row.tokens, row.text)
            choices.append(choice)
        job.answered = True
        job.emit(("result", choices))


# --- the app ------------------------------------------------------------------------------------


def max_positions(lm: LoadedModel) -> int | None:
    """The model's context length from its config, if it declares one."""
    config = unwrap_model(lm.model).config
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class _Server:
    """Request validation (on the event loop, with its own tokenizer copy) and response shapes."""

    def __init__(self, lm: LoadedModel, vectors_dir: Path | None, max_batch: int, batch_window_ms: float,
                 max_context: int | None, default_max_tokens: int) -> None:
        self.lm = lm
        self.vectors = VectorStore(vectors_dir)
        self.max_batch = max_batch
        self.default_max_tokens = default_max_tokens
        limits = [x for x in (max_positions(lm), max_context) if x]
        self.context = min(limits) if limits else None
        self.batcher = Batcher(lm, max_batch, batch_window_ms, self.context)
        try:  # the worker thread uses lm.tokenizer; the event loop gets its own copy
            self.tokenizer = copy.deepcopy(lm.tokenizer)
        except Exception:  # pragma: no cover - tokenizers that cannot be copied
            self.tokenizer = lm.tokenizer
        self.created = int(time.time())

    # validation
    def _steering(self, items: list[SteeringItem] | None) -> list[_Item]:
        resolved: list[_Item] = []
        seen: dict[tuple, int] = {}
        for i, item in enumerate(items or []):
            where = f"steering[{i}]"
            vector = self.vectors.get(item.vector, f"{where}.vector")
            try:
                layers = tuple(sorted(parse_layers(item.layer, self.lm.n_layers, f"{where}.layer")))
            except SteerlabError as exc:
                raise APIError(400, str(exc), param=f"{where}.layer", code="invalid_layer") from None
            if item.operator == "cap" and item.ceiling is None and item.floor is None:
                raise APIError(400, f"{where}: operator 'cap' needs a ceiling and/or a floor on h·v̂",
                               param=f"{where}.ceiling")
            if item.operator != "cap" and (item.ceiling is not None or item.floor is not None):
                raise APIError(400, f"{where}: ceiling/floor apply to operator 'cap' only, not {item.operator!r}",
                               param=f"{where}.operator")
            base = (item.vector, id(vector), layers, item.operator, item.positions, item.scale)
            seen[base] = seen.get(base, -1) + 1
            resolved.append(_Item((*base, seen[base]), vector, layers, item.coeff, item.operator, item.positions,
                                  item.scale, item.ceiling, item.floor))
            try:  # shapes, zero or NaN directions at these layers, ...
                resolved[-1].spec().interventions(self.lm)
            except SteerlabError as exc:
                raise APIError(400, f"{where}: {exc}", param=where, code="invalid_steering") from None
        return resolved

    def _stop(self, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 16:
            raise APIError(400, f"stop: at most 16 stop strings, got {len(stops)}", param="stop")
        return [s for s in stops if s]

    def _max_tokens(self, requested: int | None, default: int, prompt_tokens: int, param: str) -> int:
        if requested is None:
            requested = default if self.context is None else max(1, min(default, self.context - prompt_tokens))
        if self.context is not None and prompt_tokens + requested > self.context:
            raise APIError(
                400,
                f"This model's maximum context length is {self.context} tokens. However, you requested "
                f"{prompt_tokens + requested} tokens ({prompt_tokens} in the {param}, {requested} in the "
                "completion). Please reduce the length of the prompt or of max_tokens.",
                param=param, code="context_length_exceeded",
            )
        return requested

    def _job(self, body: _Request, prompts: list[Prompt], prompt_tokens: list[int], chat: bool,
             max_tokens: int | None, default_max: int, logprobs: int | None, param: str) -> _Job:
        if any(n == 0 for n in prompt_tokens):
            raise APIError(400, f"{param}: the prompt is empty (no tokens)", param=param)
        if len(prompts) * body.n > self.max_batch:
            raise APIError(400, f"n: {len(prompts)} prompt(s) x n={body.n} rows exceed the server's "
                           f"--max-batch {self.max_batch}", param="n")
        limit = min(self._max_tokens(max_tokens, default_max, t, param) for t in prompt_tokens)
        return _Job(
            prompts=prompts, prompt_tokens=prompt_tokens, n=body.n, chat=chat, max_tokens=limit,
            temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=self._stop(body.stop),
            logprobs=logprobs, items=self._steering(body.steering), stream=body.stream,
            stream_usage=bool(body.stream and body.stream_options and body.stream_options.include_usage),
            loop=asyncio.get_running_loop(),
        )

    def chat_job(self, body: ChatCompletionRequest) -> _Job:
        messages = []
        for i, m in enumerate(body.messages):
            content = m.content
            if isinstance(content, list):
                if any(part.type != "text" or part.text is None for part in content):
                    raise APIError(400, f"messages[{i}].content: only text parts are supported",
                                   param=f"messages[{i}].content")
                content = "".join(part.text or "" for part in content)
            messages.append({"role": "system" if m.role == "developer" else m.role, "content": content or ""})
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs: requires logprobs to be true", param="top_logprobs")
        try:
            text = render_prompt(self.tokenizer, messages)
        except SteerlabError as exc:
            raise APIError(400, f"messages: {exc}", param="messages") from None
        except Exception as exc:  # chat templates raise on unsupported role orders
            raise APIError(400, f"messages: the chat template rejected them ({exc})", param="messages") from None
        n_prompt = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        return self._job(body, [messages], [n_prompt], True, max_tokens, self.default_max_tokens, logprobs,
                         "messages")

    def completion_job(self, body: CompletionRequest) -> _Job:
        if body.echo:
            raise APIError(400, "echo: not supported by steerlab serve", param="echo")
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts:
            raise APIError(400, "prompt: no prompts given", param="prompt")
        counts = [len(self.tokenizer(p, add_special_tokens=True)["input_ids"]) for p in prompts]
        return self._job(body, list(prompts), counts, False, body.max_tokens, 16, body.logprobs, "prompt")

    # responses
    def _chat_logprobs(self, entries: list[tuple[str, float, list[tuple[str, float]]]]) -> dict[str, Any]:
        def one(token: str, lp: float) -> dict[str, Any]:
            return {"token": token, "logprob": lp, "bytes": list(token.encode("utf-8"))}

        return {"content": [{**one(t, lp), "top_logprobs": [one(a, b) for a, b in top]} for t, lp, top in entries],
                "refusal": None}

    @staticmethod
    def _completion_logprobs(entries: list[tuple[str, float, list[tuple[str, float]]]], k: int,
                             offset: int) -> dict[str, Any]:
        offsets = []
        for token, _, _ in entries:
            offsets.append(offset)
            offset += len(token)
        return {
            "tokens": [t for t, _, _ in entries],
            "token_logprobs": [lp for _, lp, _ in entries],
            "top_logprobs": [dict(reversed(top)) for _, _, top in entries] if k else None,
            "text_offset": offsets,
        }

    def _head(self, kind: str, rid: str) -> dict[str, Any]:
        obj = {"chat": "chat.completion", "chat.chunk": "chat.completion.chunk"}.get(kind, "text_completion")
        return {"id": rid, "object": obj, "created": int(time.time()), "model": self.lm.name}

    def _choice_json(self, job: _Job, choice: _Choice) -> dict[str, Any]:
        if job.chat:
            return {"index": choice.index, "message": {"role": "assistant", "content": choice.text},
                    "logprobs": self._chat_logprobs(choice.logprobs) if choice.logprobs is not None else None,
                    "finish_reason": choice.finish_reason}
        prompt = job.prompts[choice.index // job.n]
        lp = (self._completion_logprobs(choice.logprobs, job.logprobs or 0, len(prompt))  # type: ignore[arg-type]
              if choice.logprobs is not None else None)
        return {"index": choice.index, "text": choice.text, "logprobs": lp, "finish_reason": choice.finish_reason}

    def _job_usage(self, job: _Job, choices: list[_Choice]) -> dict[str, int]:
        return _usage(sum(job.prompt_tokens), sum(c.n_tokens for c in choices))

    async def respond(self, job: _Job) -> Any:
        self.batcher.submit(job)
        rid = f"{'chatcmpl' if job.chat else 'cmpl'}-{uuid.uuid4().hex}"
        if job.stream:
            return StreamingResponse(self._stream(job, rid), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            while True:
                event = await job.events.get()
                if event[0] == "error":
                    return event[1].response()
                if event[0] == "result":
                    choices = sorted(event[1], key=lambda c: c.index)
                    break
        except asyncio.CancelledError:
            job.cancelled.set()
            raise
        return {**self._head("chat" if job.chat else "text", rid),
                "choices": [self._choice_json(job, c) for c in choices], "usage": self._job_usage(job, choices)}

    def _chunk(self, job: _Job, rid: str, index: int, text: str | None, finish: str | None,
               logprobs: list | None = None, role: bool = False) -> dict[str, Any]:
        if job.chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": index, "delta": delta,
                      "logprobs": self._chat_logprobs(logprobs) if logprobs is not None else None,
                      "finish_reason": finish}
            return {**self._head("chat.chunk", rid), "choices": [choice]}
        lp = None
        if logprobs is not None:
            prompt = job.prompts[index // job.n]
            lp = self._completion_logprobs(logprobs, job.logprobs or 0, len(prompt))  # type: ignore[arg-type]
        choice = {"index": index, "text": text or "", "logprobs": lp, "finish_reason": finish}
        return {**self._head("text", rid), "choices": [choice]}

    async def _stream(self, job: _Job, rid: str) -> AsyncIterator[str]:
        finished = False
        try:
            if job.chat:
                for index in range(job.n_rows):
                    yield _sse(self._chunk(job, rid, index, "", None, role=True))
            while True:
                event = await job.events.get()
                kind = event[0]
                if kind == "delta":
                    yield _sse(self._chunk(job, rid, event[1], event[2], None))
                elif kind == "finish":
                    yield _sse(self._chunk(job, rid, event[1], None if job.chat else "", event[2]))
                elif kind == "error":
                    yield _sse(event[1].body())
                    break
                else:
                    choices = sorted(event[1], key=lambda c: c.index)
                    if not job.live_stream:  # logprobs: one chunk per token, sent now
                        for c in choices:
                            offset = 0
                            for piece, entry in zip(c.pieces or [], c.logprobs or [], strict=True):
                                chunk = self._chunk(job, rid, c.index, piece, None, [entry])
                                if not job.chat:
                                    chunk["choices"][0]["logprobs"]["text_offset"] = [
                                        len(job.prompts[c.index // job.n]) + offset]
                                offset += len(entry[0])
                                yield _sse(chunk)
                            yield _sse(self._chunk(job, rid, c.index, None if job.chat else "", c.finish_reason))
                    if job.stream_usage:
                        yield _sse({**self._head("chat.chunk" if job.chat else "text", rid), "choices": [],
                                    "usage": self._job_usage(job, choices)})
                    break
            finished = True
            yield "data: [DONE]\n\n"
        finally:
            if not finished:
                job.cancelled.set()


def create_app(
    lm: LoadedModel,
    vectors_dir: Path | None,
    max_batch: int = 32,
    batch_window_ms: float = 10,
    max_context: int | None = None,
    *,
    default_max_tokens: int = 256,
) -> FastAPI:
    """The OpenAI-compatible app for ``lm`` (see the module docstring). The batching worker starts
    with the app (lifespan) or on the first request, and stops at shutdown."""
    if vectors_dir is not None and not Path(vectors_dir).is_dir():
        raise SteerlabError(f"--vectors {vectors_dir}: not a directory")
    if max_context is not None and max_context < 2:
        raise SteerlabError(f"--max-context {max_context}: expected at least 2 tokens")
    server = _Server(lm, Path(vectors_dir) if vectors_dir is not None else None, max_batch, batch_window_ms,
                     max_context, default_max_tokens)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        server.batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(server.batcher.stop)

    app = FastAPI(title="steerlab serve", version="1", lifespan=lifespan)
    app.state.steerlab = server

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        parts, param = [], None
        for err in errors[:5]:
            loc = list(err.get("loc", ()))[1:] if err.get("loc", ("",))[0] == "body" else list(err.get("loc", ()))
            if err.get("type") == "json_invalid":
                parts.append(f"malformed JSON body: {err.get('msg')}")
                continue
            where = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in loc).lstrip(".") or "body"
            param = param or where
            parts.append(f"{where}: {err.get('msg')}")
        return APIError(400, "; ".join(parts) or "invalid request body", param=param,
                        code="invalid_request").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return APIError(exc.status_code, str(exc.detail), kind, code=str(exc.status_code)).response()

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error").response()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": lm.name, **server.batcher.stats}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": lm.name, "object": "model", "created": server.created, "owned_by": "steerlab",
            "n_layers": lm.n_layers, "d_model": lm.d_model, "max_context": server.context,
            "device": str(lm.device), "dtype": str(lm.dtype).removeprefix("torch."),
        }]}

    @app.get("/v1/vectors")
    async def vectors() -> dict[str, Any]:
        data = await asyncio.to_thread(server.vectors.describe, lm)
        return {"object": "list", "directory": str(server.vectors.directory) if server.vectors.directory else None,
                "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest) -> Any:
        job = server.chat_job(body)
        return await server.respond(job)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        job = server.completion_job(body)
        return await server.respond(job)

    return app


def serve(
    lm: LoadedModel,
    vectors_dir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 32,
    batch_window_ms: float = 10,
    max_context: int | None = None,
    log_level: str = "info",
) -> None:
    """Serve ``lm`` until interrupted (blocking)."""
    import uvicorn

    os.environ.setdefault("STEERLAB_PROGRESS", "0")  # no progress bar per batch
    app = create_app(lm, vectors_dir, max_batch, batch_window_ms, max_context)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


@contextlib.contextmanager
def background_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0,
                      log_level: str = "warning") -> Iterator[str]:
    """Run ``app`` with uvicorn on a background thread; yields its base URL (``http://host:port``).
    ``port=0`` picks a free port. Used by the tests and ``bench/serve.py``."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="steerlab-serve-http",
                              daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise SteerlabError(f"the server did not start on {host}:{port}")
            time.sleep(0.01)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


__all__ = ["APIError", "Batcher", "VectorStore", "background_server", "create_app", "max_positions", "serve"]
