"""Integration: a contrastive deception vector from the built-in pairs steers smollm2."""

import itertools

import pytest

from steerlab import extract_contrastive, load_pairs
from steerlab.evaluate.margin import behaviour_margin
from steerlab.formats.pairs import builtin_pairs_path
from steerlab.steering.steerer import SteeringSpec

COEFFS = [-4.0, -2.0, 0.0, 2.0, 4.0]


@pytest.mark.slow
def test_contrastive_vector_moves_heldout_margin_monotonically(smollm2):
    pairs = builtin_pairs_path("deception")
    vector = extract_contrastive(smollm2, load_pairs(pairs, split="train")[:48], batch_size=24)
    held = load_pairs(pairs, split="heldout")[:16]
    result = behaviour_margin(smollm2, held, SteeringSpec(vector, 10), coeffs=COEFFS, batch_size=40)
    means = result.mean
    assert all(a < b for a, b in itertools.pairwise(means)), means
    assert means[-1] - means[0] > 0.05, means
