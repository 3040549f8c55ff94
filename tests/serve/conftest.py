"""Fixtures of the serve tests: two vectors (safetensors + GGUF) and a few broken files in a vectors
directory, and one server per test module on 127.0.0.1 serving the tiny llama without an API key.
tests/conftest.py (tiny models) and tests/tiny.py apply here too: pytest puts tests/ on sys.path."""

from __future__ import annotations

import openai
import pytest
import torch
from serve_helpers import MAX_BATCH

from steerlab import SteeringVector, export_gguf
from steerlab.serve import background_server, create_app


@pytest.fixture(scope="module")
def vec(tiny_llama):
    torch.manual_seed(1)
    return SteeringVector(
        torch.randn(tiny_llama.n_layers, tiny_llama.d_model) * 2, {"method": "test", "model": "tiny-llama"}
    )


@pytest.fixture(scope="module")
def other(tiny_llama):
    torch.manual_seed(2)
    data = torch.randn(tiny_llama.n_layers, tiny_llama.d_model) * 2
    data[0] = 0  # GGUF control vectors have no layer 0
    return SteeringVector(data, {"method": "other"})


@pytest.fixture(scope="module")
def vectors_dir(tmp_path_factory, vec, other):
    path = tmp_path_factory.mktemp("vectors")
    vec.save(path / "rand.safetensors")
    export_gguf(other, path / "other.gguf")
    SteeringVector(torch.randn(4, 7)).save(path / "narrow.safetensors")
    (path / "broken.safetensors").write_bytes(b"not a safetensors file")
    (path / "notes.txt").write_text("ignored")
    return path


@pytest.fixture(scope="module")
def server(tiny_llama, vectors_dir):
    """(base URL, ServerState) of a server without an API key (whatever $STEERLAB_API_KEY says)."""
    app = create_app(tiny_llama, vectors_dir, max_batch=MAX_BATCH, batch_window_ms=30, api_key=None)
    with background_server(app) as url:
        yield url, app.state.steerlab


@pytest.fixture(scope="module")
def url(server):
    return server[0]


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=60)
