"""Capture from shared prompts equals full sequences, on every tiny architecture."""

import torch

from steerlab.activations.capture import ChatSample, capture
from steerlab.steering.steerer import SteeringSpec, steer

QUESTIONS = ["how should I store bread", "is water wet and why does it feel that way"]
ANSWERS = ["in the fridge", "no it is a much longer answer than the other one", "yes"]
SAMPLES = [
    ChatSample(q, a, system="answer briefly" if i == 4 else None)
    for i, (q, a) in enumerate((q, a) for q in QUESTIONS for a in ANSWERS)
]
REDUCTIONS = ["prompt_last", "response_avg", "first_k:2"]


def _full(lm, samples, reductions, **kw):
    """The whole-sequence path: a coefficient-0 steerer (the identity) keeps hooks on the model."""
    with steer(lm, SteeringSpec(torch.zeros(lm.d_model), 0, 0.0)):
        return capture(lm, samples, reductions, **kw)


def test_shared_prompt_capture_equals_full_sequences(tiny_any):
    for batch_size in (1, 4):
        shared = capture(tiny_any, SAMPLES, REDUCTIONS, batch_size=batch_size)
        full = _full(tiny_any, SAMPLES, REDUCTIONS, batch_size=batch_size)
        assert set(shared) == set(REDUCTIONS)
        for name in REDUCTIONS:
            torch.testing.assert_close(shared[name], full[name], atol=1e-5, rtol=1e-5, msg=name)
    some = capture(tiny_any, SAMPLES, ["response_avg"], layers=[1, 2])["response_avg"]
    torch.testing.assert_close(some, full["response_avg"][:, [1, 2]], atol=1e-5, rtol=1e-5)


def test_each_distinct_prompt_runs_once(tiny_llama):
    """6 samples, 3 distinct prompts, batches of 4: block 0 runs for the prompt pass and 2 batches;
    a prompt reduction (prompt_avg) needs every prompt token: whole sequences, 2 batches."""
    calls = []
    handle = tiny_llama.blocks[0].register_forward_hook(lambda _m, _i, out: calls.append(out.shape))
    try:
        capture(tiny_llama, SAMPLES, ["response_avg"], batch_size=4)
        assert len(calls) == 3 and calls[0][0] == 3
        calls.clear()
        capture(tiny_llama, SAMPLES, ["response_avg", "prompt_avg"], batch_size=4)
        assert len(calls) == 2
    finally:
        handle.remove()


def test_prompts_only_last_token(tiny_any):
    prompts = [ChatSample(q) for q in QUESTIONS] + [ChatSample("the quick brown fox jumps", chat=False)]
    shared = capture(tiny_any, prompts, ["prompt_last"])["prompt_last"]
    torch.testing.assert_close(shared, _full(tiny_any, prompts, ["prompt_last"])["prompt_last"], atol=1e-5, rtol=1e-5)


def test_prompt_groups_run_one_at_a_time(tiny_llama, monkeypatch):
    """Prompt passes hold at most batch_size (and PREFIX_GROUP) distinct prompts, built lazily: the
    result is the same."""
    from steerlab.model import prefix_cache

    whole = capture(tiny_llama, SAMPLES, REDUCTIONS, batch_size=8)
    built = []
    original = prefix_cache.PrefixCache.build.__func__

    def spy(cls, lm, prefixes):
        built.append(len(prefixes))
        return original(cls, lm, prefixes)

    monkeypatch.setattr(prefix_cache.PrefixCache, "build", classmethod(spy))
    monkeypatch.setattr(prefix_cache, "PREFIX_GROUP", 2)
    small = capture(tiny_llama, SAMPLES, REDUCTIONS, batch_size=8)
    assert built == [2, 1]  # 3 distinct prompts, two at a time
    for name in REDUCTIONS:
        torch.testing.assert_close(small[name], whole[name], atol=1e-5, rtol=1e-5)
