"""Conditional steering (CAST) on the hf engine: a row whose prompt passes the gate is steered exactly as
plain steering steers it, a row whose prompt does not is exactly unsteered, the gate is decided once per
sequence from the prompt, and a condition composes with every operator, position and per-row coefficient."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from steerlab.activations.capture import ChatSample, capture
from steerlab.engines.hf import HfEngine
from steerlab.errors import SteerlabError
from steerlab.model.chat import encode_chat
from steerlab.steering.conditions import (
    Condition,
    condition_similarities,
    condition_similarity,
    gate_samples,
    resolve_conditions,
)
from steerlab.steering.generation import generate_batch
from steerlab.steering.scoring import response_logprobs
from steerlab.steering.steerer import SteeringSpec, steer
from steerlab.vectors.vector import SteeringVector

PROMPTS = [
    "how should I store fresh bread so it stays soft",
    "yes",
    "the quick brown fox jumps over the lazy dog",
    "0 1 2 3 4 5",
    "drink water rest and see a doctor",
    "always back up your files before updating",
    "user assistant system model question",
    "answer briefly yes no maybe",
]
RESPONSES = ["in a dry box", "no", "the lazy dog", "6 7", "yes", "no maybe", "yes", "the quick fox"]
SAMPLES = [ChatSample(p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
N_NEW = 6


def _direction(lm, seed: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(lm.n_layers, lm.d_model, generator=gen)


def median_condition(lm, prompts=PROMPTS, layer: int = 2, comparator: str = ">", **kwargs) -> Condition:
    """A condition whose threshold splits ``prompts`` in two halves (the median of their similarities)."""
    probe = Condition(_direction(lm), layer, 0.0, comparator, **kwargs)
    sims = condition_similarities(lm, [probe], gate_samples(prompts))[0].sort().values
    middle = len(prompts) // 2
    return replace(probe, threshold=float((sims[middle - 1] + sims[middle]) / 2))


@pytest.fixture(scope="module")
def vec(tiny_llama):
    gen = torch.Generator().manual_seed(1)
    return SteeringVector(3 * torch.randn(tiny_llama.n_layers, tiny_llama.d_model, generator=gen))


@pytest.fixture(scope="module")
def gate(tiny_llama):
    cond = median_condition(tiny_llama)
    met = cond.passes(condition_similarities(tiny_llama, [cond], gate_samples(PROMPTS))[0])
    assert 0 < int(met.sum()) < len(PROMPTS)  # a real mix of gated and ungated rows
    return cond, met


def test_similarity_is_casts_formula():
    """sim = cos(h, tanh(P h)), P = c cᵀ / cᵀc, written out with the projector matrix; scale and sign of c
    do not matter; a zero state has similarity 0."""
    gen = torch.Generator().manual_seed(0)
    h, c = 4 * torch.randn(6, 16, generator=gen), torch.randn(16, generator=gen)
    projector = torch.outer(c, c) / torch.dot(c, c)
    expected = torch.stack([torch.nn.functional.cosine_similarity(x, torch.tanh(projector @ x), dim=0) for x in h])
    sims = condition_similarity(h, c)
    assert torch.allclose(sims.float(), expected, atol=1e-6)
    assert torch.allclose(condition_similarity(h, -7.5 * c), sims, atol=1e-12)
    assert condition_similarity(torch.zeros(1, 16), c).item() == 0.0
    cond = Condition(c, 0, float(sims.median()))
    assert torch.equal(cond.passes(sims), sims > cond.threshold)
    assert torch.equal(replace(cond, comparator="<").passes(sims), sims < cond.threshold)


def test_gated_generation_equals_plain_steering_or_unsteered_exactly(tiny_llama, vec, gate):
    cond, met = gate
    plain = generate_batch(tiny_llama, PROMPTS, steering=SteeringSpec(vec, [1, 2], 4.0), max_new_tokens=N_NEW)
    unsteered = generate_batch(tiny_llama, PROMPTS, max_new_tokens=N_NEW)
    gated = generate_batch(
        tiny_llama, PROMPTS, steering=SteeringSpec(vec, [1, 2], 4.0, condition=cond), max_new_tokens=N_NEW
    )
    for passed, p, u, g in zip(met.tolist(), plain, unsteered, gated, strict=True):
        assert g.token_ids == (p.token_ids if passed else u.token_ids)
    assert any(p.token_ids != u.token_ids for passed, p, u in zip(met, plain, unsteered, strict=True) if passed)


@pytest.mark.parametrize("operator", ["add", "ablate", "cap"])
@pytest.mark.parametrize("positions", ["all", "prompt", "response"])
def test_gated_logprobs_equal_plain_steering_or_unsteered_exactly(tiny_llama, vec, operator, positions):
    """Teacher-forced: every operator and position composes with a condition. One row per forward
    (batch_size 1), so that no batch composition can differ between the runs compared."""
    cond = median_condition(tiny_llama, [s.prompt for s in SAMPLES])
    met = cond.passes(condition_similarities(tiny_llama, [cond], gate_samples(SAMPLES))[0])
    extra = {"ceiling": -0.5} if operator == "cap" else {}
    spec = SteeringSpec(vec, [1, 2], [2.0, -1.0, 3.0, 1.5, 4.0, -2.0, 2.5, 1.0], operator, positions, **extra)
    plain = response_logprobs(tiny_llama, SAMPLES, [spec], batch_size=1)
    unsteered = response_logprobs(tiny_llama, SAMPLES, [], batch_size=1)
    gated = response_logprobs(tiny_llama, SAMPLES, [replace(spec, condition=cond)], batch_size=1)
    assert torch.equal(gated[met], plain[met]) and torch.equal(gated[~met], unsteered[~met])
    assert not torch.equal(plain[met], unsteered[met])
    # batched, the gate is the spec restricted to the passing rows (the same batches, bit for bit)
    batched = response_logprobs(tiny_llama, SAMPLES, [replace(spec, condition=cond)], batch_size=3)
    assert torch.equal(batched, response_logprobs(tiny_llama, SAMPLES, [replace(spec, rows=met)], batch_size=3))


def test_mixed_batch_of_gated_ungated_unconditioned_and_unsteered_rows(tiny_llama, vec, gate):
    """Rows 0-7 carry a conditional spec, rows 8-11 an unconditioned one, rows 12-15 no steering: one call
    equals one run per row with what should act on it (per-row coefficients kept)."""
    cond, met = gate
    prompts = PROMPTS + PROMPTS[:4] + PROMPTS[4:]
    coeffs = [float(i % 5) - 2.0 for i in range(len(prompts))]
    other = SteeringVector(-vec.data)
    specs = [
        SteeringSpec(vec, [1, 2], coeffs, rows=list(range(8)), condition=cond),
        SteeringSpec(other, 3, coeffs, "add", "response", rows=list(range(8, 12))),
    ]
    mixed = generate_batch(tiny_llama, prompts, steering=specs, max_new_tokens=N_NEW, batch_size=1)
    for i, (prompt, got) in enumerate(zip(prompts, mixed, strict=True)):
        if i < 8 and bool(met[i]):
            alone = [SteeringSpec(vec, [1, 2], coeffs[i])]
        elif 8 <= i < 12:
            alone = [SteeringSpec(other, 3, coeffs[i], "add", "response")]
        else:
            alone = []
        assert got.token_ids == generate_batch(tiny_llama, [prompt], steering=alone, max_new_tokens=N_NEW)[0].token_ids


def test_per_row_coefficients_survive_the_gate(tiny_llama, vec, gate):
    cond, met = gate
    coeffs = torch.linspace(-4, 4, len(PROMPTS))
    plain = generate_batch(tiny_llama, PROMPTS, steering=SteeringSpec(vec, 1, coeffs), max_new_tokens=N_NEW)
    gated = generate_batch(
        tiny_llama, PROMPTS, steering=SteeringSpec(vec, 1, coeffs, condition=cond), max_new_tokens=N_NEW
    )
    unsteered = generate_batch(tiny_llama, PROMPTS, max_new_tokens=N_NEW)
    for passed, p, u, g in zip(met.tolist(), plain, unsteered, gated, strict=True):
        assert g.token_ids == (p.token_ids if passed else u.token_ids)


class _CountingEngine(HfEngine):
    """The hf engine, counting its prompt-activation passes and the prompts they read."""

    def __init__(self, lm):
        super().__init__(lm)
        self.calls: list[int] = []

    def prompt_activations(self, prompts, layers, reduction="prompt_avg", batch_size=16):
        self.calls.append(len(prompts))
        return super().prompt_activations(prompts, layers, reduction, batch_size)


def test_the_gate_is_decided_once_per_sequence_from_the_prompt(tiny_llama, vec):
    """One prompt-activation pass per call, over the distinct prompts; and a threshold that the
    generated tokens would cross (a per-token gate would flip) leaves the whole generation steered."""
    engine = _CountingEngine(tiny_llama)
    prompts = PROMPTS[:3] * 2  # repeated prompts are read once
    probe = Condition(_direction(tiny_llama), 2, 0.0)
    engine.calls.clear()
    first = resolve_conditions(engine, [SteeringSpec(vec, 1, 4.0, condition=probe)], gate_samples(prompts))
    assert engine.calls == [3] and first[0].condition is None
    unsteered = generate_batch(tiny_llama, prompts[:1], max_new_tokens=N_NEW)[0]
    # the similarity of row 0 over its prompt, and over its prompt + the tokens generated after it
    e = encode_chat(tiny_llama.tokenizer, prompts[0], unsteered.text)
    acts = capture(tiny_llama, [ChatSample(prompts[0], unsteered.text)], ["prompt_avg", "response_avg"], [2])
    n_prompt, n_resp = e.prompt_len, e.response_len
    whole = (n_prompt * acts["prompt_avg"][:, 0] + n_resp * acts["response_avg"][:, 0]) / (n_prompt + n_resp)
    direction = probe.direction(tiny_llama)
    s_prompt = float(condition_similarity(acts["prompt_avg"][:, 0], direction))
    s_whole = float(condition_similarity(whole, direction))
    assert s_prompt != s_whole
    comparator = ">" if s_prompt > s_whole else "<"
    cond = Condition(probe.vector, 2, (s_prompt + s_whole) / 2, comparator)  # passes on the prompt only
    engine.calls.clear()
    spec = SteeringSpec(vec, 1, 4.0, condition=cond)
    got = engine.generate(prompts[:1], steering=[spec], max_new_tokens=N_NEW)[0]
    assert engine.calls == [1]
    plain = generate_batch(tiny_llama, prompts[:1], steering=SteeringSpec(vec, 1, 4.0), max_new_tokens=N_NEW)[0]
    assert got.token_ids == plain.token_ids != unsteered.token_ids


def test_a_teacher_forced_sample_is_gated_on_its_prompt_alone(tiny_llama, vec, gate):
    cond, met = gate
    samples = [ChatSample(p, "a response that is long and says many other words") for p in PROMPTS]
    specs = resolve_conditions(tiny_llama, [SteeringSpec(vec, 1, 1.0, condition=cond)], gate_samples(samples))
    assert torch.equal(specs[0].rows, met)  # the generation gate of the same prompts
    with_system = gate_samples([ChatSample("yes", "no", "be brief")])[0]
    assert (with_system.response, with_system.system) == ("", "be brief")


def test_rows_of_a_conditional_spec_are_anded_with_the_gate(tiny_llama, vec, gate):
    cond, met = gate
    engine = _CountingEngine(tiny_llama)
    rows = [0, 1, 2]
    out = resolve_conditions(engine, [SteeringSpec(vec, 1, 1.0, rows=rows, condition=cond)], gate_samples(PROMPTS))
    expected = torch.zeros(len(PROMPTS), dtype=torch.bool)
    expected[rows] = met[rows]
    assert torch.equal(out[0].rows, expected)
    assert engine.calls == [3]  # only the rows the spec acts on are read


def test_bad_conditions_fail_with_one_clear_error(tiny_llama, vec):
    d = tiny_llama.d_model
    with pytest.raises(SteerlabError, match="condition vector: vector d_model 7 does not match"):
        generate_batch(tiny_llama, ["yes"], steering=SteeringSpec(vec, 1, condition=Condition(torch.ones(7), 1, 0.0)))
    with pytest.raises(SteerlabError, match="--condition-layer 9 is out of range"):
        response_logprobs(tiny_llama, SAMPLES[:1], [SteeringSpec(vec, 1, condition=Condition(torch.ones(d), 9, 0.0))])
    with pytest.raises(SteerlabError, match="zero or not finite"):
        generate_batch(tiny_llama, ["yes"], steering=SteeringSpec(vec, 1, condition=Condition(torch.zeros(d), 1, 0.0)))
    with pytest.raises(SteerlabError, match=r"must be in \[-1, 1\]"):
        Condition(torch.ones(d), 1, 1.5)
    with pytest.raises(SteerlabError, match="auto is fitted on example prompts"):
        Condition(torch.ones(d), 1, "auto")
    with pytest.raises(SteerlabError, match="outside the similarities observed"):
        Condition(torch.ones(d), 1, 0.5, observed=(-0.1, 0.2))
    with pytest.raises(SteerlabError, match="condition comparator"):
        Condition(torch.ones(d), 1, 0.0, "=")
    with pytest.raises(SteerlabError, match="condition reduction"):
        Condition(torch.ones(d), 1, 0.0, reduction="response_avg")
    with pytest.raises(SteerlabError, match="decided per prompt before steering"):
        steer(tiny_llama, SteeringSpec(vec, 1, condition=Condition(torch.ones(d), 1, 0.0)))
    with pytest.raises(SteerlabError, match="expected a steerlab Condition"):
        SteeringSpec(vec, 1, condition={"layer": 1})
