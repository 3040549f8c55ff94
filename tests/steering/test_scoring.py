"""The shared-prompt path of response_logprobs equals full sequences, steered or not, on every
tiny architecture; it is taken exactly when no spec steers the prompt; the shared cache is left as
it was."""

import pytest
import torch
from tiny import make_tokenizer
from transformers import Gemma2Config, Gemma2ForCausalLM

from steerlab import SteeringVector
from steerlab.activations.capture import ChatSample
from steerlab.model import prefix_cache
from steerlab.model.chat import encode_chat
from steerlab.model.loading import wrap_model
from steerlab.model.prefix_cache import PrefixCache
from steerlab.steering.scoring import response_logprobs
from steerlab.steering.steerer import SteeringSpec

QUESTIONS = ["how should I store bread", "yes or no", "is water wet and why does it feel that way"]
ANSWERS = ["in the fridge", "no it is a much longer answer than the other one", "yes", "box"]
SAMPLES = [
    ChatSample(q, a, system="answer briefly" if i % 3 == 2 else None)
    for i, (q, a) in enumerate((q, a) for q in QUESTIONS for a in ANSWERS)
]


def _both(lm, samples, specs=(), row_coeffs=None, batch_size=5):
    shared = response_logprobs(lm, samples, specs, row_coeffs, batch_size)
    full = response_logprobs(lm, samples, specs, row_coeffs, batch_size, share_prompts=False)
    return shared, full


def _specs(lm):
    torch.manual_seed(0)
    vec = SteeringVector(torch.randn(lm.n_layers, lm.d_model))
    n = len(SAMPLES)
    return {
        "add": [SteeringSpec(vec, 1, 2.0, positions="response")],
        "per-row add, all layers": [SteeringSpec(vec, "all", torch.linspace(-2, 2, n), positions="response")],
        "ablate": [SteeringSpec(vec, 2, operator="ablate", positions="response")],
        "cap": [SteeringSpec(vec, 1, operator="cap", ceiling=0.0, positions="response")],
        "two specs on their own rows": [
            SteeringSpec(vec, 1, 3.0, positions="response", rows=list(range(0, n, 2))),
            SteeringSpec(-vec, "0-2", 1.5, positions="response", rows=list(range(1, n, 2))),
        ],
    }


def test_shared_prompts_equal_full_sequences_unsteered(tiny_any):
    for batch_size in (1, 4, 64):
        shared, full = _both(tiny_any, SAMPLES, batch_size=batch_size)
        torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)


def test_shared_prompts_equal_full_sequences_steered(tiny_any):
    unsteered = response_logprobs(tiny_any, SAMPLES)
    for name, specs in _specs(tiny_any).items():
        shared, full = _both(tiny_any, SAMPLES, specs)
        torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5, msg=name)
        assert (shared - unsteered).abs().max() > 1e-4, name  # the steering acted


def test_shared_prompts_with_a_sliding_window_shorter_than_the_prompt():
    """Gemma 2 alternates sliding-window layers; a window of 4 tokens is shorter than every prompt."""
    tok = make_tokenizer()
    config = Gemma2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        sliding_window=4,
    )
    torch.manual_seed(0)
    lm = wrap_model(Gemma2ForCausalLM(config).eval(), tok, name="tiny-gemma2-window4")
    assert min(encode_chat(tok, s.prompt, s.response).prompt_len for s in SAMPLES) > 8
    vec = SteeringVector(torch.randn(lm.n_layers, lm.d_model))
    for specs in ((), [SteeringSpec(vec, 1, 2.0, positions="response")]):
        shared, full = _both(lm, SAMPLES, specs)
        torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)


def test_each_distinct_prompt_runs_once(tiny_llama, monkeypatch):
    """A sweep over 3 coefficients of 12 samples (6 distinct prompts: 3 questions, with and without a
    system prompt) runs each distinct prompt once, in prompt passes of at most ``batch_size``
    prompts; ``all``/``prompt`` positions steer the prompt itself: whole sequences, no prompt pass."""
    built = []
    original = PrefixCache.build.__func__

    def spy(cls, lm, prefixes):
        built.append(len(prefixes))
        return original(cls, lm, prefixes)

    monkeypatch.setattr(PrefixCache, "build", classmethod(spy))
    vec = SteeringVector(torch.randn(tiny_llama.n_layers, tiny_llama.d_model))
    samples = SAMPLES * 3
    coeffs = [c for c in (-1.0, 0.0, 1.0) for _ in SAMPLES]
    response_logprobs(tiny_llama, samples, [SteeringSpec(vec, 1, positions="response")], coeffs, batch_size=4)
    distinct = {(s.prompt, s.system) for s in SAMPLES}
    assert len(distinct) == 6 and built == [4, 2]
    for positions in ("all", "prompt"):
        response_logprobs(tiny_llama, samples, [SteeringSpec(vec, 1, positions=positions)], coeffs, batch_size=4)
    assert built == [4, 2]


def test_padding_positions_stay_inside_the_model(one_thread):
    """GPT-2 has 256 learned positions here: a long prompt with a short answer batched with a short
    prompt and a long answer must not give the first row's padding positions past 255."""
    from tiny import make_tiny

    lm = make_tiny("gpt2")
    long_prompt, long_answer = "the quick brown fox " * 30, "drink water and rest " * 10
    samples = [ChatSample(long_prompt, "yes"), ChatSample("yes or no", long_answer)]
    encoded = [encode_chat(lm.tokenizer, s.prompt, s.response) for s in samples]
    assert max(len(e.ids) for e in encoded) <= 256 < encoded[0].prompt_len + len(encoded[1].ids)
    shared, full = _both(lm, samples)
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)


def test_caches_other_than_key_value_layers_use_whole_sequences(tiny_llama):
    from transformers.cache_utils import DynamicCache

    from steerlab.model.prefix_cache import selectable

    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        cache = tiny_llama.model(ids, use_cache=True).past_key_values
    assert isinstance(cache, DynamicCache) and selectable(cache)

    class StateLayer:  # e.g. a linear-attention layer: rows of its state would not be selected
        pass

    cache.layers[1] = StateLayer()
    assert not selectable(cache) and not selectable(None) and not selectable(DynamicCache())


def test_prompt_groups_split_without_changing_results(tiny_llama, monkeypatch):
    whole = response_logprobs(tiny_llama, SAMPLES, batch_size=3)
    monkeypatch.setattr(prefix_cache, "PREFIX_GROUP", 2)
    torch.testing.assert_close(response_logprobs(tiny_llama, SAMPLES, batch_size=3), whole, atol=1e-6, rtol=1e-6)


def test_continuing_rows_leaves_the_shared_cache_unchanged(tiny_any):
    encoded = [encode_chat(tiny_any.tokenizer, s.prompt, s.response, s.system) for s in SAMPLES[:4]]
    cache = PrefixCache.build(tiny_any, [e.ids[: e.prompt_len - 1] for e in encoded[:1]])
    assert cache is not None
    tails = [e.ids[e.prompt_len - 1 :] for e in encoded]  # same prompt, four answers
    first, _ = cache.continue_rows(tiny_any, torch.zeros(4, dtype=torch.long), tails)
    again, mask = cache.continue_rows(tiny_any, torch.zeros(4, dtype=torch.long), tails)
    assert torch.equal(first, again)
    assert mask.sum(-1).tolist() == [len(t) for t in tails]


def _rows_seen(module, counter, key):
    def hook(_module, _inputs, output):
        counter[key] += (output[0] if isinstance(output, tuple) else output).shape[0]

    return module.register_forward_hook(hook)


def test_blocks_below_the_steered_layer_run_once_per_sequence(tiny_any):
    """Steering at layer 2 of 4: blocks 0-1 run for the prompt pass and once per distinct sequence,
    not once per steered row (blocks 2-3 run for the steered rows); the margins equal full sequences."""
    vec = SteeringVector(torch.randn(tiny_any.n_layers, tiny_any.d_model))
    samples = SAMPLES * 3
    coeffs = [c for c in (-2.0, 1.0, 3.0) for _ in SAMPLES]
    spec = [SteeringSpec(vec, 2, positions="response")]
    counter = {"low": 0, "high": 0}
    handles = [
        _rows_seen(next(tiny_any.blocks[1].children()), counter, "low"),
        _rows_seen(next(tiny_any.blocks[3].children()), counter, "high"),
    ]
    try:
        shared = response_logprobs(tiny_any, samples, spec, coeffs, batch_size=4)
    finally:
        for h in handles:
            h.remove()
    prompts = len({(s.prompt, s.system) for s in SAMPLES})
    # rows through block 1: each prompt once, each distinct sequence once; through block 3: each
    # prompt once, then every steered row (the unsteered pass stops after block 1)
    assert counter == {"low": prompts + len(SAMPLES), "high": prompts + len(samples)}
    full = response_logprobs(tiny_any, samples, spec, coeffs, batch_size=4, share_prompts=False)
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)
    assert all("forward" not in block.__dict__ for block in tiny_any.blocks)


def test_skipped_blocks_are_restored_on_errors(tiny_llama):
    from steerlab.model.prefix_cache import skipped_blocks

    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        hidden = {}
        handle = tiny_llama.blocks[1].register_forward_hook(lambda _m, _i, out: hidden.update(h=out))
        expected = tiny_llama.model(ids).logits
        handle.remove()
        with skipped_blocks(tiny_llama, 2, hidden["h"]):
            torch.testing.assert_close(tiny_llama.model(ids).logits, expected, atol=1e-6, rtol=1e-6)
        with pytest.raises(RuntimeError, match="boom"), skipped_blocks(tiny_llama, 3, hidden["h"]):
            raise RuntimeError("boom")
    assert all("forward" not in block.__dict__ for block in tiny_llama.blocks)
    with torch.no_grad():
        torch.testing.assert_close(tiny_llama.model(ids).logits, expected)
