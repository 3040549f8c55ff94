"""The vectors a steering study (:mod:`steerlab.pipelines.study`) steers with, besides each direction as
extracted (``raw``): every direction rescaled to the reference (model-diff) vector's norm at each layer
(``normalized``), and blends of the contrastive and the reference direction.

A blend at weight α (the seed study's open question: "combining the steering vectors found with the two
methods in a weighted addition"), per layer L, with ĉ and m̂ the unit contrastive and model-diff
directions at L and ‖m_L‖ the model-diff vector's norm there::

    blend_α[L] = ‖m_L‖ · (α·ĉ + (1 − α)·m̂) / ‖α·ĉ + (1 − α)·m̂‖

so every blend has the norm the study gives every direction at its ``normalized`` scale, and random
directions of the model-diff vector's norms control it. It is computed as
``SteeringVector.blend([c_norm, m], [α, 1 − α])`` rescaled per layer, where ``c_norm`` (the contrastive
vector at the model-diff norms) and ``m`` share their norms, so the weighted sum already points along
α·ĉ + (1 − α)·m̂. The endpoints are not recomputed: α = 1 *is* the normalized contrastive vector and
α = 0 *is* the model-diff vector (the same objects), so their rows equal the pure vectors' rows exactly.
A layer where the blend is zero (ĉ = −m̂ at α = 0.5) stays zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..errors import SteerlabError
from ..vectors.vector import SteeringVector

BLEND_PREFIX = "blend_"


def normalized_like(vector: SteeringVector, reference: SteeringVector) -> SteeringVector:
    """``vector`` rescaled per layer to ``reference``'s norm at that layer (``[n_layers, d_model]``;
    a zero layer stays zero)."""
    unit = vector.normalized().data
    scaled = SteeringVector(unit * reference.norms()[:, None], dict(vector.metadata))
    scaled.metadata["derived"] = f"normalized to {reference.metadata.get('method', 'reference')} norms"
    return scaled


def blend_name(alpha: float) -> str:
    """The study rows' ``vector`` name of the blend at ``alpha`` (``blend_0.25``)."""
    return f"{BLEND_PREFIX}{float(alpha):g}"


def check_alphas(alphas: Sequence[float], flag: str = "--blend-alphas") -> list[float]:
    """The blend weights as floats, each in [0, 1] and given once.

    Raises:
        SteerlabError: naming ``flag``, for a weight outside [0, 1], not finite, or given twice.
    """
    out = [float(a) for a in alphas]
    for a in out:
        if not math.isfinite(a) or not 0.0 <= a <= 1.0:
            raise SteerlabError(f"{flag} {a:g}: expected weights between 0 (model-diff) and 1 (contrastive)")
    if len({blend_name(a) for a in out}) < len(out):
        raise SteerlabError(f"{flag} {','.join(f'{a:g}' for a in out)}: a weight is given twice")
    return out


def blend_vectors(
    contrastive: SteeringVector, reference: SteeringVector, alphas: Sequence[float]
) -> dict[str, SteeringVector]:
    """The blends ``{blend_name(α): vector}`` of the module docstring.

    Args:
        contrastive: the contrastive vector already at ``reference``'s norms
            (:func:`normalized_like`), ``[n_layers, d_model]``.
        reference: the model-diff vector ``[n_layers, d_model]`` (its norms are every blend's norms).
        alphas: weights of the contrastive direction, each in [0, 1] (:func:`check_alphas`).

    Returns the blends in the order of ``alphas``; α = 1 returns ``contrastive`` itself and α = 0
    ``reference`` itself (not copies). Raises SteerlabError for a weight outside [0, 1].
    """
    out: dict[str, SteeringVector] = {}
    for alpha in check_alphas(alphas):
        if alpha == 1.0:
            vector = contrastive
        elif alpha == 0.0:
            vector = reference
        else:
            mixed = SteeringVector.blend([contrastive, reference], [alpha, 1.0 - alpha])
            vector = normalized_like(mixed, reference)
            vector.metadata["derived"] = (
                f"blend: {alpha:g} x contrastive + {1 - alpha:g} x model-diff directions, "
                "at the model-diff vector's norm per layer"
            )
        out[blend_name(alpha)] = vector
    return out
