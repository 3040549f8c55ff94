"""`steerlab serve`: an OpenAI-compatible server for a steered model (see steerlab.serve)."""

from __future__ import annotations

from pathlib import Path

import typer

from .. import serve as serve_module
from ..errors import SteerlabError
from ..model.loading import load_model
from .app import app
from .options import AdapterOpt, DeviceOpt, DtypeOpt, ModelOpt


@app.command()
def serve(
    model: str = ModelOpt,
    vectors: Path = typer.Option(None, "--vectors", help="Directory of steering vectors (.safetensors/.gguf); a request names one by its file stem."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for every interface)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="Most rows (requests x n) generated together."),
    batch_window_ms: float = typer.Option(10.0, "--batch-window-ms", min=0.0, help="Batch window: wait for more requests until none has come for this long (at most 5 windows)."),
    max_context: int = typer.Option(None, "--max-context", min=2, help="Prompt + max_tokens limit (default: the model's context length)."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    adapter: str = AdapterOpt,
) -> None:
    """Serve a model with an OpenAI-compatible API (chat, completions, streaming, logprobs), with
    per-request steering: add ``"steering": [{"vector": NAME, "layer": 12, "coeff": 4}]`` to the body.

    Example: steerlab serve -m smollm2 --vectors vectors/ --port 8000
    """
    if vectors is not None and not vectors.is_dir():
        raise SteerlabError(f"--vectors {vectors}: not a directory")
    lm = load_model(model, device=device, dtype=dtype, adapter=adapter)
    serve_module.serve(lm, vectors, host=host, port=port, max_batch=max_batch,
                       batch_window_ms=batch_window_ms, max_context=max_context)
