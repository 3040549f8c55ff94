"""Trait x trait geometry for the multi-trait study (docs/design.md §5, §7): the cosine between every
two persona vectors at every layer, read against the random-direction band, with intervals from
resampling the pairs behind each vector and each vector's split-half reliability.

Layer L is the output of decoder block L. Pure except :func:`pair_differences` (one forward pass).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..activations.capture import ChatSample, capture
from ..evaluate.geometry import pair_key, random_cosine_band, split_half_reliability, trait_matrix
from ..evaluate.statistics import resampled_cosine_ci
from ..model.loading import LoadedModel


def pair_differences(
    lm: LoadedModel, pairs: Sequence[dict[str, Any]], reduction: str, batch_size: int = 16
) -> torch.Tensor:
    """Per-pair (positive − negative) activations ``[n_pairs, n_layers, d_model]`` of persona pairs
    (``pairs.json`` rows: question, positive/negative answer and their system prompts), reduced by
    ``reduction``; their mean over pairs is the persona vector of that reduction."""
    pos = [ChatSample(p["question"], p["positive"], p["pos_system"]) for p in pairs]
    neg = [ChatSample(p["question"], p["negative"], p["neg_system"]) for p in pairs]
    return (
        capture(lm, pos, [reduction], batch_size=batch_size)[reduction]
        - capture(lm, neg, [reduction], batch_size=batch_size)[reduction]
    )


def trait_cosines(
    diffs: Mapping[str, torch.Tensor],
    n_resamples: int = 1000,
    seed: int = 0,
    n_splits: int = 50,
) -> dict[str, Any]:
    """Cosine between every two traits' vectors (the means of ``diffs[name]`` ``[n, n_layers, d]``).

    Returns a JSON-able dict: ``names``; ``layers`` (0..n_layers-1); ``matrix`` ``[n_layers][k][k]``
    (:func:`~steerlab.evaluate.geometry.trait_matrix` per layer); ``random_band``
    (:func:`~steerlab.evaluate.geometry.random_cosine_band` for d_model: |cos| of unrelated
    directions lies below ``band`` 95% of the time); ``ci95`` ``{"a|b": [[lo, hi]] * n_layers}`` (seeded
    bootstrap over each vector's pairs, :func:`~steerlab.evaluate.statistics.resampled_cosine_ci`;
    pairs where a trait has fewer than 2 pairs are left out); ``reliability`` ``{name: [split-half
    cosine] * n_layers}`` (names with fewer than 2 pairs left out); ``n_pairs`` per name.
    """
    names = list(diffs)
    vectors = {name: d.double().mean(0) for name, d in diffs.items()}
    n_layers, d_model = next(iter(vectors.values())).shape
    matrices = [trait_matrix(vectors, layer)[1].tolist() for layer in range(n_layers)]
    ci = {}
    for a, b in itertools.combinations(names, 2):
        if len(diffs[a]) >= 2 and len(diffs[b]) >= 2:
            ci[pair_key(a, b)] = resampled_cosine_ci(diffs[a], diffs[b], n_resamples, seed).tolist()
    reliability = {
        name: split_half_reliability(d, n_splits=n_splits, seed=seed).mean.tolist()
        for name, d in diffs.items()
        if len(d) >= 2
    }
    return {
        "names": names,
        "layers": list(range(n_layers)),
        "matrix": matrices,
        "random_band": random_cosine_band(int(d_model), seed=seed),
        "ci95": ci,
        "reliability": reliability,
        "n_pairs": {name: len(d) for name, d in diffs.items()},
    }
