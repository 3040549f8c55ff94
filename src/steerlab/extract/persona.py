"""Persona vectors (Chen et al. 2025, arXiv:2507.21509): pairing judged answers into effective
pairs, and the mean (positive - negative) activation difference over those pairs.

An effective pair is one question answered under a positive and a negative system prompt, where the
positive answer shows the trait (judge score >= threshold), the negative one does not
(< 100 - threshold) and both are coherent, as in persona-vectors' filtering.
"""

from __future__ import annotations

from typing import Any

from ..activations.capture import ChatSample, iter_activations
from ..model.loading import LoadedModel
from ..vectors.vector import SteeringVector
from .mean_difference import MeanDifference, vector_metadata

PERSONA_REDUCTIONS = ("response_avg", "prompt_avg", "prompt_last")


def _paired(judged: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(positive, negative) rows paired by (instruction, question, sample)."""
    by_key: dict[tuple, dict[str, dict[str, Any]]] = {}
    for row in judged:
        by_key.setdefault((row["instruction"], row["question_index"], row["sample"]), {})[row["kind"]] = row
    return [(p["pos"], p["neg"]) for p in by_key.values() if "pos" in p and "neg" in p]


def _pair_doc(pos: dict[str, Any], neg: dict[str, Any]) -> dict[str, Any]:
    return {
        "question": pos["question"],
        "pos_system": pos["system"],
        "neg_system": neg["system"],
        "positive": pos["response"],
        "negative": neg["response"],
        "pos_score": pos.get("trait_score"),
        "neg_score": neg.get("trait_score"),
    }


def all_pairs(judged: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every (positive, negative) pair, unfiltered (persona-vectors' no-filter ablation)."""
    return [_pair_doc(pos, neg) for pos, neg in _paired(judged)]


def effective_pairs(judged: list[dict[str, Any]], threshold: float, min_coherence: float) -> dict[str, Any]:
    """Pair positive and negative answers by (instruction, question, sample) and keep those where the
    positive shows the trait (>= threshold), the negative does not (< 100 - threshold) and both are
    coherent (>= min_coherence). Items with a None score are dropped (counted)."""
    kept, counts = (
        [],
        {
            "candidates": 0,
            "unscored": 0,
            "pos_below_threshold": 0,
            "neg_above_threshold": 0,
            "incoherent": 0,
            "effective": 0,
        },
    )
    for pos, neg in _paired(judged):
        counts["candidates"] += 1
        scores = (pos["trait_score"], neg["trait_score"], pos["coherence"], neg["coherence"])
        if any(s is None for s in scores):
            counts["unscored"] += 1
        elif pos["trait_score"] < threshold:
            counts["pos_below_threshold"] += 1
        elif neg["trait_score"] >= 100 - threshold:
            counts["neg_above_threshold"] += 1
        elif min(pos["coherence"], neg["coherence"]) < min_coherence:
            counts["incoherent"] += 1
        else:
            counts["effective"] += 1
            kept.append(_pair_doc(pos, neg))
    return {"pairs": kept, "counts": counts}


def persona_vectors(lm: LoadedModel, pairs: list[dict[str, Any]], batch_size: int = 16) -> dict[str, SteeringVector]:
    """Persona vectors (Chen et al. 2025, arXiv:2507.21509), method ``persona``: for each of
    ``response_avg``, ``prompt_avg`` and ``prompt_last``, ``v_L = mean over effective pairs of
    (r(h_L(positive)) - r(h_L(negative)))``, each side run with its own system prompt and answer
    (pairs as :func:`effective_pairs` returns them). ``{reduction: [n_layers, d_model]}``, activation
    units, layer L = output of block L. Raises SteerlabError for no pairs or an empty question or
    answer.
    """
    pos = [ChatSample(p["question"], p["positive"], p["pos_system"]) for p in pairs]
    neg = [ChatSample(p["question"], p["negative"], p["neg_system"]) for p in pairs]
    aggregate = MeanDifference()
    for sign, samples in ((1.0, pos), (-1.0, neg)):
        for _, acts in iter_activations(
            lm, samples, PERSONA_REDUCTIONS, batch_size=batch_size, description="persona vectors"
        ):
            aggregate.add(acts, sign)
    return aggregate.vectors(len(pairs), vector_metadata(lm, "persona", len(pairs)))
