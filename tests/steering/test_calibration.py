"""Reference statistics (steerlab.steering.calibration): mean residual norms, projections, cap
thresholds from a percentile, checked against a hand computation from unbatched forward passes."""

import math
import re

import pytest
import torch
from tiny import make_tiny

from steerlab import SteeringSpec, SteeringVector, cap_threshold, mean_residual_norms, steer
from steerlab.activations.capture import ChatSample
from steerlab.errors import SteerlabError
from steerlab.model.chat import encode_chat
from steerlab.steering.calibration import layer_projections, percentile_of

# Different lengths, so that batches of two are left-padded.
PROMPTS = [
    "how should I store fresh bread so it stays soft",
    "yes",
    "drink water rest and see a doctor if the fever lasts",
    [{"role": "system", "content": "answer briefly"}, {"role": "user", "content": "is the stove off"}],
    "the quick brown fox",
]


@pytest.fixture(scope="module")
def lm():
    """A tiny llama of this module's own: ``output_hidden_states`` makes transformers install its
    recording hooks on the blocks for good, which other modules' tests on ``lm`` rule out."""
    return make_tiny("llama")


def block_outputs(lm, prompt) -> torch.Tensor:
    """``[n_layers, seq, d_model]``: every block's output for one prompt, unbatched and unpadded, read
    with plain torch hooks (``hidden_states[-1]`` of transformers has the final norm applied)."""
    ids = torch.tensor([encode_chat(lm.tokenizer, prompt).ids])
    outputs = [None] * lm.n_layers

    def keep(i):
        def hook(_module, _inputs, out):
            outputs[i] = out[0] if isinstance(out, tuple) else out

        return hook

    handles = [block.register_forward_hook(keep(i)) for i, block in enumerate(lm.blocks)]
    try:
        with torch.no_grad():
            hidden_states = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    finally:
        for h in handles:
            h.remove()
    stacked = torch.stack([o[0] for o in outputs]).float()
    # layer L = output of block L = hidden_states[L + 1] (all but the last, which is normed)
    for layer in range(lm.n_layers - 1):
        assert torch.equal(stacked[layer], hidden_states[layer + 1][0].float())
    return stacked


def hand_percentile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics: rank q/100 * (n - 1) of the sorted values."""
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    lo, hi = math.floor(rank), math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def hand_projections(lm, direction: torch.Tensor, layer: int) -> list[float]:
    unit = direction.double() / direction.double().norm()
    return [float(x) for p in PROMPTS for x in block_outputs(lm, p)[layer].double() @ unit]


def test_mean_residual_norms_equal_the_mean_token_norm_per_layer(lm):
    norms = mean_residual_norms(lm, PROMPTS, batch_size=2)
    outs = [block_outputs(lm, p) for p in PROMPTS]
    n_tokens = sum(o.shape[1] for o in outs)
    expected = torch.stack([o.double().norm(dim=-1).sum(-1) for o in outs]).sum(0) / n_tokens
    assert norms.shape == (lm.n_layers,) and norms.dtype == torch.float32
    torch.testing.assert_close(norms.double(), expected, rtol=1e-5, atol=0)
    # batched (left padding) equals one prompt at a time
    torch.testing.assert_close(mean_residual_norms(lm, PROMPTS, batch_size=1), norms, rtol=1e-6, atol=0)


def test_layer_projections_are_every_token_along_the_unit_direction(lm):
    torch.manual_seed(0)
    directions = {1: torch.randn(64) * 3, 3: torch.randn(64)}
    got = layer_projections(lm, PROMPTS, directions, batch_size=2)
    assert sorted(got) == [1, 3]
    for layer, direction in directions.items():
        expected = sorted(hand_projections(lm, direction, layer))
        assert got[layer].shape == (len(expected),)  # one value per non-pad token, no padding
        torch.testing.assert_close(
            got[layer].sort().values.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("q", [0, 10, 50, 90, 97.5, 100])
def test_percentile_of_interpolates_linearly_between_order_statistics(q):
    values = [3.0, -1.0, 7.5, 0.25, 2.0, 10.0, -4.0]
    assert percentile_of(torch.tensor(values), q) == pytest.approx(hand_percentile(values, q), abs=1e-12)


def test_cap_threshold_is_the_percentile_of_projections_by_hand(lm):
    torch.manual_seed(1)
    vec = SteeringVector(torch.randn(4, 64))
    for layer in (0, 2, 3):
        expected = hand_percentile(hand_projections(lm, vec[layer], layer), 90)
        got = cap_threshold(lm, vec, layer, PROMPTS, 90, batch_size=2)
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-5), layer
    # a 1-D direction is used as given, at the layer asked (negative layers count from the end)
    direction = torch.randn(64)
    expected = hand_percentile(hand_projections(lm, direction, 3), 25)
    assert cap_threshold(lm, direction, -1, PROMPTS, 25) == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_calibrated_spec_caps_each_layer_at_its_own_percentile(lm):
    torch.manual_seed(2)
    vec = SteeringVector(torch.randn(4, 64))
    spec = SteeringSpec(vec, "1-2", operator="cap", ceiling_percentile=90, floor_percentile=5)
    resolved = spec.calibrated(lm, [ChatSample(p) for p in PROMPTS], batch_size=2)
    assert resolved.ceiling_percentile is None and resolved.floor_percentile is None
    assert sorted(resolved.ceiling) == [1, 2] and sorted(resolved.floor) == [1, 2]
    for layer in (1, 2):
        values = hand_projections(lm, vec[layer], layer)
        assert resolved.ceiling[layer] == pytest.approx(hand_percentile(values, 90), rel=1e-5, abs=1e-5)
        assert resolved.floor[layer] == pytest.approx(hand_percentile(values, 5), rel=1e-5, abs=1e-5)
    assert spec.ceiling is None  # the original spec is left as it was

    unit = vec[2] / vec[2].norm()
    before = torch.cat([block_outputs(lm, p)[2] @ unit for p in PROMPTS])
    with steer(lm, resolved):
        after = torch.cat([block_outputs(lm, p)[2] @ unit for p in PROMPTS])
    assert bool((before > resolved.ceiling[2] + 1e-4).any())  # the cap had something to clamp
    assert bool((after <= resolved.ceiling[2] + 1e-4).all()) and bool((after >= resolved.floor[2] - 1e-4).all())
    # a spec without percentiles is returned as is
    plain = SteeringSpec(vec, 1, operator="cap", ceiling=0.5)
    assert plain.calibrated(lm, PROMPTS) is plain


def test_per_layer_thresholds_apply_at_their_layer_only(lm):
    vec = SteeringVector(torch.randn(4, 64))
    spec = SteeringSpec(vec, [1, 3], operator="cap", ceiling={1: -0.5, 3: 2.0})
    ivs = spec.interventions(lm)
    assert [(iv.layer, iv.ceiling, iv.floor) for iv in ivs] == [(1, -0.5, None), (3, 2.0, None)]
    with pytest.raises(SteerlabError, match=r"ceiling has values for layers \[1\], not for layer 3"):
        SteeringSpec(vec, [1, 3], operator="cap", ceiling={1: -0.5}).interventions(lm)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"operator": "cap", "ceiling_percentile": 120}, "--cap-percentile 120: expected a number in 0..100"),
        ({"operator": "cap", "floor_percentile": -1}, "--cap-floor-percentile -1: expected a number in 0..100"),
        ({"operator": "cap"}, "--operator cap needs a ceiling and/or a floor"),
        ({"operator": "add", "ceiling_percentile": 90}, "--cap-percentile: for --operator cap only, not 'add'"),
        ({"operator": "ablate", "ceiling": 1.0, "floor": 0.0}, "--cap-ceiling/--cap-floor: for --operator cap only"),
        ({"operator": "cap", "ceiling": 1.0, "ceiling_percentile": 90}, "--cap-ceiling or --cap-percentile, not both"),
        ({"operator": "cap", "floor": 1.0, "floor_percentile": 5}, "--cap-floor or --cap-floor-percentile, not both"),
        ({"operator": "cap", "ceiling": float("nan")}, "ceiling: expected a finite number"),
        ({"operator": "cap", "ceiling": {2: float("inf")}}, "ceiling at layer 2: expected a finite number"),
    ],
)
def test_bad_cap_options_fail_at_construction(kwargs, message):
    with pytest.raises(SteerlabError, match=re.escape(message)):
        SteeringSpec(torch.ones(64), 1, **kwargs)


def test_unresolved_percentile_cannot_steer_and_bad_references_fail(lm):
    spec = SteeringSpec(torch.ones(64), 1, operator="cap", ceiling_percentile=90)
    with pytest.raises(SteerlabError, match=r"call spec.calibrated\(lm, prompts\)"):
        steer(lm, spec)
    with pytest.raises(SteerlabError, match="no samples given"):
        spec.calibrated(lm, [])
    with pytest.raises(SteerlabError, match="zero vector has no direction"):
        SteeringSpec(torch.zeros(64), 1, operator="cap", ceiling_percentile=90).calibrated(lm, PROMPTS)
    with pytest.raises(SteerlabError, match="--layer 7 is out of range"):
        cap_threshold(lm, torch.ones(64), 7, PROMPTS, 90)
    with pytest.raises(SteerlabError, match="d_model 8 does not match"):
        cap_threshold(lm, torch.ones(8), 1, PROMPTS, 90)
