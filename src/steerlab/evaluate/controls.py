"""Random-direction controls (docs/design.md §7): does a steering effect stand out from what random
directions of the same norm do under the identical condition?

Pure functions, no model and no global RNG. The caller runs K directions from
:func:`random_directions` through the same condition as the real vector (coefficients, positions,
operator, scale; as extra batch rows, see ``SteeringSpec.rows``), measures each one's effect the same
way (e.g. the change in behaviour margin against the unsteered model), then reads the real effect
against them:

- :func:`null_band` — mean and 2.5–97.5 percentiles of the controls' effects;
- :func:`empirical_p` — ``(1 + #{controls at least as extreme}) / (k + 1)`` (Phipson & Smyth 2010);
- :func:`control_summary` — both, as the ``random`` field of a summary row;
- :func:`within_band`, :func:`control_verdict` — the verdict phrase a report prints, which knows the
  resolution of K controls (:func:`min_controls`: p cannot go below 1/(K+1));
- :func:`cosine_verdict` — the same for a cosine between two directions against the random band.

Which sidedness an effect's p takes is decided once, in :mod:`steerlab.evaluate.evidence`.

Source of the design: same-norm random directions as the baseline of a steering effect, Soligo et
al. 2025 (*Convergent linear representations of emergent misalignment*).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from ..errors import SteerlabError
from ..vectors.vector import SteeringVector
from .statistics import DEFAULT_LEVEL, percentiles

Alternative = Literal["two-sided", "greater", "less"]


def random_directions(reference: SteeringVector | Any, k: int, seed: int = 0) -> torch.Tensor:
    """``k`` random directions with the reference's norm at each layer: ``[k, *reference.shape]``.

    Args:
        reference: a vector ``[n_layers, d_model]`` (or a :class:`SteeringVector`) or ``[d_model]``.
        k: number of directions (0 gives an empty ``[0, ...]`` tensor: controls off).
        seed: each direction is drawn in turn from one generator seeded with ``seed``, so the first
            k directions of a larger draw equal a draw of k, and the unit directions depend only on
            (seed, shape), not on the reference's values.

    Returns:
        float32 ``[k, n_layers, d_model]`` (``[k, d_model]`` for 1-D input): row L of each direction
        is isotropic Gaussian rescaled to ``‖reference[L]‖``; layers where the reference is zero stay
        zero. These are the same-norm random controls of Soligo et al. 2025.
    """
    ref = reference.data if isinstance(reference, SteeringVector) else torch.as_tensor(reference)
    ref = ref.detach().cpu().to(torch.float64)
    if ref.ndim not in (1, 2) or ref.shape[-1] == 0:
        raise SteerlabError(
            f"random_directions: expected a [n_layers, d_model] or [d_model] vector, got {tuple(ref.shape)}"
        )
    if not torch.isfinite(ref).all():
        raise SteerlabError("random_directions: the reference vector has NaN/inf values")
    if k < 0:
        raise SteerlabError(f"random_directions: k {k}: expected 0 or more directions")
    gen = torch.Generator().manual_seed(int(seed))
    norms = ref.norm(dim=-1, keepdim=True)
    out = torch.empty(k, *ref.shape, dtype=torch.float64)
    for i in range(k):
        g = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
        out[i] = g / g.norm(dim=-1, keepdim=True) * norms
    return out.float()


def _effects(control_effects: Any, what: str = "control effects") -> torch.Tensor:
    t = torch.as_tensor(control_effects, dtype=torch.float64).reshape(-1)
    if t.numel() == 0:
        raise SteerlabError(f"{what}: no controls (run at least one random direction)")
    if not torch.isfinite(t).all():
        raise SteerlabError(f"{what}: NaN or inf values")
    return t


def null_band(control_effects: Any, level: float = DEFAULT_LEVEL) -> dict[str, float]:
    """The null band of random-direction effects ``[k]``: ``{"mean", "lo", "hi"}``.

    ``lo``/``hi`` are the 2.5th and 97.5th percentiles for ``level=0.95`` (linear interpolation, so
    with few controls they lie just inside the min and max). Units are those of the effects.
    """
    if not 0.0 < level < 1.0:
        raise SteerlabError(f"level {level}: expected a number between 0 and 1 (e.g. 0.95)")
    t = _effects(control_effects)
    alpha = (1.0 - level) / 2.0
    lo, hi = percentiles(t, (alpha, 1.0 - alpha))
    return {"mean": float(t.mean()), "lo": float(lo), "hi": float(hi)}


def empirical_p(effect: float, controls: Any, alternative: Alternative = "two-sided", rtol: float = 1e-6) -> float:
    """Empirical p-value of ``effect`` among random-direction ``controls`` ``[k]``:
    ``(1 + b) / (k + 1)`` where b counts controls at least as extreme as the effect.

    ``alternative``: ``"two-sided"`` counts ``|control| >= |effect|`` (effects measured against the
    unsteered condition, so the null is centred near 0), ``"greater"`` counts ``control >= effect``,
    ``"less"`` counts ``control <= effect``. The ``+1`` keeps p > 0 (the smallest p with k controls is
    1/(k+1)): Phipson & Smyth 2010, *Permutation p-values should never be zero*. A control within a
    relative ``rtol`` of the effect counts as a tie (as extreme), so float noise never lowers p.
    """
    c = _effects(controls)
    e = float(effect)
    if not math.isfinite(e):
        raise SteerlabError(f"empirical_p: the effect {e} is not a finite number")
    slack = rtol * abs(e)
    if alternative == "two-sided":
        extreme = c.abs() >= abs(e) - slack
    elif alternative == "greater":
        extreme = c >= e - slack
    elif alternative == "less":
        extreme = c <= e + slack
    else:
        raise SteerlabError(f"alternative {alternative!r}: expected two-sided, greater or less")
    return (1.0 + float(extreme.sum())) / (c.numel() + 1.0)


def control_summary(
    effect: float, controls: Any, level: float = DEFAULT_LEVEL, alternative: Alternative = "two-sided"
) -> dict[str, float | int]:
    """``{"mean", "lo", "hi", "p", "k"}``: the :func:`null_band` of ``controls`` ``[k]`` and the
    :func:`empirical_p` of ``effect`` among them (the ``random`` field of a summary.json row)."""
    band: dict[str, float | int] = dict(null_band(controls, level))
    band["p"] = empirical_p(effect, controls, alternative)
    band["k"] = int(torch.as_tensor(controls).numel())
    return band


def within_band(effect: float, band: Mapping[str, float]) -> bool:
    """Whether ``effect`` lies inside the null band (``band["lo"] <= effect <= band["hi"]``)."""
    return float(band["lo"]) <= float(effect) <= float(band["hi"])


ALPHA = 0.05  # the level a verdict tests at


def min_controls(alpha: float = ALPHA) -> int:
    """The fewest random directions K whose empirical p can reach ``alpha``: the smallest p with K
    controls is 1/(K+1) (:func:`empirical_p`), so K = ceil(1/alpha) - 1 (19 for 0.05)."""
    if not 0.0 < alpha < 1.0:
        raise SteerlabError(f"alpha {alpha}: expected a level between 0 and 1 (e.g. 0.05)")
    return math.ceil(round(1.0 / alpha, 9)) - 1


def control_verdict(effect: float, band: Mapping[str, Any], p: float | None = None, alpha: float = ALPHA) -> str:
    """The verdict phrase for an effect against its random-direction controls.

    ``band``: ``{"lo", "hi"}`` and, when known, ``"p"``, ``"k"`` (number of controls) and
    ``"alternative"`` (the sidedness of p on the recorded effect: ``"greater"`` when the intended
    direction is up, ``"less"`` when down, ``"two-sided"`` when there is none; default two-sided).

    - inside the band [lo, hi]: ``"not distinguishable from random directions"``;
    - beyond it against the intended direction: ``"below the random band (the wrong way, more than
      random directions)"`` (``"above"`` for ``"less"``);
    - beyond it when K controls cannot reach ``alpha`` (K < :func:`min_controls`): ``"outside all 8
      random directions; with 8 controls p cannot go below 0.11 — use --controls 19 or more for a
      test at 0.05"`` (or, when some control is as extreme, ``"beyond the random band but not
      outside all 8 random directions (one-sided p = 0.22); with 8 controls ..."``);
    - else ``"beyond the random band (one-sided p = 0.01)"``, or ``"beyond the random band, but not
      significant at 0.05 (one-sided p = 0.1)"``.

    ``p`` (from ``band["p"]`` when not given) is printed with two significant digits.
    """
    alternative = band.get("alternative") or "two-sided"
    lo, hi, e = float(band["lo"]), float(band["hi"]), float(effect)
    if lo <= e <= hi:
        return "not distinguishable from random directions"
    if (alternative == "greater" and e < lo) or (alternative == "less" and e > hi):
        side = "below" if alternative == "greater" else "above"
        return f"{side} the random band (the wrong way, more than random directions)"
    p = band.get("p") if p is None else p
    sided = "two-sided" if alternative == "two-sided" else "one-sided"
    k = band.get("k")
    if k is not None and int(k) < min_controls(alpha):
        k, floor = int(k), 1.0 / (int(k) + 1)
        limit = (
            f"with {k} controls p cannot go below {floor:.2g} — use --controls {min_controls(alpha)} or more "
            f"for a test at {alpha:g}"
        )
        if p is None or float(p) <= floor * (1 + 1e-9):
            return f"outside all {k} random directions; {limit}"
        return f"beyond the random band but not outside all {k} random directions ({sided} p = {float(p):.2g}); {limit}"
    if p is None:
        return "beyond the random band"
    if float(p) <= alpha:
        return f"beyond the random band ({sided} p = {float(p):.2g})"
    return f"beyond the random band, but not significant at {alpha:g} ({sided} p = {float(p):.2g})"


def cosine_verdict(cos: float, ci: Sequence[float | None] | None, band: float) -> str:
    """The verdict phrase for a cosine between two directions against the random band: ``band`` is
    the |cos| below which 95% of pairs of unrelated directions in d_model dimensions fall
    (:func:`steerlab.evaluate.geometry.random_cosine_band`), ``ci`` the cosine's resampling interval
    ``[lo, hi]`` (None: read the point alone).

    - the interval beyond ±band: ``"outside the random band: further from orthogonal than unrelated
      directions"``;
    - the interval inside it: ``"inside the random band: not distinguishable from unrelated directions"``;
    - otherwise ``"its interval overlaps the random band: not clearly distinguishable from unrelated
      directions"``; without an interval ``"outside / inside the random band"`` from the point.
    """
    if ci and ci[0] is not None and ci[1] is not None:
        lo, hi = float(ci[0]), float(ci[1])
        if lo > band or hi < -band:
            return "outside the random band: further from orthogonal than unrelated directions"
        if -band <= lo and hi <= band:
            return "inside the random band: not distinguishable from unrelated directions"
        return "its interval overlaps the random band: not clearly distinguishable from unrelated directions"
    return "outside the random band" if abs(cos) > band else "inside the random band"


__all__ = [
    "ALPHA",
    "control_summary",
    "control_verdict",
    "cosine_verdict",
    "empirical_p",
    "min_controls",
    "null_band",
    "random_directions",
    "within_band",
]
