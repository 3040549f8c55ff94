"""Condition vectors (CAST): the mean prompt activation of positives minus that of negatives."""

from __future__ import annotations

import pytest
import torch

from steerlab.activations.capture import ChatSample, capture
from steerlab.errors import SteerlabError
from steerlab.extract.condition import extract_condition_vector

POSITIVES = ["how should I store fresh bread so it stays soft", "the quick brown fox", "bread fox dog", "soft bread"]
NEGATIVES = ["0 1 2 3 4 5", "drink water rest", "always back up your files"]


def test_condition_vector_is_the_mean_prompt_difference(tiny_llama):
    """Positives and negatives of different sizes: each side is its own mean (an independent capture)."""
    lm, pos, neg = tiny_llama, POSITIVES, NEGATIVES
    vec = extract_condition_vector(lm, pos, neg, system="be brief")
    assert vec.metadata["method"] == "condition" and vec.metadata["reduction"] == "prompt_avg"
    acts = {
        side: capture(lm, [ChatSample(p, system="be brief") for p in prompts], ["prompt_avg"])["prompt_avg"]
        for side, prompts in (("pos", pos), ("neg", neg))
    }
    expected = acts["pos"].double().mean(0) - acts["neg"].double().mean(0)
    assert torch.allclose(vec.data.double(), expected, atol=1e-5)
    with pytest.raises(SteerlabError, match="prompt_avg or prompt_last"):
        extract_condition_vector(lm, pos, neg, reduction="response_avg")
