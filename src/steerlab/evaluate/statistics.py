"""Statistics behind every reported steering number (docs/design.md §7): bootstrap intervals, per-sample
steerability and cosine intervals.

Everything here is pure: tensors (or anything ``torch.as_tensor`` takes) in, floats, tensors and plain
dicts out; no model, no files, no global RNG (every random draw uses its own seeded
``torch.Generator``, so results depend only on the arguments).

- :func:`bootstrap_ci`, :func:`paired_bootstrap_ci`, :func:`ratio_of_means_ci`,
  :func:`gap_fraction_ci` — seeded percentile bootstrap over samples (pairs or questions), vectorised:
  all resamples are one index matrix ``[n_resamples, n]`` (Efron & Tibshirani 1993, *An Introduction
  to the Bootstrap*, ch. 13, percentile interval).
- :func:`steerable_fractions` — fraction of samples moved the intended way / the wrong way
  (Tan et al. 2024, *Analyzing the generalization and reliability of steering vectors*).
- :func:`resampled_cosine_ci` — per-layer cosine interval between two mean-difference vectors from
  resampling the samples that built each one.

Random-direction controls (null band, empirical p, verdicts) are in :mod:`steerlab.evaluate.controls`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import SteerlabError

Statistic = Callable[[torch.Tensor], torch.Tensor]
DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
_CHUNK_ELEMENTS = 1 << 22  # resampled values held at once (float64: 32 MiB)


def mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over the last dimension (samples): ``[..., n] -> [...]``. The default statistic."""
    return x.mean(-1)


def median(x: torch.Tensor) -> torch.Tensor:
    """Median over the last dimension (linear interpolation between the middle two for even n)."""
    return torch.quantile(x, 0.5, dim=-1)


# --- helpers ---------------------------------------------------------------------------------------


def _samples(values: Any, what: str, min_n: int = 2) -> torch.Tensor:
    """``values`` as float64 ``[..., n]`` (samples along the last dim), finite, n >= min_n."""
    t = torch.as_tensor(values).detach().cpu().to(torch.float64)
    if t.ndim == 0:
        raise SteerlabError(f"{what}: expected one value per sample, got a scalar")
    if t.shape[-1] < min_n:
        raise SteerlabError(f"{what}: a bootstrap needs at least {min_n} samples, got {t.shape[-1]}")
    if not torch.isfinite(t).all():
        raise SteerlabError(f"{what}: NaN or inf values")
    return t


def _check_resampling(n_resamples: int, level: float) -> None:
    if n_resamples < 1:
        raise SteerlabError(f"n_resamples {n_resamples}: expected at least 1")
    if not 0.0 < level < 1.0:
        raise SteerlabError(f"level {level}: expected a number between 0 and 1 (e.g. 0.95)")


def bootstrap_indices(n: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> torch.Tensor:
    """Resample indices ``[n_resamples, n]`` (int64, drawn with replacement from ``0..n-1``).

    Deterministic under ``seed`` (its own ``torch.Generator``, the global RNG is untouched).
    """
    if n < 1 or n_resamples < 1:
        raise SteerlabError(f"bootstrap_indices: need n >= 1 and n_resamples >= 1 (got {n}, {n_resamples})")
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, n, (n_resamples, n), generator=gen)


def percentiles(x: torch.Tensor, qs: Sequence[float]) -> list[torch.Tensor]:
    """Quantiles of ``x [..., m]`` along the last dim with linear interpolation (numpy's default,
    Hyndman & Fan 1996 type 7); one tensor ``[...]`` per q in ``qs`` (each in [0, 1])."""
    s = torch.as_tensor(x, dtype=torch.float64).sort(-1).values
    m = s.shape[-1]
    out = []
    for q in qs:
        pos = float(q) * (m - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, m - 1)
        frac = pos - lo
        out.append(s[..., lo] + (s[..., hi] - s[..., lo]) * frac)
    return out


def _interval(dist: torch.Tensor, level: float) -> tuple[Any, Any]:
    """Percentile interval of a bootstrap distribution ``[..., R]``: floats for ``[R]``, else tensors."""
    alpha = (1.0 - level) / 2.0
    lo, hi = percentiles(dist, (alpha, 1.0 - alpha))
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def _resampled(
    arrays: Sequence[torch.Tensor], fn: Callable[..., torch.Tensor], n_resamples: int, seed: int
) -> torch.Tensor:
    """``fn(*[a[..., idx] for a in arrays]) -> [..., r]`` over all resamples, in chunks: ``[..., R]``.

    The index matrix is drawn once (so the result does not depend on the chunk size); each chunk is
    one vectorised gather, never a Python loop over single resamples.
    """
    n = arrays[0].shape[-1]
    idx = bootstrap_indices(n, n_resamples, seed)
    per_resample = n * max(1, arrays[0][..., 0].numel()) * len(arrays)
    step = max(1, _CHUNK_ELEMENTS // per_resample)
    parts = [fn(*[a[..., idx[s : s + step]] for a in arrays]) for s in range(0, n_resamples, step)]
    return torch.cat(parts, dim=-1)


# --- bootstrap intervals ---------------------------------------------------------------------------


def bootstrap_ci(
    values: Any,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
    statistic: Statistic = mean,
) -> tuple[Any, Any]:
    """Seeded percentile bootstrap interval ``(lo, hi)`` of ``statistic`` over samples.

    Args:
        values: per-sample values ``[n]`` (e.g. one margin per held-out pair, in nats/token, or one
            judge score per question, 0–100), or ``[..., n]`` for several series at once (e.g.
            ``[n_coeffs, n_pairs]``), samples along the last dim; all series share the resamples.
        n_resamples: number of bootstrap resamples R (>= 1000 for reported numbers).
        seed: seed of the resample indices (:func:`bootstrap_indices`).
        level: coverage of the interval (0.95: the 2.5th and 97.5th percentiles).
        statistic: reduces the last dim, ``[..., n] -> [...]`` (default :func:`mean`).

    Returns:
        ``(lo, hi)`` in the units of ``values``: floats for ``[n]`` input, tensors ``[...]`` otherwise.

    Raises:
        SteerlabError: fewer than 2 samples, NaN/inf values, ``level`` outside (0, 1).

    Source: the percentile interval, Efron & Tibshirani 1993, ch. 13.
    """
    _check_resampling(n_resamples, level)
    x = _samples(values, "bootstrap_ci")
    return _interval(_resampled([x], statistic, n_resamples, seed), level)


def paired_bootstrap_ci(
    a: Any,
    b: Any,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
    statistic: Statistic = mean,
) -> tuple[Any, Any]:
    """Interval of ``statistic(a) - statistic(b)`` for two conditions measured on the same samples.

    ``a`` and ``b`` are ``[..., n]`` with sample j of ``a`` and of ``b`` being the same pair or
    question (e.g. margins under the model-diff and the contrastive vector at one coefficient). Each
    resample draws the same sample indices for both, so what the samples share cancels (a paired
    bootstrap). Returns ``(lo, hi)`` like :func:`bootstrap_ci` (floats for 1-D input); the
    difference is "a minus b".

    Raises:
        SteerlabError: shapes differ, fewer than 2 samples, NaN/inf values.
    """
    _check_resampling(n_resamples, level)
    x, y = _samples(a, "paired_bootstrap_ci (a)"), _samples(b, "paired_bootstrap_ci (b)")
    if x.shape != y.shape:
        raise SteerlabError(
            f"paired_bootstrap_ci: a and b must hold the same samples, got shapes {tuple(x.shape)} and {tuple(y.shape)}"
        )
    dist = _resampled([x, y], lambda ra, rb: statistic(ra) - statistic(rb), n_resamples, seed)
    return _interval(dist, level)


def ratio_of_means_ci(
    numerator: Any,
    denominator: Any,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> tuple[float, float]:
    """Interval of ``mean(numerator) / mean(denominator)``, resampling samples jointly.

    ``numerator`` and ``denominator`` are ``[n]`` per-sample values of the same samples (resample j
    takes the same indices in both). When the denominator's own interval (same resamples, same
    ``level``) contains 0 the ratio is unbounded and ``(-inf, inf)`` is returned: the data cannot
    say what fraction was moved (as Fieller's interval for a ratio would say); JSON writers should
    write these as null.

    Raises:
        SteerlabError: shapes differ or are not 1-D, fewer than 2 samples, NaN/inf values.
    """
    _check_resampling(n_resamples, level)
    num, den = _samples(numerator, "ratio numerator"), _samples(denominator, "ratio denominator")
    if num.ndim != 1 or num.shape != den.shape:
        raise SteerlabError(
            "ratio_of_means_ci: expected two [n] series of the same samples, got shapes "
            f"{tuple(num.shape)} and {tuple(den.shape)}"
        )
    dist = _resampled([num, den], lambda rn, rd: torch.stack([rn.mean(-1), rd.mean(-1)]), n_resamples, seed)
    den_lo, den_hi = _interval(dist[1], level)
    if den_lo <= 0.0 <= den_hi:
        return -math.inf, math.inf
    return _interval(dist[0] / dist[1], level)


def gap_fraction(origin: Any, target: Any, steered: Any) -> float:
    """How much of the gap from ``origin`` to ``target`` steering covers, as a fraction of the gap:
    ``(mean(steered) - mean(origin)) / (mean(target) - mean(origin))``.

    The diff study's *undone fraction* is ``gap_fraction(origin=fine-tuned, target=base,
    steered=fine-tuned steered)``, its *induced fraction* ``gap_fraction(origin=base,
    target=fine-tuned, steered=base steered)``. Inputs are per-sample values ``[n]`` of the same
    samples (e.g. margins in nats/token); 1 means the whole gap, 0 none; ``nan`` for a zero gap.
    """
    o, t, s = (torch.as_tensor(v, dtype=torch.float64).mean() for v in (origin, target, steered))
    gap = float(t - o)
    return float(s - o) / gap if gap != 0.0 else math.nan


def gap_fraction_ci(
    origin: Any,
    target: Any,
    steered: Any,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> tuple[float, float]:
    """Bootstrap interval of :func:`gap_fraction`, resampling the samples (pairs) jointly across the
    three conditions: :func:`ratio_of_means_ci` of ``steered - origin`` over ``target - origin``
    (``(-inf, inf)`` when the gap's interval contains 0)."""
    o, t, s = (_samples(v, what) for v, what in ((origin, "origin"), (target, "target"), (steered, "steered")))
    if not o.shape == t.shape == s.shape:
        raise SteerlabError(
            f"gap_fraction_ci: origin, target and steered must hold the same samples, got shapes "
            f"{tuple(o.shape)}, {tuple(t.shape)}, {tuple(s.shape)}"
        )
    return ratio_of_means_ci(s - o, t - o, n_resamples, seed, level)


# --- per-sample steerability -----------------------------------------------------------------------


def steerable_fractions(per_sample_deltas: Any, intended_sign: float = 1.0) -> dict[str, float | int]:
    """Fractions of samples moved the intended way and the wrong way by steering.

    ``per_sample_deltas`` ``[n]`` are per-sample changes (steered minus unsteered, e.g. the margin of
    each pair in nats/token); ``intended_sign`` is +1 when steering should raise them, -1 when it
    should lower them. Returns ``{"steerable": #{sign·delta > 0}/n, "anti_steerable":
    #{sign·delta < 0}/n, "n": n}``; samples with delta exactly 0 count in neither. The
    anti-steerable fraction is the one of Tan et al. 2024 (*Analyzing the generalization and
    reliability of steering vectors*), who find it near 50% on some datasets.
    """
    d = torch.as_tensor(per_sample_deltas, dtype=torch.float64).reshape(-1)
    if d.numel() == 0:
        raise SteerlabError("steerable_fractions: no samples")
    if not torch.isfinite(d).all():
        raise SteerlabError("steerable_fractions: NaN or inf values")
    if float(intended_sign) == 0.0 or not math.isfinite(float(intended_sign)):
        raise SteerlabError(f"intended_sign {intended_sign}: expected +1 or -1")
    signed = d * math.copysign(1.0, float(intended_sign))
    n = d.numel()
    return {"steerable": float((signed > 0).sum()) / n, "anti_steerable": float((signed < 0).sum()) / n, "n": n}


# --- cosine intervals ------------------------------------------------------------------------------

Diffs = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def _diff_samples(x: Any, what: str) -> tuple[torch.Tensor, ...]:
    parts = x if isinstance(x, tuple) else (x,)
    if len(parts) not in (1, 2):
        raise SteerlabError(f"{what}: expected per-sample differences [n, L, d] or a (pos, neg) tuple")
    out = []
    for p in parts:
        t = torch.as_tensor(p).detach().cpu()
        t = t.float() if t.dtype not in (torch.float32, torch.float64) else t
        if t.ndim == 2:
            t = t[:, None, :]
        if t.ndim != 3 or len(t) < 2:
            raise SteerlabError(f"{what}: expected [n >= 2, n_layers, d_model] samples, got shape {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise SteerlabError(f"{what}: NaN or inf values")
        out.append(t)
    if len(out) == 2 and out[0].shape[1:] != out[1].shape[1:]:
        raise SteerlabError(f"{what}: pos and neg differ in shape: {tuple(out[0].shape)} vs {tuple(out[1].shape)}")
    return tuple(out)


def _resampled_means(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Means of resampled rows as one matmul: ``x [n, L, d]``, ``idx [c, n]`` → ``[c, L, d]``."""
    counts = torch.zeros(idx.shape[0], x.shape[0], dtype=x.dtype)
    counts.scatter_add_(1, idx, torch.ones(idx.shape, dtype=x.dtype))
    return (counts / x.shape[0] @ x.reshape(x.shape[0], -1)).reshape(idx.shape[0], *x.shape[1:])


def resampled_cosine_ci(
    diffs_a: Diffs,
    diffs_b: Diffs,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
    chunk: int | None = None,
) -> torch.Tensor:
    """Per-layer interval ``[n_layers, 2]`` (lo, hi) of the cosine between two mean-difference
    vectors, from resampling the samples that built each one.

    Args:
        diffs_a, diffs_b: the samples behind vector a and vector b: per-sample differences
            ``[n, n_layers, d_model]`` (e.g. positive minus negative activations of each pair, or
            fine-tuned minus base activations of each sample; the vector is their mean), or a tuple
            ``(pos [n_pos, L, d], neg [n_neg, L, d])`` of unpaired activations (the vector is
            ``mean(pos) - mean(neg)``, each side resampled on its own). ``[n, d]`` means one layer.
        n_resamples: bootstrap resamples; resample r rebuilds both vectors from independent
            resamples of their own samples and takes the cosine per layer.
        seed: all indices are drawn up front from one generator (a's, then b's), so the result does
            not depend on ``chunk``.
        level: coverage (0.95: 2.5th and 97.5th percentiles of the per-layer cosines).
        chunk: resamples per step (default: about 2^24 numbers per resampled vector side); memory is
            ``chunk x n_layers x d_model`` per side, never ``n x`` that.

    Returns:
        float32 ``[n_layers, 2]``; a cosine is 0 where a resampled vector is zero at a layer.
    """
    _check_resampling(n_resamples, level)
    a, b = _diff_samples(diffs_a, "diffs_a"), _diff_samples(diffs_b, "diffs_b")
    if a[0].shape[1:] != b[0].shape[1:]:
        raise SteerlabError(
            f"diffs_a and diffs_b differ in [n_layers, d_model]: {tuple(a[0].shape[1:])} vs {tuple(b[0].shape[1:])}"
        )
    gen = torch.Generator().manual_seed(int(seed))
    idx_a = [torch.randint(0, len(x), (n_resamples, len(x)), generator=gen) for x in a]
    idx_b = [torch.randint(0, len(x), (n_resamples, len(x)), generator=gen) for x in b]
    layer_size = a[0].shape[1] * a[0].shape[2]
    step = chunk or max(1, (1 << 24) // layer_size)
    cosines = []
    for s in range(0, n_resamples, step):
        sl = slice(s, s + step)
        va, vb = (
            _resampled_means(x[0], i[0][sl]) - (_resampled_means(x[1], i[1][sl]) if len(x) == 2 else 0)
            for x, i in ((a, idx_a), (b, idx_b))
        )
        va, vb = va.double(), vb.double()
        denom = va.norm(dim=-1) * vb.norm(dim=-1)
        cosines.append(torch.where(denom > 0, (va * vb).sum(-1) / denom.clamp(min=1e-300), 0.0))
    cos = torch.cat(cosines).T  # [L, R]
    lo, hi = percentiles(cos, ((1.0 - level) / 2.0, (1.0 + level) / 2.0))
    return torch.stack([lo, hi], dim=-1).float()


__all__ = [
    "bootstrap_ci",
    "bootstrap_indices",
    "gap_fraction",
    "gap_fraction_ci",
    "mean",
    "median",
    "paired_bootstrap_ci",
    "percentiles",
    "ratio_of_means_ci",
    "resampled_cosine_ci",
    "steerable_fractions",
]
