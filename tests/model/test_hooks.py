"""steerlab.model.hooks: steerlab's hooks run before transformers' hidden-state recorders, compose in
installation order and are removed on every exit path; hidden states, captures and logits agree.

transformers >= 5 installs its ``output_hidden_states`` recorders on the decoder layers the first
time hidden states are requested and keeps them, so these tests use their own models (not the
session fixtures, whose hook tables other tests check).
"""

import pytest
import torch
from tiny import make_tiny

from steerlab.activations.capture import ChatSample, iter_batches, run_block_hooks
from steerlab.model.hooks import install_output_hooks, installed_hooks, output_hooks
from steerlab.steering.compat import ActivationSteerer
from steerlab.steering.operators import Intervention
from steerlab.steering.steerer import steer

ARCHS = ("llama", "qwen2", "gpt2", "gemma2")
LAYER = 2
COEFF = 3.0
# two prompts of different lengths: a left-padded batch
SAMPLES = [ChatSample("how should I store fresh bread so it stays soft"), ChatSample("yes")]


@pytest.fixture(scope="module", params=ARCHS)
def lm(request):
    """A tiny model of each architecture whose hidden states have been requested once, so
    transformers' recorders are on its decoder layers before any steering hook."""
    model = make_tiny(request.param)
    forward(model, batch_of(model), output_hidden_states=True)
    return model


def batch_of(lm):
    ((_, batch),) = list(iter_batches(lm, SAMPLES, batch_size=len(SAMPLES)))
    return batch


def forward(lm, batch, **kwargs):
    with torch.no_grad():
        return lm.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids(),
            use_cache=False,
            **kwargs,
        )


def hidden(lm, batch, layer=LAYER):
    """``hidden_states[layer + 1]`` and logits of one forward with ``output_hidden_states``."""
    out = forward(lm, batch, output_hidden_states=True)
    return out.hidden_states[layer + 1], out.logits


def captured(lm, batch, layer=LAYER):
    """Block ``layer``'s output as steerlab's capture sees it (padding zeroed)."""
    seen = {}
    run_block_hooks(lm, batch, [layer], lambda i, h: seen.__setitem__(i, h.clone()))
    return seen[layer]


def steered_mask(positions, batch):
    """``[b, T, 1]``: the positions steered at prefill (docs/design.md §4: response = last position)."""
    mask = torch.zeros(*batch.input_ids.shape, 1, dtype=torch.bool)
    if positions == "response":
        mask[:, -1] = True
    else:
        mask[:] = True
    return mask


def hook_tables(lm):
    return [list(module._forward_hooks) for module in lm.model.modules()]


@pytest.mark.parametrize("positions", ["all", "response", "prompt"])
def test_hidden_states_capture_and_logits_agree_under_steering(lm, positions):
    batch = batch_of(lm)
    tokens = batch.attention_mask.bool()[..., None]
    base_h, base_logits = hidden(lm, batch)
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(1))
    with steer(lm, Intervention(LAYER, v, COEFF, positions=positions)):
        h, logits = hidden(lm, batch)
        cap = captured(lm, batch)
    expected = torch.where(steered_mask(positions, batch), base_h + COEFF * v, base_h)
    assert torch.equal(h, expected)  # hidden_states[L + 1] shows the steering at the steered positions
    assert torch.equal(cap, h.masked_fill(~tokens, 0.0))  # steerlab's capture reads the same
    assert not torch.allclose(logits, base_logits)
    # the logits are those of the reported hidden state: put it in place of block L's output
    handle = lm.blocks[LAYER].register_forward_hook(lambda _m, _i, out: (h, *out[1:]) if isinstance(out, tuple) else h)
    try:
        replayed = forward(lm, batch).logits
    finally:
        handle.remove()
    assert torch.equal(replayed, logits)
    # steering left, recorders kept: hidden states are unsteered again
    assert installed_hooks(lm.model) == 0
    assert torch.equal(hidden(lm, batch)[0], base_h)


@pytest.mark.parametrize("arch", ARCHS)
def test_recorders_installed_while_steering(arch):
    """Hidden states requested for the first time inside the steerer: the recorders then come after it."""
    lm = make_tiny(arch)  # no hidden states requested yet
    batch = batch_of(lm)
    base = captured(lm, batch)
    v = torch.randn(lm.d_model)
    with steer(lm, Intervention(LAYER, v, COEFF)):
        h, _ = hidden(lm, batch)
    tokens = batch.attention_mask.bool()[..., None]
    assert torch.equal(h.masked_fill(~tokens, 0.0), (base + COEFF * v).masked_fill(~tokens, 0.0))
    with steer(lm, Intervention(LAYER, v, COEFF)):  # and again, recorders now installed first
        again, _ = hidden(lm, batch)
    assert torch.equal(again, h)


def test_steerlab_hooks_compose_in_installation_order(lm):
    batch = batch_of(lm)
    v = torch.randn(lm.d_model)
    unit = v / v.norm()
    add, ablate = Intervention(LAYER, v, COEFF), Intervention(LAYER, v, operator="ablate")
    with steer(lm, add), steer(lm, ablate):  # add, then ablate: nothing left along v
        h, _ = hidden(lm, batch)
        cap = captured(lm, batch)
    assert (h @ unit).abs().max() < 1e-4
    assert torch.equal(cap, h.masked_fill(~batch.attention_mask.bool()[..., None], 0.0))
    with steer(lm, ablate), steer(lm, add):  # ablate, then add: exactly COEFF·‖v‖ along v
        h, _ = hidden(lm, batch)
    torch.testing.assert_close(h @ unit, torch.full(h.shape[:2], COEFF * float(v.norm())), atol=1e-4, rtol=0)


def test_dispatch_order_with_foreign_hooks(lm):
    block = lm.blocks[LAYER]
    calls = []
    before = block.register_forward_hook(lambda *_: calls.append("foreign, installed before"))
    try:
        with output_hooks([(block, lambda *_: calls.append("steerlab 1"))]):
            after = block.register_forward_hook(lambda *_: calls.append("foreign, installed after"))
            with output_hooks([(block, lambda *_: calls.append("steerlab 2"))]):
                forward(lm, batch_of(lm))
            after.remove()
    finally:
        before.remove()
    assert calls == ["steerlab 1", "steerlab 2", "foreign, installed before", "foreign, installed after"]
    assert installed_hooks(lm.model) == 0


def test_hook_return_value_threads_through(lm):
    block = lm.blocks[LAYER]
    seen = []

    def double(_m, _i, out):
        return (out[0] * 2, *out[1:]) if isinstance(out, tuple) else out * 2

    def read(_m, _i, out):
        seen.append((out[0] if isinstance(out, tuple) else out).clone())  # returns None: unchanged

    batch = batch_of(lm)
    base = captured(lm, batch)
    with output_hooks([(block, double), (block, read)]) as group:
        assert len(group) == 2 and installed_hooks(lm.model) == 2
        h, _ = hidden(lm, batch)
    tokens = batch.attention_mask.bool()[..., None]
    assert torch.equal(seen[0], h) and torch.equal(h.masked_fill(~tokens, 0.0), base * 2)


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_hooks_removed_on_every_exit_path(lm, exc):
    batch = batch_of(lm)
    tables = hook_tables(lm)  # transformers' recorders are among them and must stay
    base_h, _ = hidden(lm, batch)
    v = torch.randn(lm.d_model)

    def raising(*_):
        raise exc

    def pairs_then_fail():
        yield lm.blocks[0], lambda *_: None
        yield lm.blocks[1], lambda *_: None
        raise exc

    attempts = [
        lambda: steer(lm, Intervention(LAYER, v, COEFF)),  # error in the with-body
        lambda: ActivationSteerer(lm.model, v, coeff=COEFF, layer=LAYER),
        lambda: output_hooks([(lm.blocks[LAYER], lambda *_: None)]),
    ]
    for make in attempts:
        with pytest.raises(type(exc)), make():
            assert installed_hooks(lm.model) == 1
            raise exc
        assert installed_hooks(lm.model) == 0 and hook_tables(lm) == tables
    with pytest.raises(type(exc)), output_hooks([(lm.blocks[LAYER], raising)]):  # error inside the forward
        forward(lm, batch)
    assert installed_hooks(lm.model) == 0 and hook_tables(lm) == tables
    with pytest.raises(type(exc)):  # error while installing: nothing stays installed
        install_output_hooks(pairs_then_fail())
    assert installed_hooks(lm.model) == 0 and hook_tables(lm) == tables
    group = install_output_hooks([(lm.blocks[LAYER], lambda *_: None)])
    group.remove()
    group.remove()  # idempotent
    assert installed_hooks(lm.model) == 0 and hook_tables(lm) == tables
    assert torch.equal(hidden(lm, batch)[0], base_h)  # recorders still report, unsteered


def test_capture_stops_the_forward_and_leaves_no_hooks(lm):
    # capture stops the forward after its last layer by raising from its hook
    batch = batch_of(lm)
    tables = hook_tables(lm)
    calls = []
    handle = lm.blocks[-1].register_forward_hook(lambda *_: calls.append("last block ran"))
    try:
        captured(lm, batch, layer=0)
    finally:
        handle.remove()
    assert calls == []
    assert installed_hooks(lm.model) == 0 and hook_tables(lm) == tables
