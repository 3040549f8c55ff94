"""The one mean-difference aggregator behind every extraction method (docs/design.md §3).

Every steerlab vector is a difference of means of activations per layer: contrastive
(positive − negative answers, Turner et al. 2023 "activation addition"; Rimsky et al. 2024 "CAA"),
persona (positive − negative system prompt, Chen et al. 2025 "persona vectors") and model-diff
(fine-tuned − base model on identical inputs). They differ only in which activations go on which
side, so they share this accumulator: activations stream in batch by batch with a sign (+1 for the
side with the behaviour, −1 for the other); sums are kept in float64 and the vector is
``sum / n`` cast to float32, so memory never grows with the number of samples and all methods
round the same way.

The metadata every vector carries (model, model type, method, reduction, number of samples) is built
here too, by :func:`vector_metadata`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..model.blocks import unwrap_model
from ..model.loading import LoadedModel
from ..vectors.vector import SteeringVector


class MeanDifference:
    """Streaming ``mean(positive) − mean(negative)`` per reduction, ``[n_layers, d_model]``.

    Call :meth:`add` with each batch of activations ``{reduction: [batch, n_layers, d_model]}`` and
    the batch's sign, then :meth:`vectors` with the number of pairs (samples) the mean is over.
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}

    def add(self, activations: Mapping[str, torch.Tensor], sign: float = 1.0) -> None:
        """Add ``sign × Σ_batch activations`` (float64) for each reduction; shapes ``[b, L, d]``."""
        for name, acts in activations.items():
            s = sign * acts.double().sum(0)
            self._sums[name] = self._sums[name] + s if name in self._sums else s

    def means(self, n: int) -> dict[str, torch.Tensor]:
        """``{reduction: sum / n}`` as float32 ``[n_layers, d_model]``; ``n`` counts pairs (or samples)."""
        if n < 1:
            raise ValueError(f"a mean over {n} samples")
        return {name: (s / n).float() for name, s in self._sums.items()}

    def vectors(self, n: int, metadata: Mapping[str, Any]) -> dict[str, SteeringVector]:
        """One :class:`SteeringVector` per reduction, with ``metadata`` plus its ``reduction``."""
        return {name: SteeringVector(mean, {**metadata, "reduction": name}) for name, mean in self.means(n).items()}


def vector_metadata(lm: LoadedModel, method: str, n_samples: int, **extra: Any) -> dict[str, Any]:
    """The metadata every extracted vector records: model name and type, method, sample count, and
    ``extra`` (e.g. adapter, trait); the version and creation time are added by SteeringVector."""
    model_type = getattr(getattr(unwrap_model(lm.model), "config", None), "model_type", None)
    return {"model": lm.name, "model_type": model_type, "method": method, "n_samples": n_samples, **extra}
