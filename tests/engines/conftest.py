"""vLLM engines for the engine tests, started once per module (each start costs ~20 s on 2 CPU cores)."""

from __future__ import annotations

import pytest
from tiny import save_tiny_for_vllm

from steerlab.engines.base import EngineConfig
from steerlab.engines.hf import HfEngine
from steerlab.model.loading import load_model

# A small token budget per forward: prompts of 18-60 tokens are prefilled in chunks of 16, so every test
# here also runs under chunked prefill; blocks of 32 tokens (the smallest vLLM's CPU attention takes)
# make prefix-cache hits reachable for prompts past 32 tokens.
CHUNKED = {"max_num_batched_tokens": 16, "max_num_seqs": 16, "block_size": 32}


@pytest.fixture(scope="session")
def tiny_vllm_llama_dir(tmp_path_factory):
    return save_tiny_for_vllm("llama", tmp_path_factory.mktemp("vllm-llama"))


@pytest.fixture(scope="session")
def tiny_vllm_qwen2_dir(tmp_path_factory):
    return save_tiny_for_vllm("qwen2", tmp_path_factory.mktemp("vllm-qwen2"))


@pytest.fixture(scope="session")
def hf_llama(tiny_vllm_llama_dir):
    """The same tiny Llama on the hf engine: the reference."""
    return HfEngine(load_model(str(tiny_vllm_llama_dir)))


@pytest.fixture(scope="module")
def vllm_llama(tiny_vllm_llama_dir):
    """The tiny Llama on vLLM (fp32, chunked prefill, LoRA enabled)."""
    from steerlab.engines.vllm.engine import VllmEngine

    engine = VllmEngine(
        str(tiny_vllm_llama_dir), EngineConfig("vllm", max_model_len=256, options=CHUNKED), enable_lora=True
    )
    yield engine
    engine.close()
