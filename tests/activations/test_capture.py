"""Activation capture: batched == per-sample, reductions == hand computation, errors."""

import pytest
import torch

from steerlab import ChatSample, capture, mean_activations
from steerlab.activations.capture import Reduction
from steerlab.errors import SteerlabError
from steerlab.model.chat import encode_chat

REDUCTIONS = ["prompt_last", "prompt_avg", "response_avg", "first_k:2"]
LONG_Q = "how should I store fresh bread so it stays soft and what about the crust " * 3
SAMPLES = [
    ChatSample("hi", "yes"),
    ChatSample(LONG_Q, "drink water rest and see a doctor if the fever lasts " * 3, system="be brief"),
    ChatSample(
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "0 1 2"},
        ],
        "maybe no",
    ),
    ChatSample("the quick brown fox", "x"),  # one-token response: first_k:2 == response_avg
]


def lengths(lm, samples):
    return [len(encode_chat(lm.tokenizer, s.prompt, s.response, s.system).ids) for s in samples]


def per_sample(lm, samples, reductions, **kw):
    singles = [capture(lm, [s], reductions, batch_size=1, **kw) for s in samples]
    return {r: torch.cat([x[r] for x in singles]) for r in reductions}


def test_batched_equals_per_sample(tiny_any):
    lens = lengths(tiny_any, SAMPLES)
    assert max(lens) > 4 * min(lens)  # very different lengths: heavy left padding
    batched = capture(tiny_any, SAMPLES, REDUCTIONS, batch_size=len(SAMPLES))
    single = per_sample(tiny_any, SAMPLES, REDUCTIONS)
    for r in REDUCTIONS:
        assert batched[r].shape == (len(SAMPLES), tiny_any.n_layers, tiny_any.d_model)
        assert batched[r].dtype == torch.float32
        torch.testing.assert_close(batched[r], single[r], rtol=0, atol=1e-5, msg=r)
    # the rows are really different samples (not a broadcast of one)
    assert not torch.allclose(batched["prompt_avg"][0], batched["prompt_avg"][1])
    # a first_k window longer than the response is the whole response
    torch.testing.assert_close(batched["first_k:2"][3], batched["response_avg"][3], rtol=0, atol=0)


def test_mean_activations_is_mean_of_capture(tiny_any):
    acts = capture(tiny_any, SAMPLES, REDUCTIONS, batch_size=3)
    means = mean_activations(tiny_any, SAMPLES, REDUCTIONS, batch_size=3)
    for r in REDUCTIONS:
        assert means[r].shape == (tiny_any.n_layers, tiny_any.d_model)
        torch.testing.assert_close(means[r], acts[r].double().mean(0).float(), rtol=0, atol=1e-6)


def test_reductions_match_hidden_states(tiny_any):
    lm = tiny_any
    sample = SAMPLES[1]
    enc = encode_chat(lm.tokenizer, sample.prompt, sample.response, sample.system)
    p = enc.prompt_len
    with torch.no_grad():
        hs = lm.model(torch.tensor([enc.ids]), output_hidden_states=True).hidden_states
    reductions = [*REDUCTIONS, "first_k:7", "first_k"]
    acts = capture(lm, [sample], reductions)
    expected = {
        "prompt_last": lambda h: h[p - 1],
        "prompt_avg": lambda h: h[:p].mean(0),
        "response_avg": lambda h: h[p:].mean(0),
        "first_k:2": lambda h: h[p : p + 2].mean(0),
        "first_k:7": lambda h: h[p : p + 7].mean(0),
        "first_k:5": lambda h: h[p : p + 5].mean(0),  # default K
    }
    assert set(acts) == set(expected)
    # hidden_states[-1] has the final norm applied by transformers, so stop one layer short
    for layer in range(lm.n_layers - 1):
        h = hs[layer + 1][0].float()
        for name, fn in expected.items():
            torch.testing.assert_close(acts[name][0, layer], fn(h), rtol=0, atol=1e-5, msg=f"{name} layer {layer}")


def test_layer_subset_and_negative_layers(tiny_llama):
    full = capture(tiny_llama, SAMPLES, ["response_avg"])["response_avg"]
    sub = capture(tiny_llama, SAMPLES, ["response_avg"], layers=[1, -1])["response_avg"]
    assert sub.shape == (len(SAMPLES), 2, tiny_llama.d_model)
    torch.testing.assert_close(sub[:, 0], full[:, 1], rtol=0, atol=1e-6)
    torch.testing.assert_close(sub[:, 1], full[:, -1], rtol=0, atol=1e-6)


def test_response_reduction_needs_response(tiny_llama):
    samples = [ChatSample("hi", "yes"), ChatSample("no answer here")]
    with pytest.raises(SteerlabError, match="sample 1: a response reduction needs a non-empty"):
        capture(tiny_llama, samples, ["response_avg"])
    with pytest.raises(SteerlabError, match="sample 1"):
        capture(tiny_llama, samples, ["prompt_last", "first_k:3"])
    # prompt reductions do not need one
    out = capture(tiny_llama, samples, ["prompt_last"])["prompt_last"]
    assert torch.isfinite(out).all() and out.abs().sum() > 0


@pytest.mark.parametrize("bad", ["prompt_mean", "first_k:0", "first_k:x", "prompt_last:2", ""])
def test_bad_reduction(tiny_llama, bad):
    with pytest.raises(SteerlabError, match="--reduction"):
        capture(tiny_llama, SAMPLES, [bad])
    with pytest.raises(SteerlabError, match="--reduction"):
        Reduction.parse(bad)


def test_reduction_parse():
    assert Reduction.parse("first_k") == Reduction("first_k", 5)
    assert Reduction.parse("first_k:12").name == "first_k:12"
    assert Reduction.parse("prompt_last").needs_response is False
    assert Reduction.parse("first_k:3").needs_response is True


def test_capture_errors(tiny_llama):
    with pytest.raises(SteerlabError):
        capture(tiny_llama, [], ["prompt_last"])
    with pytest.raises(SteerlabError, match="--layer 4 is out of range"):
        capture(tiny_llama, SAMPLES, ["prompt_last"], layers=[4])


def max_row_scaled_error(a, b):
    """max |a - b| / max(1, max |b| over d_model), per (sample, layer) row."""
    scale = b.abs().amax(-1, keepdim=True).clamp(min=1.0)
    return float(((a - b).abs() / scale).max())


@pytest.mark.slow
def test_batched_equals_per_sample_smollm2(smollm2):
    batched = capture(smollm2, SAMPLES, REDUCTIONS, batch_size=len(SAMPLES))
    single = per_sample(smollm2, SAMPLES, REDUCTIONS)
    for r in REDUCTIONS:
        # smollm2 has residual activations of several hundred in a few dimensions; fp32 kernel
        # reassociation across batch shapes then moves values by ~1e-4 absolute (~1e-7 of the
        # row's scale), so the 1e-5 tolerance is taken relative to each row's largest value.
        assert max_row_scaled_error(batched[r], single[r]) < 1e-5, r
