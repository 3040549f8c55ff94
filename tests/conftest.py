"""Shared fixtures: tiny random models (session-scoped) and the embedded smollm2."""

from __future__ import annotations

import logging
import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("STEERLAB_PROGRESS", "0")
# typer lays `--help` out at COLUMNS, else at the width of the terminal pytest runs in: one width for
# every run, so that no help test depends on the terminal (steerlab's own messages ignore COLUMNS off a
# terminal; tests/cli/test_output_width.py sets it small to show that).
os.environ["COLUMNS"] = "100"

from tiny import make_tiny, save_tiny_for_vllm


class _DeprecationLogsAsWarnings(logging.Handler):
    """transformers announces some deprecations on its logger (``logger.warning_once``, e.g. reading
    ``output.past_key_values``) instead of with ``warnings``: re-issue those as FutureWarning, so the
    ``filterwarnings`` of pyproject.toml fail the test that reached them, as for every other one."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "deprecated" in message.lower():
            warnings.warn(message, FutureWarning, stacklevel=1)


logging.getLogger("transformers").addHandler(_DeprecationLogsAsWarnings())

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


# vLLM engines (tests/engines, tests/serve). A small token budget per forward: prompts of 18-60 tokens
# are prefilled in chunks of 16, so every test on this engine also runs under chunked prefill; blocks
# of 32 tokens (the smallest vLLM's CPU attention takes) make prefix-cache hits reachable past 32 tokens.
CHUNKED = {"max_num_batched_tokens": 16, "max_num_seqs": 16, "block_size": 32}


@pytest.fixture(scope="session")
def tiny_vllm_llama_dir(tmp_path_factory):
    """A tiny random Llama that vLLM's CPU kernels run (head size 32), saved with its tokenizer."""
    return save_tiny_for_vllm("llama", tmp_path_factory.mktemp("vllm-llama"))


@pytest.fixture(scope="session")
def tiny_vllm_qwen2_dir(tmp_path_factory):
    """The same for Qwen2."""
    return save_tiny_for_vllm("qwen2", tmp_path_factory.mktemp("vllm-qwen2"))


@pytest.fixture(scope="session")
def hf_llama(tiny_vllm_llama_dir):
    """That tiny Llama on the hf engine: the reference the vllm engine is compared with."""
    from steerlab.engines.hf import HfEngine
    from steerlab.model.loading import load_model

    return HfEngine(load_model(str(tiny_vllm_llama_dir)))


@pytest.fixture(scope="session")
def vllm_llama(tiny_vllm_llama_dir):
    """That tiny Llama on vLLM (fp32, chunked prefill, LoRA enabled), started once per session (~20 s)."""
    from steerlab.engines.base import EngineConfig
    from steerlab.engines.vllm.engine import VllmEngine

    engine = VllmEngine(
        str(tiny_vllm_llama_dir), EngineConfig("vllm", max_model_len=256, options=CHUNKED), enable_lora=True
    )
    yield engine
    engine.close()


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread (and do not fight other processes for cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
