"""Steering operators as pure tensor functions (docs/design.md §4): what one intervention does to a block's
output ``[batch, seq, d_model]``, at which positions and on which rows.

Positions:
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
              reference prompts at each steered layer (:mod:`steerlab.steering.calibration`).
Coefficients may be a tensor with one value per batch row (per-row sweeps in one batch); ``rows`` (a
bool mask ``[batch]`` or row indices) limits an intervention to those rows, the others returned
exactly as they came, so controls and conditions run as rows of one batch.
Sources: activation addition (Turner et al. 2023, arXiv:2308.10248; Rimsky et al. 2024 "CAA",
arXiv:2312.06681); directional ablation (Arditi et al. 2024, arXiv:2406.11717); activation capping
(Lu et al. 2026 "The Assistant Axis", arXiv:2601.10387).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..errors import SteerlabError

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
    given = [
        flag
        for flag, value in (
            ("--cap-ceiling", ceiling),
            ("--cap-floor", floor),
            ("--cap-percentile", ceiling_percentile),
            ("--cap-floor-percentile", floor_percentile),
        )
        if value is not None
    ]
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


def as_threshold(value: Threshold | None, what: str) -> Threshold | None:
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
        raise SteerlabError(f"per-row coefficients: got {coeff.numel()} values but the batch has {batch} rows")
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


def _position_mask(positions: str, hidden: torch.Tensor, response_start: torch.Tensor | None) -> torch.Tensor | None:
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


def operator_delta(
    hidden: torch.Tensor,
    direction: torch.Tensor,
    coeff: torch.Tensor | float,
    operator: str,
    ceiling: float | None = None,
    floor: float | None = None,
) -> torch.Tensor:
    """What an operator adds to block outputs ``hidden`` ``[..., d_model]``: the delta, same shape.

    ``direction`` ``[d_model]`` is the vector added per unit coefficient for ``add`` (v, v̂ or
    ‖h‖_ref·v̂ by scale) and the unit vector v̂ for ``ablate`` and ``cap``; ``coeff`` is a number or a
    tensor broadcasting against ``hidden[..., :1]`` (one value per row or per token). ``add``: c·s;
    ``ablate``: −c·(h·v̂)v̂; ``cap``: (clamp(h·v̂, floor, ceiling) − h·v̂)·v̂ (the coefficient unused).
    The one implementation of the operators' arithmetic: the hooks of the ``hf`` engine and the
    workers of the ``vllm`` engine both call it.
    """
    if operator == "add":
        return coeff * direction
    proj = hidden @ direction  # [...]
    if operator == "ablate":
        return -coeff * proj[..., None] * direction
    target = proj
    if ceiling is not None:
        target = target.clamp(max=ceiling)
    if floor is not None:
        target = target.clamp(min=floor)
    return (target - proj)[..., None] * direction


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
    if iv.operator == "add" and isinstance(coeff, float) and coeff == 0.0:
        return hidden
    direction = iv.direction() if iv.operator == "add" else iv.unit
    delta = operator_delta(
        hidden, direction.to(device=hidden.device, dtype=hidden.dtype), coeff, iv.operator, iv.ceiling, iv.floor
    )
    if mask is None:
        return hidden + delta
    return torch.where(mask, hidden + delta, hidden)
