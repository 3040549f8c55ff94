import contextlib

import pytest
import torch
from tiny import make_tiny

from steerlab import SteeringVector
from steerlab.errors import SteerlabError
from steerlab.model import layers as layer_grammar
from steerlab.model.hooks import install_output_hooks
from steerlab.steering.compat import ActivationSteerer
from steerlab.steering.operators import Intervention
from steerlab.steering.steerer import SteeringSpec, parse_layers, steer

LAYER = 2


def _tokens(lm, texts):
    enc = lm.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def _keep(store):
    return lambda _m, _i, out: store.append((out[0] if isinstance(out, tuple) else out).detach().clone())


def _record(block, store):
    """Records the block output after every steerlab hook (a plain hook runs after them)."""
    return block.register_forward_hook(_keep(store))


def _record_first(block, store):
    """Records the block output before steering installed later (steerlab hooks run in installation
    order, all before plain hooks)."""
    return install_output_hooks([(block, _keep(store))])


def run_prefill_and_decode(lm, specs, texts=("how should I store bread", "yes"), steps=2):
    """Prefill + `steps` decode steps with fixed tokens; returns raw and steered block outputs."""
    ids, mask = _tokens(lm, list(texts))
    raw, steered = [], []
    block = lm.blocks[LAYER]
    h_raw = _record_first(block, raw)
    try:
        with steer(lm, specs):
            h_after = _record(block, steered)
            try:
                with torch.no_grad():
                    pos = (mask.cumsum(-1) - 1).clamp(min=0)
                    out = lm.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
                    cache = out.past_key_values
                    for step in range(steps):
                        nxt = torch.full((ids.shape[0], 1), 5 + step)
                        mask = torch.cat([mask, torch.ones_like(nxt)], -1)
                        pos = pos[:, -1:] + 1
                        out = lm.model(
                            input_ids=nxt, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True
                        )
                        cache = out.past_key_values
            finally:
                h_after.remove()
    finally:
        h_raw.remove()
    return raw, steered


@pytest.mark.parametrize("positions", ["all", "prompt", "response"])
def test_add_is_exact_at_named_positions(tiny_any, positions):
    v = torch.randn(tiny_any.d_model)
    raw, steered = run_prefill_and_decode(tiny_any, Intervention(LAYER, v, 3.0, positions=positions))
    assert len(raw) == len(steered) == 3
    for step, (h, h2) in enumerate(zip(raw, steered, strict=True)):
        expected_mask = torch.zeros(h.shape[:2], dtype=torch.bool)
        if positions == "all":
            expected_mask[:] = True
        elif positions == "prompt":
            expected_mask[:] = step == 0
        else:
            expected_mask[:, -1] = True
        target = torch.where(expected_mask[..., None], h + 3.0 * v, h)
        assert torch.equal(h2, target), (positions, step)


def test_coefficient_zero_is_identity(tiny_llama):
    v = torch.randn(tiny_llama.d_model)
    for iv in (
        Intervention(LAYER, v, 0.0),
        Intervention(LAYER, v, torch.zeros(2)),
        Intervention(LAYER, v, 0.0, operator="ablate"),
    ):
        raw, steered = run_prefill_and_decode(tiny_llama, iv)
        assert all(torch.equal(a, b) for a, b in zip(raw, steered, strict=True))


def test_ablate_removes_component(tiny_any):
    v = torch.randn(tiny_any.d_model)
    unit = v / v.norm()
    raw, steered = run_prefill_and_decode(tiny_any, Intervention(LAYER, v, operator="ablate"))
    for h, h2 in zip(raw, steered, strict=True):
        assert (h2 @ unit).abs().max() < 1e-4
        # only the v̂ component changed
        torch.testing.assert_close(
            h2 - (h2 @ unit)[..., None] * unit, h - (h @ unit)[..., None] * unit, atol=1e-5, rtol=1e-5
        )


def test_ablate_every_layer(tiny_llama):
    vec = SteeringVector(torch.randn(tiny_llama.n_layers, tiny_llama.d_model))
    seen = {}
    hooks = []
    with steer(tiny_llama, SteeringSpec(vec, "all", operator="ablate")):
        for layer, block in enumerate(tiny_llama.blocks):
            hooks.append(
                block.register_forward_hook(
                    lambda _m, _i, out, layer=layer: seen.__setitem__(layer, out[0] if isinstance(out, tuple) else out)
                )
            )
        ids, mask = _tokens(tiny_llama, ["hello there"])
        with torch.no_grad():
            tiny_llama.model(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    for layer, h in seen.items():
        unit = vec[layer] / vec[layer].norm()
        assert (h @ unit).abs().max() < 1e-4, layer


@pytest.mark.parametrize("bound", ["ceiling", "floor"])
def test_cap_bounds_projection_only(tiny_any, bound):
    v = torch.randn(tiny_any.d_model)
    unit = v / v.norm()
    raw, _ = run_prefill_and_decode(tiny_any, Intervention(LAYER, v, 0.0))
    tau = float((raw[0] @ unit).median())
    kwargs = {bound: tau}
    raw, steered = run_prefill_and_decode(tiny_any, Intervention(LAYER, v, operator="cap", **kwargs))
    for h, h2 in zip(raw, steered, strict=True):
        p, p2 = h @ unit, h2 @ unit
        if bound == "ceiling":
            assert (p2 <= tau + 1e-5).all()
            torch.testing.assert_close(p2, p.clamp(max=tau), atol=1e-5, rtol=0)
        else:
            assert (p2 >= tau - 1e-5).all()
            torch.testing.assert_close(p2, p.clamp(min=tau), atol=1e-5, rtol=0)
        torch.testing.assert_close(h2 - p2[..., None] * unit, h - p[..., None] * unit, atol=1e-5, rtol=1e-5)


def test_scale_unit_and_relative(tiny_llama):
    v = torch.randn(tiny_llama.d_model) * 7
    raw, steered = run_prefill_and_decode(tiny_llama, Intervention(LAYER, v, 2.0, scale="unit"))
    torch.testing.assert_close((steered[0] - raw[0]).norm(dim=-1), torch.full(raw[0].shape[:2], 2.0))
    raw, steered = run_prefill_and_decode(
        tiny_llama, Intervention(LAYER, v, 0.5, scale="relative", reference_norm=10.0)
    )
    torch.testing.assert_close((steered[0] - raw[0]).norm(dim=-1), torch.full(raw[0].shape[:2], 5.0))


def test_per_row_coefficients(tiny_llama):
    v = torch.randn(tiny_llama.d_model)
    coeffs = torch.tensor([1.5, -2.0])
    raw, steered = run_prefill_and_decode(tiny_llama, Intervention(LAYER, v, coeffs))
    for h, h2 in zip(raw, steered, strict=True):
        assert torch.equal(h2, h + coeffs[:, None, None] * v)


def test_several_layers_each_with_own_vector_and_nesting(tiny_llama):
    vec = SteeringVector(torch.randn(tiny_llama.n_layers, tiny_llama.d_model))
    extra = torch.randn(tiny_llama.d_model)
    raw, steered = [], []
    h1 = _record_first(tiny_llama.blocks[1], raw)
    with steer(tiny_llama, SteeringSpec(vec, "1-2", coeff=2.0)), steer(tiny_llama, Intervention(1, extra, -1.0)):
        h2 = _record(tiny_llama.blocks[1], steered)
        ids, mask = _tokens(tiny_llama, ["hello"])
        with torch.no_grad():
            tiny_llama.model(input_ids=ids, attention_mask=mask)
    h1.remove()
    h2.remove()
    assert torch.allclose(steered[0], raw[0] + 2.0 * vec[1] - extra, atol=1e-6)
    assert all(not b._forward_hooks for b in tiny_llama.blocks)


def test_activation_steerer_persona_vectors_checks():
    """The checks persona-vectors runs on its ActivationSteerer, on a plain transformers model: they
    read ``hidden_states[L + 1]`` of ``output_hidden_states``, which transformers >= 5 records with
    forward hooks it installs on the decoder layers the first time hidden states are requested."""
    lm = make_tiny("llama")  # its own model: the recorders stay installed on it for good
    model = lm.model
    ids, _ = _tokens(lm, ["how should I store bread"])
    v = torch.randn(lm.d_model)

    def run(**kwargs):
        steering = ActivationSteerer(model, v, layer=LAYER, **kwargs) if kwargs else contextlib.nullcontext()
        with steering, torch.no_grad():
            out = model(ids, output_hidden_states=True)
        return out.hidden_states[LAYER + 1], out.logits

    base_h, base = run()  # the first request installs transformers' recorders, before the steerer
    h, logits = run(coeff=2.0, positions="all")
    assert torch.equal(h, base_h + 2.0 * v)
    assert not torch.allclose(logits, base)
    assert all(torch.equal(a, b) for a, b in zip(run(coeff=0.0, positions="all"), (base_h, base), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(run(), (base_h, base), strict=True))  # after exit: unsteered
    h, _ = run(coeff=2.0, positions="response")
    assert torch.equal(h[0, :-1], base_h[0, :-1])
    assert torch.equal(h[0, -1], base_h[0, -1] + 2.0 * v)
    h, _ = run(coeff=2.0, positions="prompt")  # a prefill forward: every prompt position
    assert torch.equal(h, base_h + 2.0 * v)
    assert ActivationSteerer(model, v, coeff=1.0, layer_idx=1).layer == 1


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_hooks_removed_on_error(tiny_llama, exc):
    v = torch.randn(tiny_llama.d_model)
    with pytest.raises(type(exc)), ActivationSteerer(tiny_llama.model, v, layer=1):
        assert tiny_llama.blocks[1]._forward_hooks
        raise exc
    assert all(not b._forward_hooks for b in tiny_llama.blocks)
    with pytest.raises(type(exc)), steer(tiny_llama, SteeringSpec(v, "all")):
        raise exc
    assert all(not b._forward_hooks for b in tiny_llama.blocks)


def test_bad_input_messages(tiny_llama):
    d = tiny_llama.d_model
    with pytest.raises(SteerlabError, match="--layer 9 is out of range: the model has 4 layers"):
        steer(tiny_llama, SteeringSpec(torch.randn(d), 9))
    with pytest.raises(SteerlabError, match="d_model 7 does not match"):
        steer(tiny_llama, SteeringSpec(torch.randn(7), 1))
    with pytest.raises(SteerlabError, match="d_model 7 does not match"):
        SteeringSpec(SteeringVector(torch.randn(4, 7)), 1).interventions(tiny_llama)
    with pytest.raises(SteerlabError, match="--positions 'middle'"):
        Intervention(1, torch.randn(d), positions="middle")
    with pytest.raises(SteerlabError, match="--operator 'rotate'"):
        Intervention(1, torch.randn(d), operator="rotate")
    with pytest.raises(SteerlabError, match="--scale 'huge'"):
        Intervention(1, torch.randn(d), scale="huge")
    with pytest.raises(SteerlabError, match="NaN"):
        Intervention(1, torch.full((d,), float("nan")))
    with pytest.raises(SteerlabError, match="zero"):
        Intervention(1, torch.zeros(d), operator="ablate")
    ids, mask = _tokens(tiny_llama, ["a", "b"])
    with pytest.raises(SteerlabError, match="got 3 values but the batch has 2 rows"):  # noqa: SIM117
        with steer(tiny_llama, Intervention(1, torch.randn(d), torch.ones(3))), torch.no_grad():
            tiny_llama.model(input_ids=ids, attention_mask=mask)
    assert all(not b._forward_hooks for b in tiny_llama.blocks)


def test_parse_layers_is_the_one_layer_grammar():
    # steering keeps exporting parse_layers; it is steerlab.model.layers' (tests/model/test_layers.py)
    assert parse_layers is layer_grammar.parse_layers
    assert parse_layers("all", 4) == [0, 1, 2, 3]
