"""Geometry of steering vectors: how directions compare, per layer (docs/design.md §5).

Everything here is pure: tensors (or :class:`~steerlab.vectors.vector.SteeringVector`) in, tensors and
plain dicts out, no model and no files, so pipelines (persona, fine-tune diff, reports) can call it.
Layer L is the output of decoder block L (``hidden_states[L + 1]``), as everywhere in steerlab.

- :func:`compare_vectors` — for named vectors of one shape: per-layer cosine for every pair,
  per-layer norms, L2 distances (raw and between per-layer normalised vectors) and the
  random-direction baseline for d_model, in a :class:`Comparison` (``.to_dict()`` for JSON).
- :func:`trait_matrix` — the cosine matrix of several vectors at one layer.
- :func:`random_cosine_band` — the empirical "noise level": a quantile of |cos| between random
  Gaussian directions in d dimensions (seeded). The analytic expectation is
  :func:`steerlab.vectors.vector.random_cosine_baseline` ≈ sqrt(2 / (π d)).
- :func:`split_half_reliability` — how stable a mean-difference direction is under resampling of
  the samples it is built from.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import SteerlabError
from ..model.layers import check_layer_index
from ..vectors.vector import SteeringVector, cosine, cosine_matrix, random_cosine_baseline, unit_directions

DEFAULT_N_RANDOM = 200
DEFAULT_QUANTILE = 0.95

VectorLike = SteeringVector | torch.Tensor


def _data(v: VectorLike, name: str = "vector") -> torch.Tensor:
    x = v.data if isinstance(v, SteeringVector) else torch.as_tensor(v)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise SteerlabError(f"{name}: expected a [n_layers, d_model] tensor, got shape {tuple(x.shape)}")
    return x.detach().double().cpu()


def _check_shapes(data: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    shapes = {name: tuple(x.shape) for name, x in data.items()}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{name}: {list(s)}" for name, s in shapes.items())
        raise SteerlabError(f"vectors must all have the same [n_layers, d_model] shape; got {listing}")
    return next(iter(shapes.values()))  # type: ignore[return-value]


def pair_key(a: str, b: str) -> str:
    """The key of a pair in :class:`Comparison` dicts and in ``compare.json``: ``"a|b"``."""
    return f"{a}|{b}"


# --- random-direction baseline -------------------------------------------------------------------


def random_abs_cosines(d_model: int, n: int = DEFAULT_N_RANDOM, seed: int = 0) -> torch.Tensor:
    """|cos| between all ``n (n-1) / 2`` pairs of ``n`` random Gaussian directions in ``d_model``
    dimensions (seeded, independent of torch's global RNG), float64 ``[n (n-1) / 2]``."""
    if d_model < 1 or n < 2:
        raise SteerlabError(f"random baseline needs d_model >= 1 and n >= 2 directions (got {d_model}, {n})")
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn(n, d_model, generator=gen, dtype=torch.float64)
    sims = cosine_matrix(x, dtype=torch.float64)
    i, j = torch.triu_indices(n, n, offset=1)
    return sims[i, j].abs()


def random_cosine_band(
    d_model: int, n: int = DEFAULT_N_RANDOM, seed: int = 0, quantile: float = DEFAULT_QUANTILE
) -> dict[str, float]:
    """The random-direction noise level in ``d_model`` dims, for plots and tables.

    Returns ``{"d_model", "expected_abs_cos"`` (analytic, ≈ sqrt(2/(π d))), ``"empirical_mean_abs_cos"``,
    ``"quantile"``, ``"band"`` (that quantile of |cos| over random pairs), ``"n_random"``, ``"seed"}``.
    A cosine inside ``[-band, band]`` is indistinguishable from two unrelated directions at that
    level. Note that with many layers and pairs, some will exceed the band by chance (5 % of them
    for the 95th percentile).
    """
    if not 0.0 < quantile < 1.0:
        raise SteerlabError(f"quantile {quantile}: expected a number between 0 and 1")
    values = random_abs_cosines(d_model, n, seed)
    return {
        "d_model": int(d_model),
        "expected_abs_cos": random_cosine_baseline(d_model),
        "empirical_mean_abs_cos": float(values.mean()),
        "quantile": float(quantile),
        "band": float(torch.quantile(values, quantile)),
        "n_random": int(n),
        "seed": int(seed),
    }


# --- comparisons ---------------------------------------------------------------------------------


@dataclass
class Comparison:
    """Result of :func:`compare_vectors`. Per-layer tensors are float32 ``[n_layers]``; pair dicts are
    keyed by ``(name_a, name_b)`` in the order of ``names`` (a before b)."""

    names: list[str]
    n_layers: int
    d_model: int
    cosines: dict[tuple[str, str], torch.Tensor]
    norms: dict[str, torch.Tensor]
    distances: dict[tuple[str, str], torch.Tensor]
    normalized_distances: dict[tuple[str, str], torch.Tensor]
    baseline: dict[str, float]
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """The compared ``(name_a, name_b)`` pairs, in order."""
        return list(self.cosines)

    def matrix(self, layer: int) -> torch.Tensor:
        """Cosine matrix ``[k, k]`` at one layer (same as :func:`trait_matrix`)."""
        layer = check_layer_index(int(layer), self.n_layers, "layer", "each vector")
        k = len(self.names)
        out = torch.eye(k)
        for (a, b), cos in self.cosines.items():
            i, j = self.names.index(a), self.names.index(b)
            out[i, j] = out[j, i] = cos[layer]
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict: per-layer lists, pairs keyed ``"a|b"``."""

        def lists(d: Mapping[Any, torch.Tensor]) -> dict[str, list[float]]:
            return {(pair_key(*k) if isinstance(k, tuple) else k): [float(x) for x in v] for k, v in d.items()}

        return {
            "names": list(self.names),
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "pairs": [{"a": a, "b": b, "key": pair_key(a, b)} for a, b in self.pairs],
            "cosine": lists(self.cosines),
            "norms": lists(self.norms),
            "distance": lists(self.distances),
            "normalized_distance": lists(self.normalized_distances),
            "baseline": dict(self.baseline),
            "metadata": dict(self.metadata),
        }


def compare_vectors(
    vectors: Mapping[str, VectorLike],
    n_random: int = DEFAULT_N_RANDOM,
    seed: int = 0,
    quantile: float = DEFAULT_QUANTILE,
) -> Comparison:
    """Compare named vectors of one shape ``[n_layers, d_model]``, layer by layer.

    For every unordered pair (in the order of ``vectors``): per-layer cosine, L2 distance
    ``‖a - b‖`` and distance between per-layer unit vectors ``‖â - b̂‖`` (= sqrt(2 - 2 cos); 0 where
    a layer is zero). Per vector: per-layer norms. Baseline: :func:`random_cosine_band` for
    d_model (``n_random`` random directions, ``seed``, ``quantile``): |cos| of random directions in
    d dimensions is about sqrt(2 / (π d)), the level an unrelated pair of vectors reaches.

    Returns a :class:`Comparison` whose per-pair and per-vector values are ``[n_layers]`` float32
    (cosines unitless in [-1, 1], norms and distances in activation units). Raises SteerlabError
    for fewer than two vectors or vectors of different shapes.
    """
    if len(vectors) < 2:
        raise SteerlabError(f"comparing needs at least two vectors (got {len(vectors)})")
    data = {name: _data(v, name) for name, v in vectors.items()}
    n_layers, d_model = _check_shapes(data)
    unit = {name: unit_directions(x) for name, x in data.items()}
    cosines, distances, normalized = {}, {}, {}
    for a, b in itertools.combinations(data, 2):
        cosines[(a, b)] = cosine(data[a], data[b])
        distances[(a, b)] = (data[a] - data[b]).norm(dim=-1).float()
        normalized[(a, b)] = (unit[a] - unit[b]).norm(dim=-1).float()
    meta = {name: dict(v.metadata) for name, v in vectors.items() if isinstance(v, SteeringVector)}
    return Comparison(
        names=list(data),
        n_layers=n_layers,
        d_model=d_model,
        cosines=cosines,
        norms={name: x.norm(dim=-1).float() for name, x in data.items()},
        distances=distances,
        normalized_distances=normalized,
        baseline=random_cosine_band(d_model, n_random, seed, quantile),
        metadata=meta,
    )


def trait_matrix(vectors: Mapping[str, VectorLike], layer: int) -> tuple[list[str], torch.Tensor]:
    """``(names, matrix [k, k])``: cosine between every two vectors at ``layer`` (symmetric, unit
    diagonal; 0 off-diagonal where either vector is zero at that layer)."""
    if not vectors:
        raise SteerlabError("trait_matrix needs at least one vector")
    data = {name: _data(v, name) for name, v in vectors.items()}
    n_layers, _ = _check_shapes(data)
    layer = check_layer_index(int(layer), n_layers, "layer", "each vector")
    matrix = cosine_matrix(torch.stack([x[layer] for x in data.values()]))
    matrix.fill_diagonal_(1.0)
    return list(data), matrix


# --- split-half reliability ----------------------------------------------------------------------


@dataclass
class SplitHalf:
    """Result of :func:`split_half_reliability`; per-layer tensors are float32 ``[n_layers]``."""

    mean: torch.Tensor  # mean over splits of cos(vector from half A, vector from half B)
    std: torch.Tensor  # std over splits
    corrected: torch.Tensor  # Spearman-Brown 2r / (1 + r) of ``mean``: reliability at full size
    n_samples: int
    n_splits: int
    seed: int
    baseline: float  # expected |cos| of two random directions in d_model dims

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers for JSON (``spearman_brown`` holds ``corrected``)."""
        return {
            "mean": [float(x) for x in self.mean],
            "std": [float(x) for x in self.std],
            "spearman_brown": [float(x) for x in self.corrected],
            "n_samples": self.n_samples,
            "n_splits": self.n_splits,
            "seed": self.seed,
            "random_baseline": self.baseline,
        }


def spearman_brown(r: torch.Tensor | float, factor: float = 2.0) -> torch.Tensor:
    """Spearman-Brown prophecy ``k r / (1 + (k - 1) r)``: reliability of a measure ``factor`` times
    longer. NaN where ``r <= -1 / (k - 1)`` (undefined)."""
    r = torch.as_tensor(r, dtype=torch.float64)
    denom = 1.0 + (factor - 1.0) * r
    return torch.where(denom > 0, factor * r / denom.clamp(min=1e-300), float("nan"))


def _half_indices(n: int, n_splits: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    perms = torch.stack([torch.randperm(n, generator=gen) for _ in range(n_splits)])
    half = n // 2
    return perms[:, :half], perms[:, half : 2 * half]


def _mean_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x [n, L, d]``, ``idx [s, h]`` → mean of the selected rows per split, ``[s, L, d]`` (float64)."""
    return x[idx].double().mean(dim=1)


def split_half_reliability(
    samples: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | Callable[[torch.Tensor], VectorLike],
    n_splits: int = 50,
    seed: int = 0,
    n_samples: int | None = None,
    chunk: int = 16,
) -> SplitHalf:
    """Split-half reliability of a mean-difference direction, per layer.

    The samples are split at random into two disjoint halves (``n // 2`` each; with odd n one sample
    is left out of each split); a vector is built from each half, and the cosine between the two is
    taken per layer. This is repeated ``n_splits`` times (seeded) and averaged. A direction that is
    really in the data gives values near 1; one that is noise gives values near 0, within the
    random-direction level ~ sqrt(2 / (π d)) (``baseline``). ``corrected`` applies the
    Spearman-Brown formula ``2r / (1 + r)`` to estimate the agreement at the full sample size (each
    half has only half the samples) — an approximation borrowed from test theory, reported as is;
    NaN where ``r <= -1``.

    ``samples`` is one of:

    - per-sample differences ``[n, n_layers, d]`` (e.g. ``capture(lm, pos)[r] - capture(lm, neg)[r]``
      for paired positive/negative samples); the vector of a half is the mean of its rows;
    - a tuple ``(pos [n_pos, n_layers, d], neg [n_neg, n_layers, d])`` of unpaired activations; each
      side is split on its own and the vector of a half is ``mean(pos half) - mean(neg half)``;
    - a callable ``build(indices: LongTensor) -> [n_layers, d] tensor or SteeringVector`` that makes a
      vector from a subset of sample indices (any extraction method), with ``n_samples`` given.

    Tensors may have 2 dims ``[n, d]`` (one layer).
    """
    if n_splits < 1:
        raise SteerlabError(f"n_splits {n_splits}: expected at least 1")
    gen = torch.Generator().manual_seed(int(seed))
    cos_chunks: list[torch.Tensor] = []
    if callable(samples) and not isinstance(samples, torch.Tensor):
        if n_samples is None or n_samples < 2:
            raise SteerlabError("split_half_reliability with a callable needs n_samples >= 2")
        n = int(n_samples)
        idx_a, idx_b = _half_indices(n, n_splits, gen)
        d_model = None
        for s in range(n_splits):
            va, vb = _data(samples(idx_a[s]), "vector of half A"), _data(samples(idx_b[s]), "vector of half B")
            if va.shape != vb.shape:
                raise SteerlabError(f"the callable returned shapes {tuple(va.shape)} and {tuple(vb.shape)}")
            d_model = va.shape[-1]
            cos_chunks.append(cosine(va, vb, torch.float64)[None])
    elif isinstance(samples, tuple):
        if len(samples) != 2:
            raise SteerlabError("split_half_reliability: expected a (pos, neg) tuple of activations")
        pos, neg = (_activations(x, what) for x, what in zip(samples, ("pos", "neg"), strict=True))
        if pos.shape[1:] != neg.shape[1:]:
            raise SteerlabError(f"pos and neg activations differ in shape: {tuple(pos.shape)} vs {tuple(neg.shape)}")
        n = min(len(pos), len(neg))
        pa, pb = _half_indices(len(pos), n_splits, gen)
        na, nb = _half_indices(len(neg), n_splits, gen)
        d_model = pos.shape[-1]
        for s in range(0, n_splits, chunk):
            sl = slice(s, s + chunk)
            va = _mean_rows(pos, pa[sl]) - _mean_rows(neg, na[sl])
            vb = _mean_rows(pos, pb[sl]) - _mean_rows(neg, nb[sl])
            cos_chunks.append(cosine(va, vb, torch.float64))
    else:
        diffs = _activations(samples, "per-sample differences")
        n = len(diffs)
        idx_a, idx_b = _half_indices(n, n_splits, gen)
        d_model = diffs.shape[-1]
        for s in range(0, n_splits, chunk):
            sl = slice(s, s + chunk)
            cos_chunks.append(cosine(_mean_rows(diffs, idx_a[sl]), _mean_rows(diffs, idx_b[sl]), torch.float64))
    cos = torch.cat(cos_chunks)  # [n_splits, n_layers]
    mean = cos.mean(0)
    std = cos.std(0, unbiased=False)
    return SplitHalf(
        mean=mean.float(),
        std=std.float(),
        corrected=spearman_brown(mean).float(),
        n_samples=n,
        n_splits=n_splits,
        seed=int(seed),
        baseline=random_cosine_baseline(int(d_model)) if d_model else float("nan"),
    )


def _activations(x: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim == 2:
        t = t[:, None, :]
    if t.ndim != 3:
        raise SteerlabError(f"{what}: expected a [n, n_layers, d] tensor, got shape {tuple(t.shape)}")
    if len(t) < 2:
        raise SteerlabError(f"{what}: split-half reliability needs at least 2 samples (got {len(t)})")
    if not torch.isfinite(t).all():
        raise SteerlabError(f"{what}: NaN or inf values")
    return t


def per_layer_summary(values: Sequence[float] | torch.Tensor) -> dict[str, float | int]:
    """``{"mean", "min", "max", "argmax", "argmin"}`` of a per-layer series (for tables)."""
    t = torch.as_tensor(values, dtype=torch.float64)
    return {
        "mean": float(t.mean()),
        "min": float(t.min()),
        "max": float(t.max()),
        "argmin": int(t.argmin()),
        "argmax": int(t.argmax()),
    }
