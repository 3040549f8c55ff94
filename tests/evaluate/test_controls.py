import pytest
import torch

from steerlab.errors import SteerlabError
from steerlab.evaluate.controls import (
    control_summary,
    control_verdict,
    empirical_p,
    null_band,
    random_directions,
    within_band,
)
from steerlab.vectors.vector import SteeringVector


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_random_directions_do_not_touch_the_global_rng():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    random_directions(torch.ones(2, 4), 3)
    assert torch.equal(torch.rand(3), expected)


def test_random_directions_have_the_reference_norm_at_each_layer_and_zero_layers_stay_zero():
    ref = torch.randn(5, 32, generator=_gen(5)) * torch.tensor([1.0, 0.0, 3.0, 10.0, 0.5])[:, None]
    dirs = random_directions(SteeringVector(ref), k=6, seed=11)
    assert dirs.shape == (6, 5, 32) and dirs.dtype == torch.float32
    torch.testing.assert_close(dirs.norm(dim=-1), ref.norm(dim=-1).expand(6, 5), rtol=1e-6, atol=0)
    assert torch.equal(dirs[:, 1], torch.zeros(6, 32))
    unit = dirs[:, 0] / dirs[:, 0].norm(dim=-1, keepdim=True)
    off_diag = (unit @ unit.T - torch.eye(6)).abs()
    assert off_diag.max() < 0.7  # distinct directions, not copies of one another
    assert (unit @ (ref[0] / ref[0].norm())).abs().max() < 0.7  # not aligned with the reference


def test_random_directions_are_deterministic_under_the_seed():
    ref = torch.randn(3, 16, generator=_gen(6))
    a, b = random_directions(ref, 4, seed=2), random_directions(ref, 4, seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, random_directions(ref, 4, seed=3))
    assert torch.equal(random_directions(ref, 8, seed=2)[:4], a)  # more controls extend, never reshuffle
    # the unit directions depend on (seed, shape) only: the same controls for every vector
    scaled = random_directions(2 * ref, 4, seed=2)
    torch.testing.assert_close(scaled, 2 * a)
    one = random_directions(ref[0], 2, seed=0)
    assert one.shape == (2, 16)
    torch.testing.assert_close(one.norm(dim=-1), ref[0].norm().expand(2))
    assert random_directions(ref, 0).shape == (0, 3, 16)


def test_null_band_and_empirical_p():
    controls = torch.tensor([0.1, -0.2, 0.05, 0.3, -0.1, 0.0, 0.15, -0.05])
    band = null_band(controls)
    assert band["mean"] == pytest.approx(float(controls.double().mean()))
    assert band["lo"] == pytest.approx(float(torch.quantile(controls.double(), 0.025)))
    assert band["hi"] == pytest.approx(float(torch.quantile(controls.double(), 0.975)))
    assert band["lo"] < -0.15 and band["hi"] > 0.25
    assert empirical_p(2.0, controls) == pytest.approx(1 / 9)  # beyond every control: 1/(k+1)
    assert empirical_p(0.12, controls) == pytest.approx((1 + 3) / 9)  # |c| >= 0.12: -0.2, 0.3, 0.15
    assert empirical_p(-0.12, controls, "less") == pytest.approx((1 + 1) / 9)
    assert empirical_p(0.12, controls, "greater") == pytest.approx((1 + 2) / 9)
    with pytest.raises(SteerlabError, match="alternative 'both'"):
        empirical_p(0.1, controls, "both")  # type: ignore[arg-type]
    with pytest.raises(SteerlabError, match="no controls"):
        empirical_p(0.1, [])


def test_a_control_equal_to_the_vector_lands_on_the_effect():
    effect = -1.2345678
    controls = [0.01, -0.02, effect, 0.03]
    assert empirical_p(effect, controls) == pytest.approx(2 / 5)  # the copy counts as "as extreme"
    assert empirical_p(effect, [*controls[:2], effect * (1 + 1e-8), controls[3]]) == pytest.approx(2 / 5)
    summary = control_summary(effect, controls)
    assert summary["k"] == 4 and summary["p"] == pytest.approx(2 / 5)
    assert summary["lo"] < effect < summary["hi"] or summary["lo"] == pytest.approx(effect, abs=0.1)


def test_within_band_and_verdicts():
    band = {"mean": 0.0, "lo": -0.1, "hi": 0.2, "p": 0.5}
    assert within_band(0.2, band) and within_band(-0.1, band) and not within_band(0.21, band)
    assert control_verdict(0.05, band) == "not distinguishable from random directions"
    # without k the verdict cannot know the resolution; p names its sidedness and the level it misses
    assert (
        control_verdict(1.5, band, p=1 / 9)
        == "beyond the random band, but not significant at 0.05 (two-sided p = 0.11)"
    )
    assert (
        control_verdict(1.5, {**band, "alternative": "greater"}, p=0.01)
        == "beyond the random band (one-sided p = 0.01)"
    )
    summary = control_summary(1.5, [0.1, -0.1, 0.05, 0.0, 0.2, -0.05, 0.02, 0.01])
    # 8 controls cannot reach 0.05: the verdict says so instead of reading like a finding
    assert control_verdict(1.5, summary) == (
        "outside all 8 random directions; with 8 controls p cannot go below 0.11 — use --controls 19 or more "
        "for a test at 0.05"
    )


def test_verdicts_know_the_resolution_and_the_intended_direction():
    from steerlab.evaluate.controls import min_controls

    assert min_controls() == 19 and min_controls(0.01) == 99 and min_controls(0.1) == 9
    controls = [float(i) for i in range(1, 20)]  # 19 controls: p can reach 1/20 = 0.05
    top = control_summary(30.0, controls, alternative="greater")
    assert top["p"] == pytest.approx(0.05)
    assert control_verdict(30.0, {**top, "alternative": "greater"}) == "beyond the random band (one-sided p = 0.05)"
    second = control_summary(18.9, controls, alternative="greater")  # beyond the 97.5% band, not every control
    assert control_verdict(18.9, {**second, "alternative": "greater"}) == (
        "beyond the random band, but not significant at 0.05 (one-sided p = 0.1)"
    )
    few = {**control_summary(18.9, [*controls[:8], 19.0], alternative="greater"), "alternative": "greater"}
    assert control_verdict(18.95, few).startswith("beyond the random band but not outside all 9 random directions")
    # a negative coefficient intends a lower value: beyond the band upwards is the wrong way
    low = {"lo": -0.1, "hi": 0.1, "p": 1.0, "k": 8, "alternative": "less"}
    assert control_verdict(0.5, low) == "above the random band (the wrong way, more than random directions)"
    assert control_verdict(-0.5, {**low, "p": 1 / 9}).startswith("outside all 8 random directions")


def test_steering_evidence_is_one_sided_and_bounded():
    import torch

    from steerlab.evaluate.evidence import steering_evidence

    origin = torch.tensor([0.5, 0.6, 0.4, 0.5])  # fine-tuned margins
    target = torch.tensor([0.0, 0.1, -0.1, 0.0])  # base margins: the gap is -0.5
    steered = origin - 0.4  # undoes 80%
    wild = [origin + 2.0, origin - 0.1, origin - 0.05]  # one control moves far the WRONG way
    prompted = origin + 0.4 * (target - origin)  # prompting undoes 40%
    change = steering_evidence(steered, origin, wild, intended=-1, prompted=prompted)
    ev = change.gap_fraction(origin, target)  # the diff study's reading: a fraction of the gap
    assert abs(ev.effect - 0.8) < 1e-6 and abs(change.effect + 0.4) < 1e-6
    assert change.ci95[0] - 1e-6 <= -0.4 <= change.ci95[1] + 1e-6
    assert ev.random["p"] == 0.25  # (1 + 0) / (3 + 1): the wrong-way control does not count
    assert ev.random["alternative"] == "greater" and change.random["alternative"] == "less"
    assert ev.verdict.startswith("outside all 3 random directions") and abs(ev.vs_prompting - 2.0) < 1e-6
    assert ev.steerable_fraction == 1.0 and ev.anti_steerable_fraction == 0.0
    backwards = steering_evidence(origin + 1.0, origin, [origin - 0.1, origin, origin + 0.1], intended=-1)
    assert backwards.gap_fraction(origin, target).verdict.startswith("below the random band")
    assert backwards.verdict.startswith("above the random band")  # the same, in margin units


def test_steering_evidence_without_an_origin_reads_levels():
    from steerlab.evaluate.evidence import steering_evidence

    # judge scores (0-100) of a cell and of 3 random directions at it, some scores missing
    ev = steering_evidence([80.0, 90.0, 70.0], None, [[40.0, 50.0], [45.0], [60.0, 50.0, 55.0]], intended=1)
    assert ev.effect == pytest.approx(80.0) and ev.steerable_fraction is None
    assert ev.control_effects == pytest.approx((45.0, 45.0, 55.0)) and ev.random["p"] == 0.25
    with pytest.raises(SteerlabError, match="needs the unsteered origin"):
        steering_evidence([1.0, 2.0], None, prompted=[1.0, 2.0])
    with pytest.raises(SteerlabError, match="every control must hold the 2 samples"):
        steering_evidence([1.0, 2.0], [0.0, 0.0], [[1.0]])
    one = steering_evidence([0.3], [0.1], [0.2], intended=1)  # a control kept as its mean only
    assert one.ci95 is None and one.control_effects == pytest.approx((0.1,)) and one.random["p"] == 0.5
