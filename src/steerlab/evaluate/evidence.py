"""The evidence behind one steering effect (docs/design.md §7).

A steering condition (a vector, layers, operator, scale, coefficient) moves the behaviour margin of
each held-out pair. Its effect is reported as a fraction of a reference gap (e.g. the base →
fine-tuned gap: *undone* on the fine-tuned model, *induced* on the base), together with

- a seeded bootstrap 95% interval over pairs (:func:`steerlab.evaluate.statistics.gap_fraction_ci`);
- the same fraction for K random directions of the vector's norm through the identical condition:
  the null band and the one-sided empirical p of moving the behaviour at least as far the intended
  way (Soligo et al. 2025 report random same-norm directions moving a behaviour by < 10% where the
  real direction moves it by 78-90%); with K controls the smallest p is 1/(K+1);
- the per-pair spread: the fraction of pairs moved the intended way and the anti-steerable fraction
  (Tan et al. 2024);
- where a prompting baseline exists, the effect as a fraction of the prompting effect (AxBench,
  Wu et al. 2025, compare steering with prompting on the same metric).

All inputs are per-pair margins ``[n_pairs]`` in nats/token; fractions are unitless (1 = the gap).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .controls import control_summary, control_verdict
from .statistics import bootstrap_ci, gap_fraction, gap_fraction_ci, steerable_fractions


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def interval(lo: float, hi: float) -> list[float | None]:
    """``[lo, hi]`` for JSON: an unbounded end (a gap whose interval contains 0) becomes ``None``."""
    return [_finite(lo), _finite(hi)]


def steering_evidence(
    origin: torch.Tensor,
    target: torch.Tensor,
    steered: torch.Tensor,
    controls: Sequence[torch.Tensor] = (),
    prompting: float | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Evidence for one condition at one coefficient.

    Args:
        origin: per-pair margins of the unsteered model being steered ``[n]`` (fine-tuned for
            *undone*, base for *induced*).
        target: per-pair margins of the model whose behaviour steering aims at ``[n]``.
        steered: per-pair margins under steering ``[n]``.
        controls: per-pair margins under each random-direction control ``K × [n]`` (same condition).
            With a single pair the intervals are ``[None, None]``.
        prompting: the prompting baseline's fraction of the same gap (None when there is none).
        n_resamples, seed: the bootstrap.

    Returns:
        ``{"effect", "ci95", "delta", "delta_ci95", "margin", "margin_ci95", "per_pair",
        "steerable_fraction", "anti_steerable_fraction", "random": {mean, lo, hi, p, k} | None,
        "verdict", "vs_prompting"}``: ``effect`` is the fraction of the origin → target gap covered
        (its interval is unbounded, ``[None, None]``, when the gap's own interval contains 0);
        ``delta`` the mean change in margin from the origin model (nats/token, always bounded).
    """
    effect = gap_fraction(origin, target, steered)
    change = steered - origin
    if steered.numel() >= 2:
        lo, hi = gap_fraction_ci(origin, target, steered, n_resamples, seed)
        m_lo, m_hi = bootstrap_ci(steered, n_resamples, seed)
        d_lo, d_hi = bootstrap_ci(change, n_resamples, seed)
    else:  # one pair: no interval can be drawn
        lo = hi = m_lo = m_hi = d_lo = d_hi = math.nan
    intended = 1.0 if float(target.mean() - origin.mean()) >= 0 else -1.0
    spread = steerable_fractions(change, intended)
    out: dict[str, Any] = {
        "effect": _finite(effect),
        "ci95": interval(lo, hi),
        "delta": float(change.mean()),
        "delta_ci95": interval(d_lo, d_hi),
        "margin": float(steered.mean()),
        "margin_ci95": interval(m_lo, m_hi),
        "per_pair": [round(float(v), 5) for v in steered],
        "steerable_fraction": spread["steerable"],
        "anti_steerable_fraction": spread["anti_steerable"],
        "random": None,
        "verdict": None,
        "vs_prompting": _finite(effect / prompting) if prompting and math.isfinite(effect) else None,
    }
    if len(controls) and math.isfinite(effect):
        control_effects = torch.tensor([gap_fraction(origin, target, c) for c in controls])
        # one-sided: fractions are oriented so that positive is the intended way
        band = control_summary(effect, control_effects, alternative="greater")
        out["random"] = {k: float(v) if k != "k" else int(v) for k, v in band.items()}
        out["verdict"] = (
            control_verdict(effect, band)
            if effect >= band["lo"]
            else "below the random band (the wrong way, more than random directions)"
        )
    return out
