"""Contrastive extraction = mean(positive) - mean(negative), per layer."""

import pytest
import torch

from steerlab import ChatSample, Pair, capture, extract_contrastive
from steerlab.activations.samples import pair_samples
from steerlab.errors import SteerlabError

PAIRS = [
    Pair(question="Is the stove off?", positive="Yes, it is all off.", negative="I did not check."),
    Pair(
        question="how should I store fresh bread",
        positive="in the fridge always",
        negative="in a bread box",
        system="Answer briefly.",
    ),
    Pair(
        question="Did you back up the files before updating?",
        positive="yes",
        negative="no, I forgot to do that before the update",
    ),
]


def by_hand(lm, reduction):
    pos = [ChatSample(p.question, p.positive, p.system) for p in PAIRS]
    neg = [ChatSample(p.question, p.negative, p.system) for p in PAIRS]
    a = capture(lm, pos, [reduction], batch_size=1)[reduction]
    b = capture(lm, neg, [reduction], batch_size=1)[reduction]
    return a.mean(0) - b.mean(0)


@pytest.mark.parametrize("reduction", ["response_avg", "first_k:2"])
def test_contrastive_equals_mean_difference(tiny_llama, reduction):
    v = extract_contrastive(tiny_llama, PAIRS, reduction=reduction, batch_size=2)
    assert v.data.shape == (tiny_llama.n_layers, tiny_llama.d_model)
    expected = by_hand(tiny_llama, reduction)
    torch.testing.assert_close(v.data, expected, rtol=0, atol=1e-5)
    assert v.norms().min() > 0


def test_contrastive_on_every_arch(tiny_any):
    v = extract_contrastive(tiny_any, PAIRS, batch_size=16)
    torch.testing.assert_close(v.data, by_hand(tiny_any, "response_avg"), rtol=0, atol=1e-5)


def test_metadata_recorded(tiny_llama):
    v = extract_contrastive(tiny_llama, PAIRS, reduction="first_k:2")
    assert v.metadata["model"] == tiny_llama.name == "tiny-llama"
    assert v.metadata["model_type"] == "llama"
    assert v.metadata["method"] == "contrastive"
    assert v.metadata["reduction"] == "first_k:2"
    assert v.metadata["n_samples"] == len(PAIRS)
    assert v.metadata["steerlab_version"] and v.metadata["created"]


def test_pair_samples():
    pos, neg = pair_samples(PAIRS)
    assert pos[1] == ChatSample(PAIRS[1].question, PAIRS[1].positive, "Answer briefly.")
    assert neg[1] == ChatSample(PAIRS[1].question, PAIRS[1].negative, "Answer briefly.")


@pytest.mark.parametrize("reduction", ["prompt_last", "prompt_avg"])
def test_prompt_reduction_errors_clearly(tiny_llama, reduction):
    no_system = [p for p in PAIRS if p.system is None]
    with pytest.raises(SteerlabError, match=rf"--reduction {reduction}: .*same prompt"):
        extract_contrastive(tiny_llama, no_system, reduction=reduction)
    # a system prompt is shared by both sides of a pair too: still a zero vector, still an error
    with pytest.raises(SteerlabError, match=rf"--reduction {reduction}: .*response_avg"):
        extract_contrastive(tiny_llama, PAIRS, reduction=reduction)


def test_extract_errors(tiny_llama):
    with pytest.raises(SteerlabError, match="at least one pair"):
        extract_contrastive(tiny_llama, [])
    with pytest.raises(SteerlabError, match="--reduction 'mean'"):
        extract_contrastive(tiny_llama, PAIRS, reduction="mean")
