"""Behaviour margin (judge-free): for pairs of answers to the same question, the mean over pairs of
the per-token log-likelihood of the behaviour (positive) answer minus that of the other answer,
teacher-forced. Higher = the model prefers the behaviour more.

Steering applies as it would during generation: ``positions="response"`` steers the last prompt
token and every response token, ``"prompt"`` the prompt tokens (see steerlab.steering).
A whole coefficient sweep is one batch stream: rows are (pair, coefficient) with per-row
coefficients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from ..activations.samples import pair_samples
from ..engines.base import Engine
from ..engines.hf import as_engine
from ..errors import SteerlabError
from ..formats.pairs import Pair
from ..model.loading import LoadedModel
from ..steering.steerer import SteeringSpec


@dataclass
class MarginResult:
    """Margins per coefficient: ``per_pair[i, j]`` for coefficient i and pair j.

    ``fluency`` is the mean log-likelihood per token of both answers at each coefficient: a
    judge-free coherence check (it collapses when steering breaks the model).
    """

    coeffs: list[float]
    per_pair: torch.Tensor
    pos_logp: torch.Tensor
    neg_logp: torch.Tensor

    @property
    def fluency(self) -> list[float]:
        """Per coefficient: mean over pairs of (positive + negative)/2 log-likelihood, nats/token (<= 0)."""
        return ((self.pos_logp + self.neg_logp) / 2).mean(-1).tolist()

    @property
    def mean(self) -> list[float]:
        """Per coefficient: the behaviour margin, mean over pairs of ``per_pair``, nats/token."""
        return self.per_pair.mean(-1).tolist()

    @property
    def std(self) -> list[float]:
        """Per coefficient: sample standard deviation (n - 1) of ``per_pair`` over pairs, nats/token;
        0.0 with a single pair."""
        return (self.per_pair.std(-1) if self.per_pair.shape[-1] > 1 else torch.zeros(len(self.coeffs))).tolist()


def behaviour_margin(
    lm: Engine | LoadedModel,
    pairs: Sequence[Pair],
    steering: SteeringSpec | Sequence[SteeringSpec] = (),
    coeffs: Sequence[float] | None = None,
    batch_size: int = 16,
    reference_norms: torch.Tensor | None = None,
) -> MarginResult:
    """Behaviour margin of ``pairs`` under ``steering`` at each coefficient (one batch stream).

    For pair j, ``margin = mean log p(positive tokens | question) - mean log p(negative tokens |
    question)``, each the mean over the answer's tokens, teacher-forced, in nats/token (docs/design.md §5); > 0
    means the model prefers the behaviour. Returns a :class:`MarginResult`: ``per_pair``, ``pos_logp``
    and ``neg_logp`` are ``[n_coeffs, n_pairs]`` float32; ``mean``/``std``/``fluency`` are per
    coefficient. Rows are (coefficient, side, pair) with per-row coefficients, so a sweep of k
    coefficients is one pass over 2·k·n_pairs sequences.

    ``lm`` is an engine (:mod:`steerlab.engines`) or a loaded model (run on the ``hf`` engine).
    Without ``coeffs`` the specs' own coefficients are used (a single row of results; no steering
    reports coefficient 0). ``reference_norms`` (``[n_layers]``) is needed for scale ``relative``.
    Raises SteerlabError for no pairs, an empty answer, or steering that does not fit the model
    (layers, d_model, operator options).
    """
    specs = [steering] if isinstance(steering, SteeringSpec) else list(steering)
    pos, neg = pair_samples(pairs)
    n = len(pairs)
    if not specs or coeffs is None:
        # One row: unsteered (reported as coefficient 0) or the specs' own coefficients.
        logps = as_engine(lm).response_logprobs(pos + neg, specs, None, batch_size, reference_norms)
        first = float(specs[0].coeff) if specs and isinstance(specs[0].coeff, int | float) else 0.0
        pos_logp, neg_logp = logps[:n].float()[None], logps[n:].float()[None]
        return MarginResult([first], pos_logp - neg_logp, pos_logp, neg_logp)
    coeffs_used = [float(c) for c in coeffs]
    samples = [s for _ in coeffs_used for s in pos + neg]
    row_coeffs = [c for c in coeffs_used for _ in range(2 * n)]
    grid = (
        as_engine(lm).response_logprobs(samples, specs, row_coeffs, batch_size, reference_norms).view(-1, 2, n).float()
    )
    return MarginResult(coeffs_used, grid[:, 0] - grid[:, 1], grid[:, 0], grid[:, 1])


def condition_margins(
    lm: Engine | LoadedModel,
    pairs: Sequence[Pair],
    conditions: Sequence[Sequence[SteeringSpec]],
    coeffs: Sequence[float] | Sequence[Sequence[float]],
    batch_size: int = 16,
    reference_norms: torch.Tensor | None = None,
) -> list[MarginResult]:
    """Behaviour margins of several steering conditions, all as rows of one batch stream.

    ``conditions[i]`` is a list of specs applied together (empty = unsteered); each is scored at every
    coefficient in ``coeffs`` (the specs' own coefficients are replaced), or, when ``coeffs`` holds one
    list per condition (``len(conditions)`` lists, e.g. a calibration's candidates, which differ by
    layer), condition i at ``coeffs[i]``. Rows are (condition, coefficient, positive/negative, pair);
    each condition's specs act only on its own rows, so K random-direction controls cost K more rows,
    not K more passes. Returns one :class:`MarginResult` per condition, equal (to float rounding) to
    :func:`behaviour_margin` run on it alone.

    Raises:
        SteerlabError: per-condition coefficient lists whose count is not ``len(conditions)``.
    """
    pos, neg = pair_samples(pairs)
    n = len(pairs)
    per_condition = _coefficients(coeffs, len(conditions))
    samples = [s for cs in per_condition for _ in cs for s in pos + neg]
    row_coeffs = torch.tensor([c for cs in per_condition for c in cs for _ in range(2 * n)])
    specs, start, bounds = [], 0, []
    for condition, cs in zip(conditions, per_condition, strict=True):
        block = 2 * n * len(cs)  # rows of this condition
        specs += [replace(spec.with_coeff(row_coeffs), rows=list(range(start, start + block))) for spec in condition]
        bounds.append((start, start + block))
        start += block
    grid = as_engine(lm).response_logprobs(samples, specs, None, batch_size, reference_norms).float()
    results = []
    for (lo, hi), cs in zip(bounds, per_condition, strict=True):
        g = grid[lo:hi].view(len(cs), 2, n)
        results.append(MarginResult(cs, g[:, 0] - g[:, 1], g[:, 0], g[:, 1]))
    return results


def _coefficients(coeffs: Sequence[float] | Sequence[Sequence[float]], n_conditions: int) -> list[list[float]]:
    """The coefficients of each condition: the shared list for every condition, or the per-condition lists."""
    nested = [isinstance(c, Sequence) for c in coeffs]
    if not any(nested):
        shared = [float(c) for c in coeffs]  # type: ignore[arg-type]
        return [shared] * n_conditions
    if not all(nested) or len(coeffs) != n_conditions:
        raise SteerlabError(
            f"condition_margins: {len(coeffs)} coefficient lists for {n_conditions} conditions (one list each)"
        )
    return [[float(c) for c in cs] for cs in coeffs]  # type: ignore[union-attr]
