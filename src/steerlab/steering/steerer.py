"""Interventions on block outputs, installed as forward hooks by context managers.

Layer L is the output of decoder block L. Hooks are installed through :mod:`steerlab.model.hooks`:
removed on every exit path (exceptions and KeyboardInterrupt included), run before any other hook on
the block (so transformers' ``output_hidden_states`` shows the steering), and steerers nest and
compose (steerlab hooks on one block run in the order they were installed). Coefficient 0 is exactly
the identity.

The operators (``add``, ``ablate``, ``cap``), positions (``all``, ``prompt``, ``response``), scales,
per-row coefficients and ``rows`` are pure tensor functions documented, with their sources, in
:mod:`steerlab.steering.operators`. This module resolves a model-independent :class:`SteeringSpec`
(a vector, layers, coefficient(s), operator, positions, scale, cap thresholds or percentiles, rows)
into :class:`~steerlab.steering.operators.Intervention` objects on a model and installs them
(:func:`steer`); with teacher forcing, :meth:`Steerer.teacher_forcing` tells the ``prompt`` and
``response`` positions where each row's response starts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import SteerlabError
from ..model.hooks import HookGroup, install_output_hooks
from ..model.layers import LayerSpec, parse_layers
from ..model.loading import LoadedModel, wrap_model
from ..vectors.vector import SteeringVector
from .conditions import Condition
from .operators import (
    Coeff,
    Intervention,
    Rows,
    Threshold,
    apply_intervention,
    as_threshold,
    check_cap_options,
    row_mask,
)

if TYPE_CHECKING:
    from ..activations.capture import ChatSample
    from ..model.chat import Prompt


@dataclass
class _HookState:
    response_start: torch.Tensor | None = None


@dataclass
class Steerer:
    """Installs interventions as forward hooks; use as a context manager (see :func:`steer`).

    Hooks go through :mod:`steerlab.model.hooks`: they run before any other hook on the block
    (transformers' ``output_hidden_states`` recorders included), after steerlab hooks installed
    earlier, and are removed on every exit path.
    """

    blocks: nn.ModuleList
    interventions: list[Intervention]
    state: _HookState = field(default_factory=_HookState)
    _groups: list[HookGroup] = field(default_factory=list)

    def _hook(self, layer_ivs: list[Intervention]):
        def hook(_module, _inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            for iv in layer_ivs:
                hidden = apply_intervention(hidden, iv, self.state.response_start)
            if isinstance(output, tuple):
                return (hidden, *output[1:])
            return hidden

        return hook

    def __enter__(self) -> Steerer:
        """Install one hook per steered block (all or none); returns ``self``."""
        by_layer: dict[int, list[Intervention]] = {}
        for iv in self.interventions:
            by_layer.setdefault(iv.layer, []).append(iv)
        self._groups.append(
            install_output_hooks((self.blocks[layer], self._hook(ivs)) for layer, ivs in sorted(by_layer.items()))
        )
        return self

    def remove(self) -> None:
        """Remove this steerer's hooks (idempotent)."""
        while self._groups:
            self._groups.pop().remove()

    def __exit__(self, *exc) -> None:
        self.remove()

    @contextlib.contextmanager
    def teacher_forcing(self, response_start: torch.Tensor) -> Iterator[None]:
        """Within this block, prompt/response positions follow ``response_start`` per row."""
        previous = self.state.response_start
        self.state.response_start = response_start
        try:
            yield
        finally:
            self.state.response_start = previous


@dataclass
class SteeringSpec:
    """What to do, model-independent: a vector, the layers, coefficient(s), operator, positions.

    Fields (layer L = output of decoder block L, docs/design.md §2):

    - ``vector``: a :class:`SteeringVector` ``[n_layers, d_model]`` (its row L is used at layer L) or
      a 1-D tensor ``[d_model]`` used at every listed layer. A partial vector (a control vector file
      holding only some layers) steers only the layers it holds.
    - ``layers``: the layer grammar of :mod:`steerlab.model.layers` (``12``, ``"10-15"``, ``"all"``,
      a list or range).
    - ``coeff``: a number or one value per batch row ``[batch]``; its unit depends on ``scale``:
      ``raw`` multiplies v, ``unit`` is the norm added (activation units), ``relative`` is a
      multiple of the mean residual norm ‖h‖ at the layer (``reference_norms``). ``cap`` ignores it.
    - ``operator``, ``positions``, ``scale``: see the module docstring.
    - ``ceiling``/``floor``: ``cap`` thresholds τ on h·v̂ (activation units): one number for every
      layer, or ``{layer: τ}``.
    - ``rows``: a bool mask ``[batch]`` or row indices restricting the spec to those batch rows;
      with :func:`~steerlab.steering.generation.generate_batch` both ``coeff`` and ``rows`` are given per prompt (see
      :meth:`select_rows`).
    - ``ceiling_percentile``/``floor_percentile``: ``cap`` thresholds as percentiles (0-100) of the
      projections h·v̂ on reference prompts at each layer; :meth:`calibrated` turns them into
      per-layer ``ceiling``/``floor`` values before the spec is applied.
    - ``condition``: a :class:`~steerlab.steering.conditions.Condition` (CAST): the spec acts only on
      rows whose prompt passes it, decided once per sequence from the unsteered prompt before any
      steering (:func:`~steerlab.steering.conditions.resolve_conditions`, which generation, scoring
      and every engine call); a passing row is steered exactly as without it, another is untouched.

    Raises SteerlabError at construction for inconsistent cap options (:func:`check_cap_options`) or
    non-finite thresholds; model-dependent checks happen in :meth:`interventions`.

        spec = SteeringSpec(vec, "10-12", operator="cap", ceiling_percentile=90).calibrated(lm, prompts)
        with steer(lm, spec):
            texts = generate(lm, prompts)
    """

    vector: SteeringVector | torch.Tensor
    layers: LayerSpec
    coeff: Coeff = 1.0
    operator: str = "add"
    positions: str = "all"
    scale: str = "raw"
    ceiling: Threshold | None = None
    floor: Threshold | None = None
    rows: Rows | None = None
    ceiling_percentile: float | None = None
    floor_percentile: float | None = None
    condition: Condition | None = None

    def __post_init__(self) -> None:
        check_cap_options(self.operator, self.ceiling, self.floor, self.ceiling_percentile, self.floor_percentile)
        if self.condition is not None and not isinstance(self.condition, Condition):
            raise SteerlabError(
                f"SteeringSpec condition: expected a steerlab Condition, got {type(self.condition).__name__}"
            )
        self.ceiling = as_threshold(self.ceiling, "ceiling")
        self.floor = as_threshold(self.floor, "floor")

    def with_coeff(self, coeff: Coeff) -> SteeringSpec:
        """A copy with another coefficient (a number or one value per batch row)."""
        return replace(self, coeff=coeff)

    def select_rows(self, idx: Sequence[int] | torch.Tensor, n_rows: int) -> SteeringSpec:
        """This spec for a batch made of rows ``idx`` (in batch order) of ``n_rows`` rows in all:
        per-row coefficients ``[n_rows]`` and ``rows`` (a mask over, or indices into, the
        ``n_rows`` rows) are taken at ``idx``; a scalar coefficient is kept.

        Raises SteerlabError when per-row coefficients or a mask do not have ``n_rows`` values.
        """
        idx = torch.as_tensor(idx, dtype=torch.long)
        spec = self
        if not isinstance(self.coeff, int | float):
            coeff = torch.as_tensor(self.coeff, dtype=torch.float32).reshape(-1)
            if coeff.numel() == n_rows:
                spec = replace(spec, coeff=coeff[idx])
            elif coeff.numel() != 1:
                raise SteerlabError(f"--coeff: {coeff.numel()} per-row coefficients given for {n_rows} rows")
        if self.rows is not None:
            spec = replace(spec, rows=row_mask(self.rows, n_rows)[idx])
        return spec

    def layer_vectors(self, lm: Any) -> dict[int, torch.Tensor]:
        """``{layer: direction [d_model]}`` for the spec's layers on ``lm`` (a :class:`LoadedModel` or an
        engine: anything with ``n_layers``, ``d_model`` and ``name``), in layer-spec order.

        Raises SteerlabError for layers out of range or a vector that does not fit ``lm`` (d_model,
        layer count; for a partial vector, a layer it does not hold).
        """
        layers = parse_layers(self.layers, lm.n_layers)
        if isinstance(self.vector, SteeringVector):
            self.vector.check_compatible(lm.n_layers, lm.d_model, lm.name, layers)
            return {layer: self.vector[layer] for layer in layers}
        vec = torch.as_tensor(self.vector).float()
        if vec.ndim == 2:
            vec = SteeringVector(vec)
            vec.check_compatible(lm.n_layers, lm.d_model, lm.name)
            return {layer: vec[layer] for layer in layers}
        if vec.shape[-1] != lm.d_model:
            raise SteerlabError(f"vector d_model {vec.shape[-1]} does not match {lm.name}'s d_model {lm.d_model}")
        return dict.fromkeys(layers, vec)

    def calibrated(self, lm: Any, prompts: Sequence[Prompt | ChatSample], batch_size: int = 16) -> SteeringSpec:
        """This spec with ``ceiling_percentile``/``floor_percentile`` resolved on reference ``prompts``
        read by ``lm`` (a :class:`LoadedModel` or an engine, :mod:`steerlab.engines`)
        (strings, message lists or :class:`~steerlab.activations.capture.ChatSample`): a copy whose
        ``ceiling``/``floor`` is ``{layer: τ_L}``, τ_L the percentile of h·v̂_L over every token of
        the prompts at layer L (:func:`steerlab.steering.calibration.layer_projections`, linear
        interpolation between order statistics as ``torch.quantile``), and whose percentile fields
        are None. A spec without percentiles is returned as is.

        Raises SteerlabError as :meth:`layer_vectors` does, for no prompts, or a zero direction.
        """
        if self.ceiling_percentile is None and self.floor_percentile is None:
            return self
        from .calibration import layer_projections, percentile_of

        vectors = self.layer_vectors(lm)
        # an engine (steerlab.engines) measures on its own model; a LoadedModel through transformers
        measure = getattr(lm, "layer_projections", None)
        values = (
            measure(prompts, vectors, batch_size) if measure else layer_projections(lm, prompts, vectors, batch_size)
        )

        def resolve(q: float | None, given: Threshold | None, flag: str) -> Threshold | None:
            return given if q is None else {layer: percentile_of(v, q, flag) for layer, v in values.items()}

        return replace(
            self,
            ceiling=resolve(self.ceiling_percentile, self.ceiling, "--cap-percentile"),
            floor=resolve(self.floor_percentile, self.floor, "--cap-floor-percentile"),
            ceiling_percentile=None,
            floor_percentile=None,
        )

    def interventions(self, lm: LoadedModel, reference_norms: torch.Tensor | None = None) -> list[Intervention]:
        """The spec resolved on ``lm``: one :class:`Intervention` per layer, in layer order.

        ``reference_norms[L]`` (mean residual norm at layer L, ``[n_layers]``) is needed for scale
        ``relative``. Raises SteerlabError for layers out of range, a vector that does not fit ``lm``
        (d_model, layer count; for a partial vector, a layer it does not hold), cap percentiles not
        yet resolved by :meth:`calibrated`, a per-layer threshold missing a steered layer, or invalid
        operator options, or a condition not yet resolved per prompt.
        """
        if self.condition is not None:
            raise SteerlabError(
                "a conditional spec is decided per prompt before steering: run it through generate_batch, "
                "response_logprobs or an engine (or resolve it with steerlab.steering.conditions.resolve_conditions); "
                "steer() cannot see the prompts"
            )
        if self.ceiling_percentile is not None or self.floor_percentile is not None:
            raise SteerlabError(
                "cap percentiles are measured on reference prompts: call spec.calibrated(lm, prompts) "
                "before steering (CLI: --cap-percentile with --reference-prompts)"
            )
        rows = self.layer_vectors(lm)

        def at(threshold: Threshold | None, layer: int, what: str) -> float | None:
            if not isinstance(threshold, Mapping):
                return threshold
            if layer not in threshold:
                raise SteerlabError(f"{what} has values for layers {sorted(threshold)}, not for layer {layer}")
            return threshold[layer]

        return [
            Intervention(
                layer,
                rows[layer],
                self.coeff,
                self.operator,
                self.positions,
                self.scale,
                at(self.ceiling, layer, "ceiling"),
                at(self.floor, layer, "floor"),
                None if reference_norms is None else float(reference_norms[layer]),
                self.rows,
            )
            for layer in rows
        ]


def steer(
    model: LoadedModel | nn.Module,
    specs: SteeringSpec | Intervention | Sequence[SteeringSpec | Intervention],
    reference_norms: torch.Tensor | None = None,
) -> Steerer:
    """Context manager steering ``model`` with the given specs/interventions.

    ``model`` is a :class:`LoadedModel` or a plain transformers model (wrapped). Specs are resolved
    now (one :class:`Intervention` per layer); the hooks are installed on ``__enter__`` and removed
    on every exit path. Inside the block, every forward pass of ``model`` sees the block outputs
    ``[batch, seq, d_model]`` changed as the module docstring says; coefficient 0 (``add``) is
    exactly the identity. ``reference_norms[L]`` (``[n_layers]``, mean residual norm at layer L,
    :func:`steerlab.steering.calibration.mean_residual_norms`) is needed for scale ``relative``.

    Raises SteerlabError (before any hook is installed) for layers out of range, a vector whose
    d_model or layer count does not fit the model, unresolved cap percentiles (see
    :meth:`SteeringSpec.calibrated`) or invalid operator options.

        with steer(lm, SteeringSpec(vec, layers=12, coeff=4.0)):
            texts = generate(lm, prompts)
    """
    lm = wrap_model(model) if not isinstance(model, LoadedModel) else model
    if isinstance(specs, SteeringSpec | Intervention):
        specs = [specs]
    interventions: list[Intervention] = []
    for spec in specs:
        if isinstance(spec, Intervention):
            lm.check_layer(spec.layer)
            if spec.vector.shape[-1] != lm.d_model:
                raise SteerlabError(
                    f"vector d_model {spec.vector.shape[-1]} does not match {lm.name}'s d_model {lm.d_model}"
                )
            interventions.append(spec)
        else:
            interventions.extend(spec.interventions(lm, reference_norms))
    return Steerer(lm.blocks, interventions)
