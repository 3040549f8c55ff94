"""Log-scale bisection (steerlab.evaluate.bisection) on synthetic predicates whose thresholds are known."""

import math

import pytest

from steerlab.errors import SteerlabError
from steerlab.evaluate.bisection import (
    bisect,
    geometric_grid,
    lower_crossing,
    next_candidates,
    refine,
    search_state,
    upper_crossing,
)


def run(thresholds, lo=0.01, hi=100.0, grid=7, steps=6, per_bracket=2, tolerance=1.05):
    """Bisect tracks whose effective / fluent predicates are given as functions of c; returns the states,
    the steps run and each evaluate call's candidates per track."""
    calls = []

    def evaluate(step, pending):
        calls.append({t: list(ms) for t, ms in pending.items()})
        return {t: {m: (thresholds[t][0](m), thresholds[t][1](m)) for m in ms} for t, ms in pending.items()}

    initial = [geometric_grid(lo, hi, grid) for _ in thresholds]
    states, ran = bisect(initial, evaluate, steps, per_bracket, tolerance)
    return states, ran, calls


def test_bisection_finds_known_thresholds_of_several_tracks_in_shared_steps():
    # track 0: effective from 3.7, fluent up to 12.5; track 1: effective from 0.2, fluent up to 40
    tracks = [(lambda c: c >= 3.7, lambda c: c <= 12.5), (lambda c: c >= 0.2, lambda c: c <= 40.0)]
    states, ran, calls = run(tracks)
    assert ran == len(calls) >= 2  # one evaluate call per step, every open track in it
    assert set(calls[0]) == {0, 1} and set(calls[1]) == {0, 1}
    for state, (c_min, c_max) in zip(states[:1], [(3.7, 12.5)], strict=True):
        assert state.usable
        assert state.c_min.lo < c_min <= state.c_min.value and state.c_min.value / state.c_min.lo <= 1.05
        assert state.c_fluent.value <= c_max < state.c_fluent.hi and state.c_fluent.hi / state.c_fluent.value <= 1.05
        assert state.c_max == state.c_fluent  # the run ends where fluency fails
    one = states[1]
    assert one.c_min.lo < 0.2 <= one.c_min.value and one.c_fluent.value <= 40.0 < one.c_fluent.hi
    # never a magnitude twice
    for t in (0, 1):
        seen = [m for call in calls for m in call.get(t, [])]
        assert len(seen) == len(set(seen))


def test_an_empty_range_is_settled_without_refining():
    # grid 0.01 ... 1, 4.64, 21.5, 100: effective only above 4.64, fluent only below it
    states, ran, calls = run([(lambda c: c >= 20.0, lambda c: c <= 2.0)])
    state = states[0]
    assert ran == 1 and len(calls) == 1  # effective only where already not fluent: nothing to refine
    assert not state.usable and state.c_max is None and state.settled_empty()
    assert state.c_min.lo >= state.c_fluent.hi


def test_effect_that_falls_back_into_the_band_ends_the_range_before_fluency_fails():
    states, _, _ = run([(lambda c: 2.0 <= c <= 6.0, lambda c: c <= 50.0)], steps=8)
    state = states[0]
    assert state.usable and state.c_max.value <= 6.0 < state.c_max.hi and state.c_max.hi / state.c_max.value <= 1.05
    assert state.c_fluent.value <= 50.0 < state.c_fluent.hi
    assert state.c_min.lo < 2.0 <= state.c_min.value


def test_bounds_at_the_ends_of_the_search_range():
    everywhere, _, calls = run([(lambda c: True, lambda c: True)])
    s = everywhere[0]
    assert len(calls) == 1  # nothing to bracket
    assert s.c_min.status == "at_range_end" and math.isclose(s.c_min.value, 0.01)
    assert s.c_fluent.status == "at_range_end" and math.isclose(s.c_fluent.value, 100.0) and s.usable
    nowhere, _, _ = run([(lambda c: False, lambda c: True)])
    assert nowhere[0].c_min.status == "not_found" and not nowhere[0].usable and nowhere[0].settled_empty()
    broken, _, _ = run([(lambda c: True, lambda c: False)])
    assert broken[0].c_fluent.status == "not_found" and not broken[0].usable


def test_crossings_read_the_first_change_and_refine_is_geometric():
    assert lower_crossing({1.0: False, 2.0: True, 4.0: False, 8.0: True}).value == 2.0
    up = upper_crossing({1.0: True, 2.0: True, 4.0: False, 8.0: True})  # a fluent point beyond a broken one
    assert (up.value, up.hi) == (2.0, 4.0)
    inner = refine(1.0, 8.0, 2)
    assert inner == pytest.approx([2.0, 4.0])
    assert geometric_grid(0.1, 10.0, 3) == pytest.approx([0.1, 1.0, 10.0])
    state = search_state({1.0: False, 8.0: True}, {1.0: True, 8.0: True})
    assert next_candidates(state, 2, 1.1) == pytest.approx([2.0, 4.0])


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: geometric_grid(2.0, 1.0, 3), "0 < lo < hi"),
        (lambda: geometric_grid(1.0, 2.0, 1), "at least 2"),
        (lambda: search_state({1.0: True}, {2.0: True}), "same coefficients"),
        (lambda: lower_crossing({}), "no evaluated"),
        (lambda: lower_crossing({-1.0: True}), "positive"),
        (lambda: next_candidates(search_state({1.0: True}, {1.0: True}), 2, 1.0), "above 1"),
        (lambda: next_candidates(search_state({1.0: True}, {1.0: True}), 0, 1.1), "at least 1"),
    ],
)
def test_bad_input_is_one_clear_error(call, needle):
    with pytest.raises(SteerlabError, match=needle):
        call()
