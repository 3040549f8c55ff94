"""Condition vectors for conditional steering (CAST): the mean prompt activation of prompts a gate
should pass minus that of prompts it should not, per layer.

``c_L = mean_i r(h_L(positive_i)) − mean_j r(h_L(negative_j))``, with h_L the output of decoder block L
and r the prompt reduction (``prompt_avg`` by default: the mean over the prompt's tokens, the aggregate
the gate reads). Computed by the one aggregator, :class:`~steerlab.extract.mean_difference.MeanDifference`,
each side weighted by one over its size so that the groups may differ in size. CAST itself (Lee et al.
2024, arXiv:2409.05907) takes the first principal component of mean-centred activations of the two
groups; steerlab keeps to its mean-difference extraction, the direction that PCA approximates when the
group difference dominates the variance.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..activations.capture import ChatSample, Reduction, iter_activations
from ..errors import SteerlabError
from ..model.chat import Prompt
from ..model.loading import LoadedModel
from ..vectors.vector import SteeringVector
from .mean_difference import MeanDifference, vector_metadata


def extract_condition_vector(
    lm: LoadedModel,
    positives: Sequence[Prompt],
    negatives: Sequence[Prompt],
    reduction: str = "prompt_avg",
    system: str | None = None,
    batch_size: int = 16,
) -> SteeringVector:
    """Condition vector ``[n_layers, d_model]`` (method ``condition``, activation units) from example
    prompts (module docstring): positives should pass the gate, negatives not. Prompts are rendered
    through the chat template with ``system``, as generation renders them.

    Raises SteerlabError for no positives or negatives, a reduction other than ``prompt_avg`` /
    ``prompt_last``, or an empty prompt.
    """
    if not positives or not negatives:
        raise SteerlabError("a condition vector needs positive and negative example prompts")
    red = Reduction.parse(reduction)
    if red.kind not in ("prompt_avg", "prompt_last"):
        raise SteerlabError(f"--reduction {reduction!r}: a condition reads the prompt: prompt_avg or prompt_last")
    aggregate = MeanDifference()
    for prompts, side in ((positives, "positive"), (negatives, "negative")):
        weight = (1.0 if side == "positive" else -1.0) / len(prompts)
        samples = [ChatSample(p, system=system) for p in prompts]
        for _, acts in iter_activations(lm, samples, [red], batch_size=batch_size, description=side):
            aggregate.add(acts, weight)
    meta = vector_metadata(
        lm, "condition", len(positives) + len(negatives), n_positive=len(positives), n_negative=len(negatives)
    )
    return aggregate.vectors(1, meta)[red.name]  # each side is already divided by its size
