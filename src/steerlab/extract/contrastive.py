"""Contrastive extraction (the classical method): mean activation difference between inputs with
and without the behaviour, per layer.

For each pair, the question followed by the positive answer and by the negative answer are run
through the model; the vector for layer L is ``mean(positive) - mean(negative)`` of the chosen
reduction of the output of block L. Means are streamed over batches.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..activations.capture import Reduction, iter_activations
from ..activations.samples import pair_samples
from ..errors import SteerlabError
from ..formats.pairs import Pair
from ..model.loading import LoadedModel
from ..vectors.vector import SteeringVector
from .mean_difference import MeanDifference, vector_metadata


def extract_contrastive(
    lm: LoadedModel,
    pairs: Sequence[Pair],
    reduction: str = "response_avg",
    batch_size: int = 16,
) -> SteeringVector:
    """Contrastive steering vector ``[n_layers, d_model]`` from pairs (docs/design.md §3, §8), method
    ``contrastive``: ``v_L = mean_j r(h_L(q_j + positive_j)) - mean_j r(h_L(q_j + negative_j))``,
    where ``h_L`` is the output of decoder block L and ``r`` the ``reduction`` (default
    ``response_avg``, the mean over the answer's tokens), in activation units. This is the
    mean-difference direction of activation addition / CAA (Turner et al. 2023, arXiv:2308.10248;
    Rimsky et al. 2024, arXiv:2312.06681), computed by :class:`~steerlab.extract.mean_difference.MeanDifference`.

    Raises SteerlabError for no pairs, an unknown reduction, a prompt reduction when both sides share
    their prompt (the vector would be exactly zero), or an empty question/answer.
    """
    if not pairs:
        raise SteerlabError("contrastive extraction needs at least one pair")
    red = Reduction.parse(reduction)
    pos, neg = pair_samples(pairs)
    # A prompt reduction only sees the prompt (question + system), which a pair shares between its
    # positive and negative side, so it would give an exactly zero vector.
    if not red.needs_response and all(
        (a.prompt, a.system) == (b.prompt, b.system) for a, b in zip(pos, neg, strict=True)
    ):
        raise SteerlabError(
            f"--reduction {red.name}: the positive and negative inputs share the same prompt "
            "(question and system prompt), so a prompt reduction gives a zero vector; use "
            "response_avg or first_k"
        )
    aggregate = MeanDifference()
    for sign, samples, side in ((1.0, pos, "positive"), (-1.0, neg, "negative")):
        for _, acts in iter_activations(lm, samples, [red], batch_size=batch_size, description=side):
            aggregate.add(acts, sign)
    return aggregate.vectors(len(pairs), vector_metadata(lm, "contrastive", len(pairs)))[red.name]
