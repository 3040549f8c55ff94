"""steerlab.judge.score: expected score over the answers 0..100 and the 0.25 rule (docs/design.md §6)."""

import math

import pytest

from steerlab.judge.score import mean_score, parse_number_token, score_from_distribution, score_from_top_logprobs


def test_expected_score_from_top_logprobs():
    top = {"85": math.log(0.5), " 85": math.log(0.1), "90": math.log(0.2), "REFUSAL": math.log(0.2)}
    result = score_from_top_logprobs(top)
    assert result.mass == pytest.approx(0.8)
    assert result.score == pytest.approx((85 * 0.6 + 90 * 0.2) / 0.8)


def test_non_number_tokens_are_ignored():
    top = [
        ("100", math.log(0.3)),
        ("101", math.log(0.2)),
        ("-5", math.log(0.1)),
        ("5.5", math.log(0.1)),
        ("٣", math.log(0.1)),
        ("0", math.log(0.1)),
        ("007", -1.0),
    ]
    result = score_from_top_logprobs(top)
    assert result.mass == pytest.approx(0.4 + math.exp(-1.0))
    assert result.score == pytest.approx((100 * 0.3 + 7 * math.exp(-1.0)) / result.mass)
    assert [parse_number_token(t) for t in ("0", " 42 ", "100", "101", "4a", "", "²")] == [
        0,
        42,
        100,
        None,
        None,
        None,
        None,
    ]


def test_none_when_number_mass_below_quarter():
    refusal = {"REFUSAL": math.log(0.7), "I": math.log(0.1), "50": math.log(0.2)}
    result = score_from_top_logprobs(refusal)
    assert result.score is None and result.mass == pytest.approx(0.2)
    assert result.expected == pytest.approx(50)
    assert score_from_top_logprobs({"50": math.log(0.25)}).score == pytest.approx(50)
    assert score_from_top_logprobs({}).score is None
    assert score_from_distribution([0.0] * 101).score is None
    dist = [0.0] * 101
    dist[10], dist[100] = 0.1, 0.1
    assert score_from_distribution(dist).score is None
    assert score_from_distribution(dist, min_mass=0.1).score == pytest.approx(55)


def test_objects_like_openai_top_logprobs():
    class TopLogprob:
        def __init__(self, token, logprob):
            self.token, self.logprob = token, logprob

    result = score_from_top_logprobs([TopLogprob("70", math.log(0.9)), TopLogprob("x", -3)])
    assert result.score == pytest.approx(70)


def test_mean_score_skips_none():
    assert mean_score([None, 10.0, 30.0]) == 20.0 and mean_score([None]) is None and mean_score([]) is None
