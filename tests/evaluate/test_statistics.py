import math

import pytest
import torch

from steerlab.errors import SteerlabError
from steerlab.evaluate.statistics import (
    bootstrap_ci,
    bootstrap_indices,
    gap_fraction,
    gap_fraction_ci,
    median,
    paired_bootstrap_ci,
    percentiles,
    ratio_of_means_ci,
    resampled_cosine_ci,
    steerable_fractions,
)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# --- bootstrap ------------------------------------------------------------------------------------


def test_bootstrap_interval_covers_the_true_mean_in_at_least_90_percent_of_200_simulations():
    gen = _gen(123)
    true_mean, covered = 0.7, 0
    for _ in range(200):
        sample = true_mean + 1.5 * torch.randn(30, generator=gen, dtype=torch.float64)
        lo, hi = bootstrap_ci(sample, n_resamples=1000, seed=int(torch.randint(0, 2**31, (1,), generator=gen)))
        covered += lo <= true_mean <= hi
    assert covered / 200 >= 0.90, covered


def test_bootstrap_ci_matches_a_loop_over_the_same_resamples():
    x = torch.randn(17, generator=_gen(0), dtype=torch.float64)
    idx = bootstrap_indices(17, 500, seed=4)
    dist = torch.stack([x[row].mean() for row in idx])
    expected = (float(torch.quantile(dist, 0.025)), float(torch.quantile(dist, 0.975)))
    assert bootstrap_ci(x, 500, seed=4) == pytest.approx(expected, abs=1e-12)
    dist_med = torch.stack([x[row].quantile(0.5) for row in idx])
    got = bootstrap_ci(x, 500, seed=4, statistic=median, level=0.9)
    assert got == pytest.approx((float(dist_med.quantile(0.05)), float(dist_med.quantile(0.95))), abs=1e-12)


def test_bootstrap_ci_is_seeded_and_batched_over_leading_dims():
    x = torch.randn(3, 25, generator=_gen(1))
    assert bootstrap_ci(x[0], seed=7) == bootstrap_ci(x[0], seed=7)
    assert bootstrap_ci(x[0], seed=7) != bootstrap_ci(x[0], seed=8)
    lo, hi = bootstrap_ci(x, seed=7)
    assert lo.shape == hi.shape == (3,)
    for row in range(3):  # same resample indices for every series
        assert (float(lo[row]), float(hi[row])) == pytest.approx(bootstrap_ci(x[row], seed=7), abs=1e-12)
        assert lo[row] < x[row].double().mean() < hi[row]


def test_bootstrap_does_not_touch_the_global_rng():
    a, b = torch.randn(4, 2, 3, generator=_gen(0)), torch.randn(5, 2, 3, generator=_gen(1))
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    bootstrap_ci(torch.arange(10.0))
    resampled_cosine_ci(a, b, n_resamples=10)
    assert torch.equal(torch.rand(3), expected)


def test_paired_bootstrap_of_the_mean_difference_is_the_bootstrap_of_differences():
    gen = _gen(2)
    shared = 5 * torch.randn(40, generator=gen, dtype=torch.float64)
    a = shared + 0.3 + 0.1 * torch.randn(40, generator=gen, dtype=torch.float64)
    b = shared + 0.1 * torch.randn(40, generator=gen, dtype=torch.float64)
    lo, hi = paired_bootstrap_ci(a, b, seed=3)
    assert (lo, hi) == pytest.approx(bootstrap_ci(a - b, seed=3), abs=1e-12)
    assert 0 < lo < 0.3 < hi  # the shared variation cancels: the paired interval is narrow
    unpaired_width = bootstrap_ci(a, seed=3)[1] - bootstrap_ci(a, seed=3)[0]
    assert hi - lo < unpaired_width / 5


def test_ratio_and_gap_fraction_resample_pairs_jointly():
    gen = _gen(3)
    base = torch.randn(50, generator=gen, dtype=torch.float64)
    finetuned = base + 2.0 + 0.2 * torch.randn(50, generator=gen, dtype=torch.float64)
    steered = finetuned - 1.0 + 0.2 * torch.randn(50, generator=gen, dtype=torch.float64)
    point = gap_fraction(origin=finetuned, target=base, steered=steered)
    assert point == pytest.approx(float((finetuned - steered).mean() / (finetuned - base).mean()))
    lo, hi = gap_fraction_ci(finetuned, base, steered, seed=1)
    assert lo < point < hi and lo > 0.35 and hi < 0.65
    idx = bootstrap_indices(50, 1000, seed=1)
    num, den = (finetuned - steered)[idx].mean(-1), (finetuned - base)[idx].mean(-1)
    assert (lo, hi) == pytest.approx([float(q) for q in percentiles(num / den, (0.025, 0.975))], abs=1e-12)
    assert ratio_of_means_ci(finetuned - steered, finetuned - base, seed=1) == (lo, hi)


def test_ratio_is_unbounded_when_the_denominator_can_be_zero():
    gen = _gen(4)
    den = torch.randn(30, generator=gen, dtype=torch.float64)  # mean ~ 0, interval contains 0
    assert ratio_of_means_ci(torch.ones(30), den) == (-math.inf, math.inf)
    assert math.isnan(gap_fraction([1.0, 1.0], [1.0, 1.0], [2.0, 2.0]))


def test_bootstrap_errors_name_the_problem():
    with pytest.raises(SteerlabError, match="at least 2 samples"):
        bootstrap_ci([1.0])
    with pytest.raises(SteerlabError, match="NaN or inf"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(SteerlabError, match="level 95"):
        bootstrap_ci([1.0, 2.0], level=95)
    with pytest.raises(SteerlabError, match="same samples"):
        paired_bootstrap_ci([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(SteerlabError, match="same samples"):
        gap_fraction_ci([1.0, 2.0], [1.0, 2.0], [1.0, 2.0, 3.0])


# --- per-sample steerability ---------------------------------------------------------------------


def test_steerable_fractions():
    deltas = torch.tensor([0.5, -0.1, 0.0, 2.0, -3.0, 0.2, 0.1, 0.0])
    assert steerable_fractions(deltas, +1) == {"steerable": 4 / 8, "anti_steerable": 2 / 8, "n": 8}
    assert steerable_fractions(deltas, -1) == {"steerable": 2 / 8, "anti_steerable": 4 / 8, "n": 8}
    with pytest.raises(SteerlabError, match="intended_sign 0"):
        steerable_fractions(deltas, 0)
    with pytest.raises(SteerlabError, match="no samples"):
        steerable_fractions([], 1)


# --- cosine intervals -----------------------------------------------------------------------------


def _cos(a, b):
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def test_resampled_cosine_ci_equals_a_loop_over_resamples_and_does_not_depend_on_chunk():
    gen = _gen(7)
    direction = torch.randn(3, 20, generator=gen, dtype=torch.float64)
    a = direction + 0.8 * torch.randn(12, 3, 20, generator=gen, dtype=torch.float64)
    b = direction * torch.tensor([1.0, -1.0, 0.0])[:, None] + torch.randn(9, 3, 20, generator=gen, dtype=torch.float64)
    ci = resampled_cosine_ci(a, b, n_resamples=300, seed=9)
    assert ci.shape == (3, 2)
    assert torch.equal(ci, resampled_cosine_ci(a, b, n_resamples=300, seed=9, chunk=7))
    g = torch.Generator().manual_seed(9)
    ia, ib = torch.randint(0, 12, (300, 12), generator=g), torch.randint(0, 9, (300, 9), generator=g)
    cos = torch.stack([_cos(a[ia[r]].mean(0), b[ib[r]].mean(0)) for r in range(300)])  # [R, L]
    expected = torch.stack([cos.quantile(0.025, dim=0), cos.quantile(0.975, dim=0)], -1).float()
    torch.testing.assert_close(ci, expected, atol=1e-6, rtol=0)
    full = _cos(a.mean(0), b.mean(0))
    assert ci[0, 0] > 0.3 and ci[1, 1] < -0.3  # aligned and opposed layers are told apart
    assert ((ci[:, 0] <= full) & (full <= ci[:, 1])).all()
    assert (ci[2, 1] - ci[2, 0]) > 2 * (ci[0, 1] - ci[0, 0])  # an unrelated layer is far less certain


def test_resampled_cosine_ci_with_unpaired_pos_neg_samples():
    gen = _gen(8)
    pos, neg = torch.randn(10, 2, 8, generator=gen) + 1.0, torch.randn(7, 2, 8, generator=gen)
    diffs = torch.randn(6, 2, 8, generator=gen) + 1.0
    ci = resampled_cosine_ci((pos, neg), diffs, n_resamples=200, seed=1)
    g = torch.Generator().manual_seed(1)
    ip, ineg = torch.randint(0, 10, (200, 10), generator=g), torch.randint(0, 7, (200, 7), generator=g)
    idf = torch.randint(0, 6, (200, 6), generator=g)
    cos = torch.stack(
        [
            _cos(pos[ip[r]].double().mean(0) - neg[ineg[r]].double().mean(0), diffs[idf[r]].double().mean(0))
            for r in range(200)
        ]
    )
    expected = torch.stack([cos.quantile(0.025, dim=0), cos.quantile(0.975, dim=0)], -1).float()
    torch.testing.assert_close(ci, expected, atol=1e-5, rtol=0)
    with pytest.raises(SteerlabError, match="differ in"):
        resampled_cosine_ci(diffs, torch.randn(6, 3, 8))
    with pytest.raises(SteerlabError, match="n >= 2"):
        resampled_cosine_ci(diffs[:1], diffs)
