"""The vllm engine on the embedded SmolLM2-135M (fp32, CPU) against the hf engine: greedy generations under
steering agree row for row (at least 95%: a row may part at a float tie), and behaviour margins agree to
1e-3 nats/token."""

from __future__ import annotations

import pytest
import torch

from steerlab.engines.base import EngineConfig
from steerlab.engines.hf import HfEngine
from steerlab.evaluate.margin import condition_margins
from steerlab.formats.pairs import builtin_pairs_path, load_pairs
from steerlab.steering.steerer import SteeringSpec

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

LAYER = 20


def test_generations_and_margins_equal_the_hf_engine(smollm2):
    from steerlab.engines.vllm.engine import VllmEngine

    reference = HfEngine(smollm2)
    pairs = load_pairs(builtin_pairs_path("deception"), split="heldout")
    questions = [p.question for p in pairs[:16]]
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(smollm2.d_model, generator=gen)
    norms = reference.mean_residual_norms(questions[:4])
    coeffs = [-0.5, 0.0, 0.5]  # times the mean residual norm at the layer (scale relative)
    rows = [q for _ in coeffs for q in questions]
    spec = SteeringSpec(direction, LAYER, [c for c in coeffs for _ in questions], scale="relative")
    with VllmEngine("smollm2", EngineConfig("vllm", max_model_len=512)) as engine:
        kwargs = dict(steering=spec, max_new_tokens=12, top_logprobs=2, reference_norms=norms)
        ours, theirs = engine.generate(rows, **kwargs), reference.generate(rows, **kwargs)
        differ = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a.token_ids != b.token_ids]
        for i in differ:  # where the two part: the two best tokens' log-probabilities on each side
            a, b = ours[i], theirs[i]
            j = next(k for k, (x, y) in enumerate(zip(a.token_ids, b.token_ids, strict=False)) if x != y)
            print(f"row {i} (coeff {spec.coeff[i]:+}): parts at token {j}: {a.top_logprobs[j]} vs {b.top_logprobs[j]}")
        assert len(differ) <= 0.05 * len(rows), differ
        assert len({g.text for g in ours}) > len(questions)  # the steering changed the answers
        conditions = [[SteeringSpec(direction, LAYER, 1.0, scale="relative")], []]
        on_vllm = condition_margins(engine, pairs[:12], conditions, [-0.5, 0.5], reference_norms=norms)
    on_hf = condition_margins(reference, pairs[:12], conditions, [-0.5, 0.5], reference_norms=norms)
    for a, b in zip(on_vllm, on_hf, strict=True):
        torch.testing.assert_close(a.per_pair, b.per_pair, atol=1e-3, rtol=0)
    assert on_vllm[0].mean[0] != on_vllm[0].mean[1]  # steered margins move with the coefficient
