import pytest
import torch

from steerlab import SteeringVector
from steerlab.errors import SteerlabError
from steerlab.steering.generation import expand_grid, generate, generate_batch
from steerlab.steering.steerer import SteeringSpec

PROMPTS = ["how should I store fresh bread so it stays soft", "yes", "answer briefly: the quick brown fox"]


@pytest.fixture(scope="module")
def vec(tiny_llama):
    torch.manual_seed(1)
    return SteeringVector(torch.randn(tiny_llama.n_layers, tiny_llama.d_model) * 2)


def test_per_row_coefficients_match_separate_runs(tiny_llama, vec):
    coeffs = [-3.0, 0.0, 1.5, 3.0]
    rows, row_coeffs = expand_grid(PROMPTS, coeffs)
    batched = generate_batch(
        tiny_llama, rows, steering=SteeringSpec(vec, 2, row_coeffs), max_new_tokens=6, batch_size=len(rows)
    )
    for i, (prompt, c) in enumerate(zip(rows, row_coeffs, strict=True)):
        alone = generate_batch(tiny_llama, [prompt], steering=SteeringSpec(vec, 2, c), max_new_tokens=6)[0]
        assert alone.token_ids == batched[i].token_ids, (prompt, c)


def test_batched_equals_unbatched_unsteered(tiny_any):
    batched = generate_batch(tiny_any, PROMPTS, max_new_tokens=5, batch_size=3)
    for prompt, b in zip(PROMPTS, batched, strict=True):
        assert generate_batch(tiny_any, [prompt], max_new_tokens=5)[0].token_ids == b.token_ids


def test_zero_coefficient_equals_unsteered(tiny_llama, vec):
    plain = generate(tiny_llama, PROMPTS, max_new_tokens=5)
    assert generate(tiny_llama, PROMPTS, steering=SteeringSpec(vec, "all", 0.0), max_new_tokens=5) == plain
    steered = generate(tiny_llama, PROMPTS, steering=SteeringSpec(vec, "all", 8.0), max_new_tokens=5)
    assert steered != plain


def test_sampling_is_seeded(tiny_llama):
    a = generate(tiny_llama, PROMPTS, max_new_tokens=6, temperature=1.0, seed=3)
    b = generate(tiny_llama, PROMPTS, max_new_tokens=6, temperature=1.0, seed=3)
    assert a == b


def test_logprobs_and_stop(tiny_llama):
    g = generate_batch(tiny_llama, ["yes"], max_new_tokens=4, top_logprobs=3)[0]
    assert len(g.logprobs) == g.n_new_tokens == len(g.top_logprobs)
    for lp, top, tok in zip(g.logprobs, g.top_logprobs, g.token_ids, strict=True):
        assert top[0][0] == tok and abs(top[0][1] - lp) < 1e-6  # greedy picks the top token
    text = g.text
    if len(text) > 1:
        cut = generate_batch(tiny_llama, ["yes"], max_new_tokens=4, stop=[text[1:]])[0]
        assert cut.text == text[:1] and cut.finish_reason == "stop"


def test_bad_input(tiny_llama, vec):
    with pytest.raises(SteerlabError, match="3 per-row coefficients given for 2 prompts"):
        generate(tiny_llama, PROMPTS[:2], steering=SteeringSpec(vec, 1, [1.0, 2.0, 3.0]))
    with pytest.raises(SteerlabError, match="no prompts"):
        generate(tiny_llama, [])
    with pytest.raises(SteerlabError, match="out of range"):
        generate(tiny_llama, PROMPTS, steering=SteeringSpec(vec, 17, 1.0))
    assert all(not b._forward_hooks for b in tiny_llama.blocks)


def test_automatic_batch_size_fills_memory_not_a_fixed_32(tiny_llama):
    from steerlab.steering.generation import auto_batch_size

    assert auto_batch_size(tiny_llama, 72, 100) == 72  # a CPU sweep of 72 rows runs as one batch
    assert auto_batch_size(tiny_llama, 5000, 100) == 512  # capped
    assert auto_batch_size(tiny_llama, 3, 100) == 3
