"""The ``hf`` engine: transformers with steerlab's hooks — the reference implementation and the default.

Generation is :func:`steerlab.steering.generation.generate_batch` (left-padded batches, KV cache,
per-row coefficients and rows); scoring is :func:`steerlab.steering.scoring.response_logprobs` (shared
prompt caches, block skipping, packed LM head); reference statistics come from
:mod:`steerlab.steering.calibration` and :func:`steerlab.activations.capture.capture`. An adapter is
attached unmerged with :func:`steerlab.model.adapters.attached_adapter`, whose base pass is the true
base model: inside :meth:`HfEngine.adapter` the base engine runs every call in a base pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch

from ..activations.capture import ChatSample, Reduction, capture
from ..errors import SteerlabError
from ..model.adapters import attached_adapter
from ..model.chat import Prompt
from ..model.loading import LoadedModel
from ..steering.calibration import layer_projections, mean_residual_norms
from ..steering.conditions import gate_samples, resolve_conditions
from ..steering.generation import Generation, generate_batch
from ..steering.scoring import response_logprobs
from ..steering.steerer import SteeringSpec
from .base import Engine


class HfEngine(Engine):
    """The :class:`~steerlab.engines.base.Engine` of a loaded transformers model (``lm``)."""

    kind = "hf"

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm
        self.name = lm.name
        self.n_layers = lm.n_layers
        self.d_model = lm.d_model
        self.tokenizer = lm.tokenizer
        self._base_pass: Callable[[], AbstractContextManager[None]] | None = None

    def _context(self) -> AbstractContextManager[None]:
        return self._base_pass() if self._base_pass is not None else contextlib.nullcontext()

    def generate(self, prompts: Sequence[Prompt], **kwargs: Any) -> list[Generation]:
        """See :meth:`Engine.generate`; runs :func:`~steerlab.steering.generation.generate_batch` after
        deciding conditional specs' gates from :meth:`prompt_activations`."""
        steering = kwargs.get("steering", ())
        specs = [steering] if isinstance(steering, SteeringSpec) else list(steering)
        with self._context():
            if any(s.condition is not None for s in specs):
                samples = gate_samples(prompts, kwargs.get("system"), kwargs.get("chat", True))
                kwargs["steering"] = resolve_conditions(self, specs, samples, kwargs.get("batch_size") or 16)
            return generate_batch(self.lm, prompts, **kwargs)

    def response_logprobs(
        self,
        samples: Sequence[ChatSample],
        steering: Sequence[SteeringSpec] = (),
        row_coeffs: Sequence[float] | None = None,
        batch_size: int = 16,
        reference_norms: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """See :meth:`Engine.response_logprobs`; runs :func:`~steerlab.steering.scoring.response_logprobs`
        after deciding conditional specs' gates from :meth:`prompt_activations`."""
        with self._context():
            if any(s.condition is not None for s in steering):
                steering = resolve_conditions(self, steering, gate_samples(samples), batch_size)
            return response_logprobs(self.lm, samples, steering, row_coeffs, batch_size, reference_norms)

    def mean_residual_norms(self, prompts: Sequence[Prompt | ChatSample], batch_size: int = 16) -> torch.Tensor:
        """See :meth:`Engine.mean_residual_norms`."""
        with self._context():
            return mean_residual_norms(self.lm, prompts, batch_size)

    def layer_projections(
        self, prompts: Sequence[Prompt | ChatSample], directions: Mapping[int, torch.Tensor], batch_size: int = 16
    ) -> dict[int, torch.Tensor]:
        """See :meth:`Engine.layer_projections`."""
        with self._context():
            return layer_projections(self.lm, prompts, directions, batch_size)

    def prompt_activations(
        self,
        prompts: Sequence[Prompt | ChatSample],
        layers: Sequence[int],
        reduction: str = "prompt_avg",
        batch_size: int = 16,
    ) -> torch.Tensor:
        """See :meth:`Engine.prompt_activations`."""
        if Reduction.parse(reduction).kind not in ("prompt_avg", "prompt_last"):
            raise SteerlabError(f"prompt activations: reduction {reduction!r}: expected prompt_avg or prompt_last")
        samples = [p if isinstance(p, ChatSample) else ChatSample(p) for p in prompts]
        with self._context():
            return capture(self.lm, samples, [reduction], list(layers), batch_size)[reduction]

    @contextlib.contextmanager
    def adapter(self, adapter_dir: str) -> Iterator[HfEngine]:
        """See :meth:`Engine.adapter`: the adapter attached unmerged; this engine runs base passes."""
        if self._base_pass is not None:
            raise SteerlabError(f"{self.name}: an adapter is already attached to this engine")
        with attached_adapter(self.lm, adapter_dir) as tuned:
            self._base_pass = tuned.base_pass
            try:
                yield HfEngine(tuned)
            finally:
                self._base_pass = None


def as_engine(model: Engine | LoadedModel) -> Engine:
    """``model`` as an :class:`Engine`: an engine as is, a :class:`LoadedModel` in an :class:`HfEngine`."""
    return model if isinstance(model, Engine) else HfEngine(model)
