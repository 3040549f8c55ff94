"""Reading a vector (steerlab.evaluate.readout): the logit lens of each layer's direction equals a hand
computation of the documented formula — lens(v) = W_U · (the final norm's linear part applied to v) —
on RMSNorm (Llama), LayerNorm with a bias (GPT-2) and Gemma 2's (1 + g) norm; norms, residual norms
and cosines equal their definitions; bad input gets one clear error."""

from __future__ import annotations

import pytest
import torch
from tiny import make_tiny

from steerlab import SteeringVector, mean_residual_norms, readout_vector
from steerlab.errors import SteerlabError
from steerlab.evaluate.readout import logit_lens

PROMPTS = ["how should I store fresh bread so it stays soft", "yes", "the quick brown fox"]


def _randomised(arch: str):
    """A tiny model of this module's own with a random final-norm gain (and bias, GPT-2) and head."""
    lm = make_tiny(arch, seed=2)
    model = lm.model
    norm = model.transformer.ln_f if arch == "gpt2" else model.model.norm
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(norm.weight.shape, generator=gen) + 0.5)
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=gen))
    return lm


@torch.no_grad()
def _hand_lens(lm, arch: str, v: torch.Tensor) -> torch.Tensor:
    """The module docstring's formula written out per architecture, [vocab]."""
    model, config = lm.model, lm.model.config
    v = v.double()
    if arch == "gpt2":
        ln = model.transformer.ln_f
        x = ln.weight.double() * (v - v.mean()) / torch.sqrt(v.var(unbiased=False) + config.layer_norm_epsilon)
    else:
        g = model.model.norm.weight.double()
        gain = 1.0 + g if arch == "gemma2" else g
        x = gain * v / torch.sqrt((v * v).mean() + config.rms_norm_eps)
    logits = model.lm_head.weight.double() @ x  # bias-free heads; the norm's bias is dropped by the formula
    return logits[: len(lm.tokenizer)]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_readout_equals_a_hand_computation(arch, one_thread):
    lm = _randomised(arch)
    gen = torch.Generator().manual_seed(0)
    vec = SteeringVector(torch.randn(lm.n_layers, lm.d_model, generator=gen) * 3.0, {"method": "test"})
    other = SteeringVector(torch.randn(lm.n_layers, lm.d_model, generator=gen))
    doc = readout_vector(lm, vec, "1-2", top_k=4, compare={"other": other}, prompts=PROMPTS)
    residual = mean_residual_norms(lm, PROMPTS)
    assert [row["layer"] for row in doc["layers"]] == [1, 2]
    for row in doc["layers"]:
        v = vec.data[row["layer"]]
        logits = _hand_lens(lm, arch, v)
        top, bottom = torch.topk(logits, 4), torch.topk(-logits, 4)
        assert [t["id"] for t in row["promoted"]] == top.indices.tolist()
        assert [t["id"] for t in row["suppressed"]] == bottom.indices.tolist()
        got = torch.tensor([t["logit"] for t in row["promoted"] + row["suppressed"]], dtype=torch.float64)
        want = torch.cat([top.values, -bottom.values])
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
        assert [t["token"] for t in row["promoted"]] == [lm.tokenizer.decode([i]) for i in top.indices.tolist()]
        assert row["norm"] == pytest.approx(float(v.double().norm()), rel=1e-6)
        assert row["residual_norm"] == pytest.approx(float(residual[row["layer"]]), rel=1e-6)
        assert row["relative_norm"] == pytest.approx(row["norm"] / row["residual_norm"], rel=1e-9)
        w = other.data[row["layer"]].double()
        cos = float(v.double() @ w / (v.double().norm() * w.norm()))
        assert row["cosine"]["other"] == pytest.approx(cos, abs=1e-6)
    assert doc["compare"] == ["other"] and doc["top_k"] == 4 and doc["reference"]["n_prompts"] == len(PROMPTS)


def test_the_lens_ignores_the_vectors_scale_and_reads_zero_as_zero(tiny_llama):
    v = torch.randn(tiny_llama.d_model, generator=torch.Generator().manual_seed(1))
    lens = logit_lens(tiny_llama, torch.stack([v, 10.0 * v, torch.zeros_like(v)]))
    assert lens.shape == (3, len(tiny_llama.tokenizer))
    assert torch.allclose(lens[0], lens[1], atol=1e-4)  # N divides by v's own RMS
    assert lens[2].abs().max() == 0


def test_zero_layers_are_marked_and_an_all_zero_vector_is_refused(tiny_llama):
    data = torch.randn(tiny_llama.n_layers, tiny_llama.d_model, generator=torch.Generator().manual_seed(2))
    data[0] = 0
    doc = readout_vector(tiny_llama, SteeringVector(data), residual_norms=torch.ones(tiny_llama.n_layers))
    assert doc["layers"][0]["zero"] and doc["layers"][0]["promoted"] == []
    assert not doc["layers"][1]["zero"] and len(doc["layers"][1]["promoted"]) == 10
    with pytest.raises(SteerlabError, match="zero at every layer"):
        readout_vector(tiny_llama, SteeringVector(torch.zeros(tiny_llama.n_layers, tiny_llama.d_model)))


@pytest.mark.parametrize(
    ("vector", "kwargs", "needle"),
    [
        (lambda lm: torch.ones(lm.n_layers, lm.d_model + 2), {}, "v.safetensors: vector d_model 66 does not match"),
        (lambda lm: torch.ones(lm.n_layers + 1, lm.d_model), {}, "vector has 5 layers but"),
        (lambda lm: torch.ones(lm.n_layers, lm.d_model), {"layers": "7"}, "--layer 7 is out of range"),
        (lambda lm: torch.ones(lm.n_layers, lm.d_model), {"top_k": 0}, "--top-k 0"),
        (lambda lm: torch.ones(lm.n_layers, lm.d_model), {"prompts": []}, "--reference-prompts"),
        (
            lambda lm: torch.ones(lm.n_layers, lm.d_model),
            {"compare": {"w": SteeringVector(torch.ones(4, 3))}},
            "w: vector d_model 3",
        ),
    ],
)
def test_bad_input_is_one_clear_error(tiny_llama, vector, kwargs, needle):
    with pytest.raises(SteerlabError, match=needle):
        readout_vector(tiny_llama, SteeringVector(vector(tiny_llama)), source="v.safetensors", **kwargs)
