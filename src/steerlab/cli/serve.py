"""`steerlab serve`: an OpenAI-compatible server for a steered model (see steerlab.serve). Every flag is
a field of :class:`steerlab.serve.ServeConfig`, whose defaults the help shows."""

from __future__ import annotations

from pathlib import Path

import typer

from ..serve.config import API_KEY_ENV, DEFAULTS, ServeConfig
from .app import app
from .options import (
    AdapterOpt,
    DeviceOpt,
    DtypeOpt,
    EngineOpt,
    GpuMemoryOpt,
    MaxModelLenOpt,
    ModelOpt,
    PipelineParallelOpt,
    TensorParallelOpt,
    engine_config,
)

D = DEFAULTS


@app.command()
def serve(
    model: str = ModelOpt,
    vectors: Path = typer.Option(
        None,
        "--vectors",
        help="Directory of steering vectors (.safetensors/.gguf); a request names one by its file stem.",
    ),
    host: str = typer.Option(
        D.host, "--host", help="Address to listen on (0.0.0.0 for every interface: then set --api-key)."
    ),
    port: int = typer.Option(D.port, "--port", help="Port (0: any free port)."),
    api_key: str = typer.Option(
        None,
        "--api-key",
        envvar=API_KEY_ENV,
        show_default=False,
        help="Require 'Authorization: Bearer KEY' on every request but GET /health (401 otherwise).",
    ),
    max_batch: int = typer.Option(D.max_batch, "--max-batch", help="Most rows (requests x n) generated together."),
    batch_window_ms: float = typer.Option(
        D.batch_window_ms,
        "--batch-window-ms",
        help="Batch window: wait for more requests until none has come for this long (at most 5 windows).",
    ),
    max_queue: int = typer.Option(
        D.max_queue, "--max-queue", help="Most requests waiting for the model; beyond it 429 with Retry-After."
    ),
    max_context: int = typer.Option(
        None, "--max-context", help="Prompt + max_tokens limit (default: the model's context length)."
    ),
    max_prompt_tokens: int = typer.Option(
        D.max_prompt_tokens, "--max-prompt-tokens", help="Longest prompt in tokens (400 beyond)."
    ),
    max_tokens_limit: int = typer.Option(
        D.max_tokens_limit, "--max-tokens-limit", help="Largest max_tokens a request may ask for (400 beyond)."
    ),
    default_max_tokens: int = typer.Option(
        D.default_max_tokens,
        "--default-max-tokens",
        help="A chat request's max_tokens when it gives none (completions: 16).",
    ),
    max_n: int = typer.Option(
        D.max_n, "--max-n", help="Largest n (choices per prompt) a request may ask for (400 beyond)."
    ),
    max_steering_items: int = typer.Option(
        D.max_steering_items, "--max-steering-items", help="Most items in a request's steering list (400 beyond)."
    ),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    adapter: str = AdapterOpt,
    engine: str = EngineOpt,
    tensor_parallel_size: int = TensorParallelOpt,
    pipeline_parallel_size: int = PipelineParallelOpt,
    gpu_memory_utilization: float = GpuMemoryOpt,
    max_model_len: int = MaxModelLenOpt,
) -> None:
    """Serve a model with an OpenAI-compatible API (chat, completions, streaming, logprobs), with
    per-request steering: add ``"steering": [{"vector": NAME, "layer": 12, "coeff": 4}]`` to the body.
    Listens on 127.0.0.1 unless --host says otherwise; GET /health reports the queue.

    With --engine vllm the same API runs on vLLM's continuous batching (requests join the running batch
    at the next step), with its tensor and pipeline parallelism.

    Example:

        steerlab serve -m smollm2 --vectors vectors/ --port 8000 --api-key secret
    """
    from ..model.loading import load_model
    from ..serve import runner

    config = ServeConfig(
        vectors_dir=vectors,
        host=host,
        port=port,
        api_key=api_key,
        max_batch=max_batch,
        batch_window_ms=batch_window_ms,
        max_queue=max_queue,
        max_context=max_context,
        max_prompt_tokens=max_prompt_tokens,
        max_tokens_limit=max_tokens_limit,
        default_max_tokens=default_max_tokens,
        max_n=max_n,
        max_steering_items=max_steering_items,
    )
    engines = engine_config(engine, tensor_parallel_size, pipeline_parallel_size, gpu_memory_utilization, max_model_len)
    if engines.kind == "hf":
        runner.serve(load_model(model, device=device, dtype=dtype, adapter=adapter), config=config)
        return
    from ..engines.factory import make_engine

    with make_engine(engines, model, device=device, dtype=dtype, adapter=adapter) as vllm_engine:
        runner.serve(vllm_engine, config=config)
