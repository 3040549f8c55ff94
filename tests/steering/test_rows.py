"""Per-row steering: conditions as rows of one batch give what separate runs give, row for row."""

import pytest
import torch

from steerlab.activations.capture import ChatSample, collate, encode_samples
from steerlab.errors import SteerlabError
from steerlab.evaluate.controls import random_directions
from steerlab.steering.generation import generate_batch
from steerlab.steering.operators import Intervention, apply_intervention, row_mask
from steerlab.steering.steerer import SteeringSpec, steer
from steerlab.vectors.vector import SteeringVector

OPERATORS = ("add", "ablate", "cap")
POSITIONS = ("all", "prompt", "response")
SAMPLES = [
    ChatSample("how should I store fresh bread so it stays soft", "in a dry box"),
    ChatSample("yes", "no maybe the quick brown fox jumps"),
    ChatSample("0 1 2 3", "4"),
]
PROMPTS = [s.prompt for s in SAMPLES]
K = 3  # random-direction controls


def _spec(direction, operator, positions, coeffs, rows=None):
    """Add/ablate with (per-row) coefficients; cap with a ceiling below typical projections."""
    vec = SteeringVector(direction)
    if operator == "cap":
        return SteeringSpec(vec, [1, 2], operator="cap", positions=positions, ceiling=-0.5, rows=rows)
    return SteeringSpec(vec, [1, 2], coeffs, operator, positions, rows=rows)


def _conditions(lm):
    """The real vector, a copy of it, and K random same-norm controls: [K + 2, n_layers, d]."""
    gen = torch.Generator().manual_seed(0)
    real = 3 * torch.randn(lm.n_layers, lm.d_model, generator=gen)
    return torch.cat([real[None], real[None], random_directions(real, K, seed=1)])


def test_apply_intervention_rows_change_only_their_rows():
    hidden = torch.randn(5, 4, 8)
    v = torch.randn(8)
    start = torch.tensor([2, 1, 3, 2, 2])
    for operator in OPERATORS:
        for positions in POSITIONS:
            extra = {"ceiling": 0.0} if operator == "cap" else {}
            coeff = torch.tensor([1.0, -2.0, 3.0, 0.5, 4.0])
            full = apply_intervention(hidden, Intervention(1, v, coeff, operator, positions, **extra), start)
            for rows in ([1, 3], torch.tensor([False, True, False, True, False])):
                iv = Intervention(1, v, coeff, operator, positions, rows=rows, **extra)
                out = apply_intervention(hidden, iv, start)
                assert torch.equal(out[[1, 3]], full[[1, 3]]), (operator, positions)
                assert torch.equal(out[[0, 2, 4]], hidden[[0, 2, 4]]), (operator, positions)
                assert not torch.equal(out[[1, 3]], hidden[[1, 3]])
    none = Intervention(1, v, 2.0, rows=[])
    assert apply_intervention(hidden, none) is hidden


def _teacher_forced_logits(lm, samples, specs):
    batch = collate(encode_samples(lm, samples, True), lm.tokenizer.pad_token_id, lm.device)
    steerer = steer(lm, specs)
    with steerer, steerer.teacher_forcing(batch.pads + batch.prompt_lens), torch.inference_mode():
        logits = lm.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids(),
            use_cache=False,
        ).logits
    return logits, batch.attention_mask.bool()


@pytest.mark.parametrize("operator", OPERATORS)
@pytest.mark.parametrize("positions", POSITIONS)
def test_teacher_forced_conditions_as_rows_equal_separate_runs(tiny_llama, operator, positions):
    """Real vector, its copy, K controls and an unsteered group: one batch == one run per condition."""
    lm, n = tiny_llama, len(SAMPLES)
    directions = _conditions(lm)
    per_sample = [2.0, -1.5, 4.0]
    groups = len(directions) + 1  # the last group is unsteered
    specs = [
        _spec(d, operator, positions, per_sample * groups, rows=list(range(g * n, (g + 1) * n)))
        for g, d in enumerate(directions)
    ]
    together, mask = _teacher_forced_logits(lm, SAMPLES * groups, specs)
    for g in range(groups):
        alone_specs = [] if g == len(directions) else [_spec(directions[g], operator, positions, per_sample)]
        alone, alone_mask = _teacher_forced_logits(lm, SAMPLES, alone_specs)
        rows = slice(g * n, (g + 1) * n)
        assert torch.equal(mask[rows], alone_mask)
        torch.testing.assert_close(together[rows][alone_mask], alone[alone_mask], atol=1e-5, rtol=0)
    # the copy of the real vector lands exactly on the real vector's rows
    torch.testing.assert_close(together[n : 2 * n][mask[:n]], together[:n][mask[:n]], atol=1e-5, rtol=0)
    unsteered, _ = _teacher_forced_logits(lm, SAMPLES, [])
    assert not torch.allclose(together[:n][mask[:n]], unsteered[mask[:n]], atol=1e-3)


@pytest.mark.parametrize("operator", OPERATORS)
@pytest.mark.parametrize("positions", POSITIONS)
def test_generation_with_conditions_as_rows_equals_separate_runs(tiny_llama, operator, positions):
    """KV cache and left padding: rows given per prompt, split into several length-sorted batches."""
    lm, n = tiny_llama, len(PROMPTS)
    directions = _conditions(lm)
    per_prompt = [3.0, -2.0, 5.0]
    groups = len(directions) + 1
    specs = [
        _spec(d, operator, positions, per_prompt * groups, rows=list(range(g * n, (g + 1) * n)))
        for g, d in enumerate(directions)
    ]
    kwargs = dict(max_new_tokens=6, top_logprobs=1)
    together = generate_batch(lm, PROMPTS * groups, steering=specs, batch_size=4, **kwargs)
    for g in range(groups):
        alone_specs = [] if g == len(directions) else [_spec(directions[g], operator, positions, per_prompt)]
        alone = generate_batch(lm, PROMPTS, steering=alone_specs, **kwargs)
        for i, a in enumerate(alone):
            t = together[g * n + i]
            assert t.token_ids == a.token_ids, (g, i)
            torch.testing.assert_close(torch.tensor(t.logprobs), torch.tensor(a.logprobs), atol=1e-5, rtol=0)
    assert [t.token_ids for t in together[n : 2 * n]] == [t.token_ids for t in together[:n]]
    real, unsteered = together[:n], together[-n:]
    assert any(r.logprobs[0] != pytest.approx(u.logprobs[0], abs=1e-3) for r, u in zip(real, unsteered, strict=True))


def test_rows_with_a_bool_mask_over_prompts(tiny_llama):
    v = SteeringVector(torch.randn(tiny_llama.n_layers, tiny_llama.d_model) * 4)
    mask = torch.tensor([False, True, True])
    together = generate_batch(
        tiny_llama, PROMPTS, steering=SteeringSpec(v, 2, 2.0, rows=mask), max_new_tokens=5, batch_size=2
    )
    plain = generate_batch(tiny_llama, PROMPTS[:1], max_new_tokens=5)
    steered = generate_batch(tiny_llama, PROMPTS[1:], steering=SteeringSpec(v, 2, 2.0), max_new_tokens=5)
    assert [g.token_ids for g in together] == [g.token_ids for g in plain + steered]


def test_select_rows_takes_coefficients_and_rows_at_the_batch_indices():
    spec = SteeringSpec(torch.ones(4), 0, coeff=[0.0, 1.0, 2.0, 3.0], rows=[1, 3])
    part = spec.select_rows([3, 0], 4)
    assert torch.equal(part.coeff, torch.tensor([3.0, 0.0]))
    assert torch.equal(part.rows, torch.tensor([True, False]))
    assert spec.with_coeff(2.0).select_rows([1], 4).coeff == 2.0
    assert row_mask([0, 2], 3).tolist() == [True, False, True]


def test_bad_rows_are_clear_errors(tiny_llama):
    v = torch.randn(tiny_llama.d_model)
    with pytest.raises(SteerlabError, match="a mask of 2 values for 3 rows"):
        generate_batch(
            tiny_llama, PROMPTS, steering=SteeringSpec(v, 1, rows=torch.tensor([True, False])), max_new_tokens=2
        )
    with pytest.raises(SteerlabError, match="row index 3 is out of range for 3 rows"):
        generate_batch(tiny_llama, PROMPTS, steering=SteeringSpec(v, 1, rows=[0, 3]), max_new_tokens=2)
    with pytest.raises(SteerlabError, match="row indices must be >= 0"):
        Intervention(1, v, rows=[-1])
    with pytest.raises(SteerlabError, match="a bool mask or a list of row indices"):
        Intervention(1, v, rows=[0.5, 1.0])
    hidden = torch.randn(2, 3, tiny_llama.d_model)
    with pytest.raises(SteerlabError, match="row index 4 is out of range for 2 rows"):
        apply_intervention(hidden, Intervention(1, v, rows=[4]))
