"""Interventions on block outputs, installed as forward hooks by context managers.

Layer L is the output of decoder block L. Hooks are installed through :mod:`steerlab.model.hooks`:
removed on every exit path (exceptions and KeyboardInterrupt included), run before any other hook on
the block (so transformers' ``output_hidden_states`` shows the steering), and steerers nest and
compose (steerlab hooks on one block run in the order they were installed). Coefficient 0 is exactly
the identity.

Positions (SPEC §4):
  ``all``       every position, at prefill and at each decode step;
  ``prompt``    prefill only (forwards with sequence length > 1);
  ``response``  the last position of every forward: the last prompt token at prefill, then each
                generated token.
With teacher forcing (one forward over prompt + response, e.g. the behaviour margin), pass
``response_start`` (first response index per row, in padded coordinates): ``prompt`` then means
positions before it and ``response`` the last prompt token and every response token, which is what
generation would steer.

Operators (v̂ = v/‖v‖, c = coefficient):
  ``add``     h + c·s, where s = v (scale ``raw``), v̂ (``unit``: c is the norm added) or
              ‖h‖_ref·v̂ (``relative``: c times the mean residual norm at that layer);
  ``ablate``  h − c·(h·v̂)v̂ (c = 1 removes the component entirely);
  ``cap``     clamp h·v̂ to at most ``ceiling`` and/or at least ``floor``, other components untouched
              (the coefficient is not used). A threshold τ is in activation units (a projection
              h·v̂); it may be given per layer, or as a percentile (0-100) of the projections seen on
              reference prompts at each steered layer, resolved by :meth:`SteeringSpec.calibrated`
              (:mod:`steerlab.steering.calibration`).
Coefficients may be a tensor with one value per batch row (per-row sweeps in one batch).
Sources: activation addition (Turner et al. 2023, arXiv:2308.10248; Rimsky et al. 2024 "CAA",
arXiv:2312.06681); directional ablation (Arditi et al. 2024, arXiv:2406.11717); activation capping
(Lu et al. 2026 "The Assistant Axis", arXiv:2601.10387); positions and the seed-compatible
:class:`ActivationSteerer` follow persona-vectors (Chen et al. 2025, github.com/safety-research/persona_vectors).

Rows: an intervention with ``rows`` (a bool mask ``[batch]`` or a list of row indices) acts on those
rows of the batch only; the other rows' hidden states are returned exactly as they came. Several
specs, each active on its own rows, run different conditions (e.g. random-direction controls
beside the real vector) as rows of one batch instead of separate passes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import SteerlabError
from ..model.hooks import HookGroup, install_output_hooks
from ..model.layers import LayerSpec, parse_layers
from ..model.loading import LoadedModel, wrap_model
from ..vectors.vector import SteeringVector

if TYPE_CHECKING:
    from ..activations.capture import ChatSample
    from ..model.chat import Prompt

POSITIONS = ("all", "prompt", "response")
OPERATORS = ("add", "ablate", "cap")
SCALES = ("raw", "unit", "relative")

Coeff = float | Sequence[float] | torch.Tensor
Rows = torch.Tensor | Sequence[int] | Sequence[bool]
Threshold = float | Mapping[int, float]  # one τ for every layer, or τ per layer ({layer: τ})


def _check_choice(value: str, choices: tuple[str, ...], flag: str) -> str:
    if value not in choices:
        raise SteerlabError(f"{flag} {value!r}: expected one of {', '.join(choices)}")
    return value


def check_cap_options(
    operator: str,
    ceiling: Threshold | None = None,
    floor: Threshold | None = None,
    ceiling_percentile: float | None = None,
    floor_percentile: float | None = None,
) -> None:
    """Check the cap thresholds a steering condition is given, before any model is loaded.

    ``cap`` needs a ceiling and/or a floor, each either a value (``--cap-ceiling``/``--cap-floor``)
    or a percentile 0-100 of reference projections (``--cap-percentile``/``--cap-floor-percentile``),
    not both; other operators take none of them. Raises SteerlabError naming the flags otherwise.
    """
    for flag, value in (("--cap-percentile", ceiling_percentile), ("--cap-floor-percentile", floor_percentile)):
        if value is not None and not (isinstance(value, int | float) and 0 <= value <= 100):
            raise SteerlabError(f"{flag} {value!r}: expected a number in 0..100")
    given = [flag for flag, value in (("--cap-ceiling", ceiling), ("--cap-floor", floor),
                                      ("--cap-percentile", ceiling_percentile),
                                      ("--cap-floor-percentile", floor_percentile)) if value is not None]
    if operator != "cap":
        if given:
            raise SteerlabError(f"{'/'.join(given)}: for --operator cap only, not {operator!r}")
        return
    if not given:
        raise SteerlabError(
            "--operator cap needs a ceiling and/or a floor on h·v̂: --cap-ceiling/--cap-floor (values) or "
            "--cap-percentile/--cap-floor-percentile (percentiles of projections on reference prompts)"
        )
    if ceiling is not None and ceiling_percentile is not None:
        raise SteerlabError("give --cap-ceiling or --cap-percentile, not both")
    if floor is not None and floor_percentile is not None:
        raise SteerlabError("give --cap-floor or --cap-floor-percentile, not both")


def _threshold(value: Threshold | None, what: str) -> Threshold | None:
    """A checked cap threshold: a finite float, or ``{layer: finite float}``; raises SteerlabError."""

    def finite(v: object, where: str) -> float:
        try:
            out = float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            out = math.nan
        if not math.isfinite(out):
            raise SteerlabError(f"{what}{where}: expected a finite number, got {v!r}")
        return out

    if value is None:
        return None
    if isinstance(value, Mapping):
        return {int(layer): finite(v, f" at layer {layer}") for layer, v in value.items()}
    return finite(value, "")


@dataclass
class Intervention:
    """One operator at one layer with a 1-D direction ``vector`` ``[d_model]``, on every batch row
    or only on ``rows`` (a bool mask ``[batch]`` or row indices of the batch the hook sees).

    ``coeff``: a number or ``[batch]`` per-row values (units: see the module docstring's operators).
    ``ceiling``/``floor``: ``cap`` thresholds on h·v̂ in activation units, for this layer.
    ``reference_norm``: mean ‖h‖ at this layer on reference prompts, for scale ``relative``.
    Raises SteerlabError at construction for an unknown operator/positions/scale, a NaN/inf or (where
    a direction is needed) zero vector, ``relative`` without ``reference_norm``, ``cap`` without a
    bound, or non-finite coefficients.
    """

    layer: int
    vector: torch.Tensor
    coeff: Coeff = 1.0
    operator: str = "add"
    positions: str = "all"
    scale: str = "raw"
    ceiling: float | None = None
    floor: float | None = None
    reference_norm: float | None = None  # for scale="relative"
    rows: Rows | None = None  # batch rows it acts on (bool mask [batch] or indices); None: all

    def __post_init__(self) -> None:
        if self.rows is not None:
            self.rows = as_rows(self.rows)
        _check_choice(self.operator, OPERATORS, "--operator")
        _check_choice(self.positions, POSITIONS, "--positions")
        _check_choice(self.scale, SCALES, "--scale")
        self.vector = torch.as_tensor(self.vector).detach().float().reshape(-1)
        if not torch.isfinite(self.vector).all():
            raise SteerlabError(f"layer {self.layer}: steering vector has NaN/inf values")
        norm = float(self.vector.norm())
        needs_direction = self.operator != "add" or self.scale != "raw"
        if needs_direction and norm == 0:
            raise SteerlabError(
                f"layer {self.layer}: the vector is zero, so it has no direction for "
                f"{self.operator} with scale {self.scale}"
            )
        if self.scale == "relative" and self.reference_norm is None:
            raise SteerlabError(
                "scale 'relative' needs the mean residual norm at the layer: pass reference_norms "
                "measured on reference prompts (steerlab.steering.calibration.mean_residual_norms)"
            )
        if self.operator == "cap" and self.ceiling is None and self.floor is None:
            raise SteerlabError("operator 'cap' needs a ceiling and/or a floor on h·v̂")
        if not isinstance(self.coeff, int | float):
            self.coeff = torch.as_tensor(self.coeff, dtype=torch.float32).reshape(-1)
            if not torch.isfinite(self.coeff).all():
                raise SteerlabError("coefficients must be finite numbers")

    @property
    def unit(self) -> torch.Tensor:
        """v̂ = v/‖v‖, ``[d_model]`` float32 (the direction ``ablate``, ``cap`` and scales other than raw use)."""
        return self.vector / self.vector.norm()

    def direction(self) -> torch.Tensor:
        """The vector added per unit coefficient by ``add``."""
        if self.scale == "raw":
            return self.vector
        if self.scale == "unit":
            return self.unit
        return self.unit * float(self.reference_norm)


def _row_coeff(coeff: Coeff, batch: int, like: torch.Tensor) -> torch.Tensor | float:
    if isinstance(coeff, int | float):
        return float(coeff)
    if coeff.numel() == 1:
        return float(coeff)
    if coeff.numel() != batch:
        raise SteerlabError(
            f"per-row coefficients: got {coeff.numel()} values but the batch has {batch} rows"
        )
    return coeff.to(device=like.device, dtype=like.dtype)[:, None, None]


def as_rows(rows: Rows) -> torch.Tensor:
    """``rows`` as a 1-D tensor: a bool mask (one value per row) or int64 row indices (>= 0).

    Raises SteerlabError for other shapes, dtypes or negative indices.
    """
    t = torch.as_tensor(rows).detach().cpu()
    if t.numel() == 0 and t.dtype != torch.bool:
        t = t.long()
    if t.ndim != 1 or t.is_floating_point() or t.is_complex():
        raise SteerlabError(
            f"steering rows: expected a bool mask or a list of row indices, got {t.dtype} {tuple(t.shape)}"
        )
    if t.dtype != torch.bool:
        t = t.long()
        if t.numel() and int(t.min()) < 0:
            raise SteerlabError(f"steering rows: row indices must be >= 0, got {int(t.min())}")
    return t


def row_mask(rows: Rows, n_rows: int) -> torch.Tensor:
    """Bool mask ``[n_rows]`` of the rows an intervention acts on (``rows`` as in :func:`as_rows`).

    Raises SteerlabError when a mask's length is not ``n_rows`` or an index is ``>= n_rows``.
    """
    t = as_rows(rows)
    if t.dtype == torch.bool:
        if t.numel() != n_rows:
            raise SteerlabError(f"steering rows: a mask of {t.numel()} values for {n_rows} rows")
        return t
    if t.numel() and int(t.max()) >= n_rows:
        raise SteerlabError(f"steering rows: row index {int(t.max())} is out of range for {n_rows} rows")
    mask = torch.zeros(n_rows, dtype=torch.bool)
    mask[t] = True
    return mask


def _position_mask(
    positions: str, hidden: torch.Tensor, response_start: torch.Tensor | None
) -> torch.Tensor | None:
    """``[b, T, 1]`` bool mask of steered positions, or None for every position."""
    b, t, _ = hidden.shape
    if positions == "all":
        return None
    if response_start is not None and t > 1:
        pos = torch.arange(t, device=hidden.device)[None, :]
        start = response_start.to(hidden.device)[:, None]
        mask = pos < start if positions == "prompt" else pos >= start - 1
        return mask[..., None]
    mask = torch.zeros(b, t, 1, dtype=torch.bool, device=hidden.device)
    if positions == "prompt":
        if t > 1:
            mask[:] = True
    else:
        mask[:, -1] = True
    return mask


def apply_intervention(
    hidden: torch.Tensor, iv: Intervention, response_start: torch.Tensor | None = None
) -> torch.Tensor:
    """Return the block output after ``iv`` (a new tensor; ``hidden`` is not modified)."""
    mask = _position_mask(iv.positions, hidden, response_start)
    if iv.rows is not None:
        rows = row_mask(iv.rows, hidden.shape[0])
        if not bool(rows.any()):
            return hidden
        rows = rows.to(hidden.device)[:, None, None]
        mask = rows if mask is None else mask & rows
    if mask is not None and not bool(mask.any()):
        return hidden
    coeff = _row_coeff(iv.coeff, hidden.shape[0], hidden)
    if iv.operator == "add":
        if isinstance(coeff, float) and coeff == 0.0:
            return hidden
        delta = coeff * iv.direction().to(device=hidden.device, dtype=hidden.dtype)
    else:
        unit = iv.unit.to(device=hidden.device, dtype=hidden.dtype)
        proj = hidden @ unit  # [b, T]
        if iv.operator == "ablate":
            delta = -coeff * proj[..., None] * unit
        else:
            target = proj
            if iv.ceiling is not None:
                target = target.clamp(max=iv.ceiling)
            if iv.floor is not None:
                target = target.clamp(min=iv.floor)
            delta = (target - proj)[..., None] * unit
    if mask is None:
        return hidden + delta
    return torch.where(mask, hidden + delta, hidden)


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

    Fields (layer L = output of decoder block L, SPEC §2):

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
      with :func:`generate_batch` both ``coeff`` and ``rows`` are given per prompt (see
      :meth:`select_rows`).
    - ``ceiling_percentile``/``floor_percentile``: ``cap`` thresholds as percentiles (0-100) of the
      projections h·v̂ on reference prompts at each layer; :meth:`calibrated` turns them into
      per-layer ``ceiling``/``floor`` values before the spec is applied.

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

    def __post_init__(self) -> None:
        check_cap_options(self.operator, self.ceiling, self.floor, self.ceiling_percentile, self.floor_percentile)
        self.ceiling = _threshold(self.ceiling, "ceiling")
        self.floor = _threshold(self.floor, "floor")

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

    def layer_vectors(self, lm: LoadedModel) -> dict[int, torch.Tensor]:
        """``{layer: direction [d_model]}`` for the spec's layers on ``lm``, in layer-spec order.

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

    def calibrated(
        self, lm: LoadedModel, prompts: Sequence[Prompt | ChatSample], batch_size: int = 16
    ) -> SteeringSpec:
        """This spec with ``ceiling_percentile``/``floor_percentile`` resolved on reference ``prompts``
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

        values = layer_projections(lm, prompts, self.layer_vectors(lm), batch_size)

        def resolve(q: float | None, given: Threshold | None, flag: str) -> Threshold | None:
            return given if q is None else {layer: percentile_of(v, q, flag) for layer, v in values.items()}

        return replace(
            self, ceiling=resolve(self.ceiling_percentile, self.ceiling, "--cap-percentile"),
            floor=resolve(self.floor_percentile, self.floor, "--cap-floor-percentile"),
            ceiling_percentile=None, floor_percentile=None,
        )

    def interventions(
        self, lm: LoadedModel, reference_norms: torch.Tensor | None = None
    ) -> list[Intervention]:
        """The spec resolved on ``lm``: one :class:`Intervention` per layer, in layer order.

        ``reference_norms[L]`` (mean residual norm at layer L, ``[n_layers]``) is needed for scale
        ``relative``. Raises SteerlabError for layers out of range, a vector that does not fit ``lm``
        (d_model, layer count; for a partial vector, a layer it does not hold), cap percentiles not
        yet resolved by :meth:`calibrated`, a per-layer threshold missing a steered layer, or invalid
        operator options.
        """
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
                layer, rows[layer], self.coeff, self.operator, self.positions, self.scale,
                at(self.ceiling, layer, "ceiling"), at(self.floor, layer, "floor"),
                None if reference_norms is None else float(reference_norms[layer]), self.rows,
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
