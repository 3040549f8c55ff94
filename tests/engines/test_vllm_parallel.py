"""The vllm engine under tensor parallel 2 x pipeline parallel 2 (four processes, tiny Qwen2) on the CPU:
both tensor-parallel ranks of a stage steer alike, each pipeline stage steers the layers it holds, and
the results equal the hf engine's (which equals vLLM on one process: tests/engines/test_vllm_engine.py).
One engine checks both kinds of parallelism: each start costs tens of seconds on 2 cores."""

from __future__ import annotations

import pytest
import torch

from steerlab.activations.capture import ChatSample
from steerlab.engines.base import EngineConfig
from steerlab.engines.hf import HfEngine
from steerlab.errors import SteerlabError
from steerlab.model.chat import encode_chat
from steerlab.model.loading import load_model
from steerlab.steering.steerer import SteeringSpec

pytestmark = pytest.mark.vllm

PROMPTS = ["how should I store fresh bread so it stays soft", "is water wet", "answer yes or no: is the sky blue"]


def _specs() -> list[SteeringSpec]:
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(128, generator=gen)
    v = v / v.norm() * 6.0
    return [
        SteeringSpec(v, 3, [2.0, -2.0, 0.0], positions="response"),  # last stage under pipeline parallel
        SteeringSpec(v, 1, 1.0, operator="ablate", positions="all", rows=[0, 2]),  # first stage
    ]


def test_tensor_and_pipeline_parallel_equal_one_process(tiny_vllm_qwen2_dir):
    from steerlab.engines.vllm.engine import VllmEngine

    path = tiny_vllm_qwen2_dir
    reference = HfEngine(load_model(str(path)))
    sizes = {"tensor_parallel_size": 2, "pipeline_parallel_size": 2}
    with VllmEngine(str(path), EngineConfig("vllm", max_model_len=256, **sizes)) as engine:
        ranks = engine.statuses
        # two stages of two tensor-parallel ranks each; a stage's ranks hold the same layers
        assert sorted((s["tp"], s["pp"]) for s in ranks) == [(2, 2)] * 4
        assert sorted(tuple(s["layers"]) for s in ranks) == [(0, 1), (0, 1), (2, 3), (2, 3)]
        specs = _specs()
        ours = engine.generate(PROMPTS, steering=specs, max_new_tokens=8, top_logprobs=1)
        theirs = reference.generate(PROMPTS, steering=specs, max_new_tokens=8, top_logprobs=1)
        for a, b in zip(ours, theirs, strict=True):
            assert a.token_ids == b.token_ids
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0)
        samples = [ChatSample(p, "an answer of a few words") for p in PROMPTS]
        torch.testing.assert_close(
            engine.response_logprobs(samples, specs), reference.response_logprobs(samples, specs), atol=1e-4, rtol=0
        )
        # block outputs from every rank or stage, merged: layer L = hidden_states[L + 1]
        caps = engine.capture([ChatSample(PROMPTS[0])], [0, 2], full=True)
        ids = torch.tensor([encode_chat(reference.tokenizer, PROMPTS[0]).ids])
        with torch.no_grad():
            hidden = reference.lm.model(ids, output_hidden_states=True).hidden_states
        for layer in (0, 2):
            got = torch.stack([caps[0].layers[layer]["full"][p] for p in range(ids.shape[1])])
            torch.testing.assert_close(got, hidden[layer + 1][0], atol=1e-4, rtol=1e-4)
    # leaving the block shut every process down; closing again is harmless, using it a clear error
    engine.close()
    with pytest.raises(SteerlabError, match="after close"):
        engine.generate(PROMPTS[:1], max_new_tokens=2)
