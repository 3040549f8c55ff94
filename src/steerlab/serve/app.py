"""``steerlab serve``: an OpenAI-compatible HTTP server for steered models (FastAPI + uvicorn).

Endpoints (all JSON; errors in the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``):

``GET /health``
    ``{"status": "ok"}``, the model, ``queue_depth`` (requests waiting for the model), ``running``,
    ``max_queue`` and batching counters. Never needs the API key.
``GET /v1/models``
    The served model (any ``model`` name in a request is accepted and ignored: one model is served).
``GET /v1/vectors``
    Every ``*.safetensors`` / ``*.gguf`` in the vectors directory: name (the file stem), n_layers,
    d_model, method, metadata, and whether it fits the served model (see :mod:`steerlab.serve.store`).
``POST /v1/chat/completions``, ``POST /v1/completions``
    ``max_tokens`` (chat: also ``max_completion_tokens``; default: completions 16 as in the OpenAI
    API, chat ``default_max_tokens`` = 256, both capped by the context), ``temperature`` (default 1.0
    as in the OpenAI API; 0 = greedy), ``top_p``, ``seed``, ``stop`` (string or list), ``n``,
    ``stream`` (+ ``stream_options.include_usage``), ``logprobs`` / ``top_logprobs`` (chat: bool +
    int 0..20; completions: int 0..20), and ``usage`` counts. Completions take a string or a list
    of strings (raw text, the tokenizer's special tokens added); chat messages go through the chat
    template (``developer`` is treated as ``system``).

Steering, per request, in the body (``extra_body`` with the openai client)::

    "steering": [{"vector": "evil", "layer": 12 | [10, 12] | "10-15" | "all", "coeff": 4.0,
                  "positions": "all|prompt|response", "operator": "add|ablate|cap",
                  "scale": "raw|unit", "ceiling": 1.0, "floor": -1.0}]

``vector`` is a file stem in the vectors directory; layer L is the output of decoder block L;
``ceiling``/``floor`` are for ``cap`` (which has no coefficient). Items apply in the order given.
A request without ``steering`` is unsteered.

Exposure, as vLLM's OpenAI server: the API key (:mod:`steerlab.serve.auth`; 401), a bounded queue
(429 with ``Retry-After`` beyond ``max_queue`` waiting requests), and size limits on prompt tokens,
``n``, ``max_tokens`` and steering items, answered with 400 before any model work
(:mod:`steerlab.serve.admission`). Batching: :mod:`steerlab.serve.batcher`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..model.loading import LoadedModel
from .admission import Admission
from .auth import APIKeyMiddleware
from .batcher import Batcher
from .config import ServeConfig, make_config
from .protocol import APIError, ChatCompletionRequest, CompletionRequest, validation_error
from .responses import Responder
from .store import VectorStore

log = logging.getLogger("steerlab.serve")


@dataclass
class ServerState:
    """What a running app holds (``app.state.steerlab``): its config, the vectors directory, the
    admission checks, the batching worker and the responder."""

    lm: Any
    config: ServeConfig
    vectors: VectorStore
    admission: Admission
    batcher: Any
    responder: Responder
    created: int


def create_app(
    lm: LoadedModel | Any, vectors_dir: Path | None = None, *, config: ServeConfig | None = None, **settings: Any
) -> FastAPI:
    """The OpenAI-compatible app serving ``lm`` (see the module docstring): a :class:`LoadedModel` (the
    ``hf`` engine's batching worker, :mod:`steerlab.serve.batcher`) or a
    :class:`~steerlab.engines.vllm.engine.VllmEngine` (vLLM's continuous batching,
    :mod:`steerlab.serve.continuous`); the API, limits and answers are the same. Settings come from
    ``config`` (default ``ServeConfig()``, whose API key is ``$STEERLAB_API_KEY``), then ``vectors_dir``
    and keyword ``settings`` named as :class:`ServeConfig` fields (``max_batch=8``, ``api_key="k"``);
    ``host``/``port`` are not used here (see :func:`steerlab.serve.serve`). The batching worker starts
    with the app (lifespan) or on the first request, and stops at shutdown.

    Raises SteerlabError for a vectors directory that does not exist or a setting out of range."""
    cfg = make_config(config, vectors_dir, **settings)
    vectors = VectorStore(cfg.vectors_dir)
    admission = Admission(lm, vectors, cfg)
    if getattr(lm, "kind", None) == "vllm":
        from .continuous import ContinuousBatcher

        batcher: Any = ContinuousBatcher(lm, cfg.max_batch, cfg.max_queue)
        device, dtype = "vllm", str(lm.llm.llm_engine.model_config.dtype).removeprefix("torch.")
    else:
        batcher = Batcher(lm, cfg.max_batch, cfg.batch_window_ms, admission.context, cfg.max_queue)
        device, dtype = str(lm.device), str(lm.dtype).removeprefix("torch.")
    server = ServerState(lm, cfg, vectors, admission, batcher, Responder(lm.name, batcher), int(time.time()))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.stop)

    app = FastAPI(title="steerlab serve", version="1", lifespan=lifespan)
    app.state.steerlab = server
    if cfg.api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=cfg.api_key)

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(list(exc.errors())).response()

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
        return {"status": "ok", "model": lm.name, **batcher.health()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": lm.name,
                    "object": "model",
                    "created": server.created,
                    "owned_by": "steerlab",
                    "n_layers": lm.n_layers,
                    "d_model": lm.d_model,
                    "max_context": admission.context,
                    "device": device,
                    "dtype": dtype,
                }
            ],
        }

    @app.get("/v1/vectors")
    async def list_vectors() -> dict[str, Any]:
        data = await asyncio.to_thread(vectors.describe, lm)
        return {"object": "list", "directory": str(vectors.directory) if vectors.directory else None, "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest) -> Any:
        return await server.responder.respond(admission.chat_job(body))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        return await server.responder.respond(admission.completion_job(body))

    return app
