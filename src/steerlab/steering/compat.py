"""The seed-compatible steerer: a drop-in for persona-vectors' ``ActivationSteerer`` (Chen et al.
2025, github.com/safety-research/persona_vectors) on a plain transformers model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import SteerlabError
from ..model.loading import LoadedModel, wrap_model
from .operators import Intervention
from .steerer import steer


class ActivationSteerer:
    """Drop-in for persona-vectors' ``ActivationSteerer``: adds ``coeff * steering_vector`` to the
    output of block ``layer`` at the given positions, on a plain transformers model.

        with ActivationSteerer(model, vec, coeff=2.0, layer=19, positions="response"):
            model.generate(...)

    ``layer`` is the block index (``layer_idx`` is accepted as an alias, as in persona-vectors).
    """

    def __init__(
        self,
        model: nn.Module | LoadedModel,
        steering_vector: torch.Tensor | Sequence[float],
        coeff: float = 1.0,
        layer: int | None = None,
        positions: str = "all",
        *,
        layer_idx: int | None = None,
        debug: bool = False,
    ) -> None:
        if layer is None:
            layer = 19 if layer_idx is None else layer_idx
        self.lm = model if isinstance(model, LoadedModel) else wrap_model(model)
        vector = torch.as_tensor(steering_vector).detach().float()
        if vector.ndim != 1:
            raise SteerlabError(f"steering_vector must be 1-D [d_model], got {tuple(vector.shape)}")
        self.layer = self.lm.check_layer(layer, "layer")
        self.coeff = coeff
        self.positions = positions
        self.debug = debug
        self._steerer = steer(self.lm, Intervention(self.layer, vector, coeff, "add", positions))

    def __enter__(self) -> ActivationSteerer:
        self._steerer.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._steerer.__exit__(*exc)

    def remove(self) -> None:
        """Remove the hook now (as persona-vectors' ``remove``); idempotent, also done on exit."""
        self._steerer.remove()
