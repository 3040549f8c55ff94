"""Bisection on a log scale for a steering coefficient's two thresholds (pure functions, no model).

A calibration (:mod:`steerlab.pipelines.calibration`) measures, at each candidate coefficient
magnitude c > 0 of one layer and sign, whether the effect is *effective* (beyond its random band at
the test's level) and whether the model stays *fluent* (its likelihood drop, and judged coherence when
a judge is given, within a bound). It looks for

- ``c_min``: the smallest effective magnitude — a **lower crossing** of "effective": the first
  evaluated magnitude where it holds, bracketed below by the largest evaluated magnitude under it;
- ``c_fluent``: the largest fluent magnitude — an **upper crossing** of "fluent": the last evaluated
  magnitude before the first where fluency fails (every magnitude from that one on counts as not
  fluent, so a fluent point beyond a broken one never widens the range);
- ``c_max``: the top of the usable range, the last magnitude of the run that starts at ``c_min`` and
  stays effective and fluent (an upper crossing of "effective and at most ``c_fluent``"); it equals
  ``c_fluent`` unless the effect falls back into the random band first.

Crossings are read off the points evaluated so far, without assuming the predicates are monotone:
each is the *first* change among the evaluated points. A step then evaluates a few magnitudes
spaced geometrically inside each open bracket (:func:`refine`), all at once (the pipeline runs them
as rows of one batch), until every bracket's ratio hi/lo is at most ``tolerance`` — bisection on a
log scale, as a coefficient's effect spans orders of magnitude (ADL's strength search bisects the
same way: Minder et al. 2025). ``m`` points per bracket shrink its log-width ``m + 1`` times per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from ..errors import SteerlabError

Status = Literal["found", "at_range_end", "not_found"]


@dataclass(frozen=True)
class Crossing:
    """Where a predicate first changes among evaluated magnitudes.

    ``value``: the bound found (a lower crossing: the first magnitude where the predicate holds; an
    upper crossing: the last before it first fails), None when ``status`` is ``not_found``.
    ``lo``/``hi``: the bracket around the change (``value`` is one end; the other end None when the
    change lies beyond the evaluated magnitudes). ``status``: ``found`` (bracketed), ``at_range_end``
    (the bound is the smallest magnitude evaluated for a lower crossing, the largest for an upper
    one: the true bound may lie beyond it), ``not_found`` (the predicate never holds / fails at the
    smallest magnitude).
    """

    value: float | None
    lo: float | None
    hi: float | None
    status: Status

    def open(self, tolerance: float) -> bool:
        """Whether the bracket is found and wider than ``tolerance`` (a ratio hi/lo > 1)."""
        return self.status == "found" and self.lo is not None and self.hi is not None and self.hi > tolerance * self.lo


def _sorted(points: Mapping[float, bool]) -> list[tuple[float, bool]]:
    if not points:
        raise SteerlabError("bisection: no evaluated coefficients")
    if any(not (m > 0 and math.isfinite(m)) for m in points):
        raise SteerlabError("bisection: coefficient magnitudes must be positive and finite")
    return sorted(points.items())


def lower_crossing(points: Mapping[float, bool]) -> Crossing:
    """The smallest magnitude where the predicate holds among ``points`` ({magnitude: holds}): the
    first True, bracketed by the largest False below it (see :class:`Crossing`)."""
    items = _sorted(points)
    first = next((i for i, (_, ok) in enumerate(items) if ok), None)
    if first is None:
        return Crossing(None, items[-1][0], None, "not_found")
    value = items[first][0]
    if first == 0:
        return Crossing(value, None, value, "at_range_end")
    return Crossing(value, items[first - 1][0], value, "found")


def upper_crossing(points: Mapping[float, bool]) -> Crossing:
    """The largest magnitude before the predicate first fails among ``points`` ({magnitude: holds}):
    the last True before the first False, bracketed by that False (see :class:`Crossing`)."""
    items = _sorted(points)
    first_bad = next((i for i, (_, ok) in enumerate(items) if not ok), None)
    if first_bad is None:
        value = items[-1][0]
        return Crossing(value, value, None, "at_range_end")
    if first_bad == 0:
        return Crossing(None, None, items[0][0], "not_found")
    return Crossing(items[first_bad - 1][0], items[first_bad - 1][0], items[first_bad][0], "found")


def geometric_grid(lo: float, hi: float, n: int) -> list[float]:
    """``n`` magnitudes from ``lo`` to ``hi`` (both included) evenly spaced on a log scale.

    Raises:
        SteerlabError: ``lo``/``hi`` not positive and finite with lo < hi, or n < 2.
    """
    if not (0 < lo < hi and math.isfinite(hi)):
        raise SteerlabError(f"search range {lo:g}..{hi:g}: expected 0 < lo < hi")
    if n < 2:
        raise SteerlabError(f"search grid of {n} points: expected at least 2")
    ratio = hi / lo
    return [lo * ratio ** (i / (n - 1)) for i in range(n)]


def refine(lo: float, hi: float, m: int) -> list[float]:
    """``m`` magnitudes strictly inside (lo, hi), evenly spaced on a log scale: lo·(hi/lo)^(k/(m+1))."""
    return [lo * (hi / lo) ** (k / (m + 1)) for k in range(1, m + 1)]


@dataclass(frozen=True)
class SearchState:
    """The thresholds read off one layer and sign's evaluated points: ``c_min`` (lower crossing of
    effective), ``c_fluent`` (upper crossing of fluent) and ``c_max`` (upper crossing of effective and
    fluent from ``c_min`` on; None when the range is empty)."""

    c_min: Crossing
    c_fluent: Crossing
    c_max: Crossing | None

    @property
    def usable(self) -> bool:
        """Whether some evaluated magnitude is both effective and fluent from ``c_min`` on."""
        return self.c_max is not None and self.c_max.value is not None

    def settled_empty(self) -> bool:
        """Whether no refinement can make the range non-empty: nothing effective or nothing fluent was
        found, or every effective magnitude lies at or above the first one that is not fluent."""
        if self.c_min.status == "not_found" or self.c_fluent.status == "not_found":
            return True
        lowest_effective = self.c_min.lo if self.c_min.lo is not None else self.c_min.value
        return self.c_fluent.hi is not None and lowest_effective is not None and lowest_effective >= self.c_fluent.hi


def search_state(effective: Mapping[float, bool], fluent: Mapping[float, bool]) -> SearchState:
    """The :class:`SearchState` of points evaluated at the same magnitudes (``{magnitude: bool}``).

    Raises:
        SteerlabError: the two mappings hold different magnitudes, or none.
    """
    if set(effective) != set(fluent):
        raise SteerlabError("bisection: effective and fluent must be measured at the same coefficients")
    c_min, c_fluent = lower_crossing(effective), upper_crossing(fluent)
    c_max = None
    if c_min.value is not None and c_fluent.value is not None and c_min.value <= c_fluent.value:
        good = {m: effective[m] and m <= c_fluent.value for m in effective if m >= c_min.value}
        c_max = upper_crossing(good)  # where fluency fails first, the bracket is c_fluent's
    return SearchState(c_min, c_fluent, c_max)


def next_candidates(state: SearchState, per_bracket: int, tolerance: float) -> list[float]:
    """The magnitudes the next step evaluates: ``per_bracket`` inside each open bracket of ``state``
    (``c_min``, ``c_fluent`` and ``c_max``; a bracket shared by two is refined once), none when the
    range is settled empty (:meth:`SearchState.settled_empty`). Sorted, without duplicates.

    Raises:
        SteerlabError: ``per_bracket`` < 1 or ``tolerance`` <= 1.
    """
    if per_bracket < 1:
        raise SteerlabError(f"bisection: {per_bracket} candidates per bracket: expected at least 1")
    if not tolerance > 1:
        raise SteerlabError(f"bisection tolerance {tolerance:g}: expected a ratio above 1 (e.g. 1.1)")
    if state.settled_empty():
        return []
    brackets = {(c.lo, c.hi) for c in (state.c_min, state.c_fluent, state.c_max) if c is not None and c.open(tolerance)}
    return sorted({m for lo, hi in brackets for m in refine(lo, hi, per_bracket)})  # type: ignore[arg-type]


Evaluate = Callable[[int, dict[int, list[float]]], dict[int, dict[float, tuple[bool, bool]]]]


def bisect(
    initial: Sequence[Sequence[float]], evaluate: Evaluate, steps: int, per_bracket: int, tolerance: float
) -> tuple[list[SearchState], int]:
    """Run the search for several tracks (e.g. layers x directions) at once.

    ``initial[t]``: track t's step-0 magnitudes. ``evaluate(step, {t: magnitudes})`` measures every
    track's candidates of one step together (the pipeline: as rows of one batch) and returns
    ``{t: {magnitude: (effective, fluent)}}``. After step 0, up to ``steps`` refinement steps evaluate
    :func:`next_candidates` of each track (magnitudes not yet evaluated); the search stops early when
    no track has any. Returns each track's final :class:`SearchState` and the number of steps run.
    """
    seen: list[dict[float, tuple[bool, bool]]] = [{} for _ in initial]
    pending = {t: sorted(set(ms)) for t, ms in enumerate(initial)}
    states: list[SearchState] = []
    ran = 0
    for step in range(steps + 1):
        pending = {t: ms for t, ms in pending.items() if ms}
        if not pending:
            break
        for t, results in evaluate(step, pending).items():
            seen[t].update(results)
        ran += 1
        states = [_state(points) for points in seen]
        pending = {
            t: [m for m in next_candidates(state, per_bracket, tolerance) if m not in seen[t]]
            for t, state in enumerate(states)
        }
    return states, ran


def _state(points: Mapping[float, tuple[bool, bool]]) -> SearchState:
    return search_state({m: e for m, (e, _) in points.items()}, {m: f for m, (_, f) in points.items()})


__all__ = [
    "Crossing",
    "SearchState",
    "bisect",
    "geometric_grid",
    "lower_crossing",
    "next_candidates",
    "refine",
    "search_state",
    "upper_crossing",
]
