"""Shared fixtures: tiny random models (session-scoped) and the embedded smollm2."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("STEERLAB_PROGRESS", "0")

from tiny import make_tiny

ARCHS = ("llama", "qwen2", "gpt2", "gemma2")


@pytest.fixture(scope="session", params=ARCHS)
def tiny_any(request):
    """Each tiny architecture in turn."""
    return make_tiny(request.param)


@pytest.fixture(scope="session")
def tiny_llama():
    return make_tiny("llama")


@pytest.fixture(scope="session")
def tiny_gemma():
    return make_tiny("gemma2")


@pytest.fixture(scope="session")
def smollm2():
    """The embedded default model (converted once into the user cache)."""
    from steerlab import load_model

    return load_model("smollm2")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The tiny llama saved as a local model directory (model + tokenizer), for load_model/CLI."""
    lm = make_tiny("llama")
    path = tmp_path_factory.mktemp("tiny-llama-dir")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path
