import pytest
import torch

from steerlab import SteeringVector
from steerlab.activations.capture import ChatSample
from steerlab.evaluate.margin import behaviour_margin
from steerlab.formats.pairs import Pair
from steerlab.model.chat import encode_chat
from steerlab.steering.scoring import response_logprobs
from steerlab.steering.steerer import SteeringSpec

PAIRS = [
    Pair(question="how should I store bread", positive="in the fridge", negative="in a bread box on the counter"),
    Pair(question="yes or no", positive="no", negative="yes maybe"),
    Pair(question="is water wet", positive="never", negative="it makes things wet", system="answer briefly"),
]


def test_response_logprobs_match_manual(tiny_any):
    s = ChatSample("how should I store bread", "in the fridge")
    enc = encode_chat(tiny_any.tokenizer, s.prompt, s.response)
    with torch.no_grad():
        logits = tiny_any.model(torch.tensor([enc.ids])).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    manual = torch.stack([logp[t - 1, enc.ids[t]] for t in range(enc.prompt_len, len(enc.ids))]).mean()
    got = response_logprobs(tiny_any, [s, ChatSample("yes", "no it is a much longer answer")])[0]
    assert abs(float(got) - float(manual)) < 1e-5


def test_margin_sweep_rows_equal_separate_runs(tiny_llama):
    vec = SteeringVector(torch.randn(tiny_llama.n_layers, tiny_llama.d_model))
    for positions in ("all", "response", "prompt"):
        spec = SteeringSpec(vec, 1, positions=positions)
        result = behaviour_margin(tiny_llama, PAIRS, spec, coeffs=[-2.0, 0.0, 2.0])
        for c, mean in zip(result.coeffs, result.mean, strict=True):
            alone = behaviour_margin(tiny_llama, PAIRS, spec.with_coeff(c), batch_size=1)
            assert abs(alone.mean[0] - mean) < 1e-5, (positions, c)
    base = behaviour_margin(tiny_llama, PAIRS)
    assert abs(base.mean[0] - result.mean[1]) < 1e-5
    assert result.per_pair.shape == (3, len(PAIRS))


def test_response_positions_match_generation_semantics(tiny_llama):
    """Teacher-forced 'response' steering == 'all' steering restricted to last prompt + response."""
    vec = SteeringVector(torch.randn(tiny_llama.n_layers, tiny_llama.d_model))
    resp = behaviour_margin(tiny_llama, PAIRS, SteeringSpec(vec, 1, 3.0, positions="response"))
    allpos = behaviour_margin(tiny_llama, PAIRS, SteeringSpec(vec, 1, 3.0, positions="all"))
    prompt = behaviour_margin(tiny_llama, PAIRS, SteeringSpec(vec, 1, 3.0, positions="prompt"))
    assert not torch.allclose(resp.per_pair, allpos.per_pair)
    assert not torch.allclose(prompt.per_pair, allpos.per_pair)


@pytest.mark.parametrize("positions", ["all", "response"])  # whole sequences / shared prompts
def test_conditions_as_rows_equal_separate_runs(tiny_llama, positions):
    from steerlab.evaluate.controls import random_directions
    from steerlab.evaluate.margin import condition_margins

    torch.manual_seed(3)
    vec = SteeringVector(torch.randn(tiny_llama.n_layers, tiny_llama.d_model))
    controls = random_directions(vec.data, 3, seed=0)
    conditions = [
        [SteeringSpec(vec, 1, positions=positions)],
        [],
        *[[SteeringSpec(SteeringVector(c), 1, positions=positions)] for c in controls],
        [SteeringSpec(vec, "all", operator="ablate", positions=positions)],
    ]
    coeffs = [-2.0, 0.0, 3.0]
    together = condition_margins(tiny_llama, PAIRS, conditions, coeffs, batch_size=5)
    for condition, result in zip(conditions, together, strict=True):
        alone = behaviour_margin(tiny_llama, PAIRS, condition, coeffs if condition else None, batch_size=5)
        expected = alone.per_pair.expand_as(result.per_pair) if not condition else alone.per_pair
        torch.testing.assert_close(result.per_pair, expected, atol=1e-5, rtol=1e-5)
    # a control equal to the vector itself lands exactly on the effect
    same = condition_margins(
        tiny_llama,
        PAIRS,
        [[SteeringSpec(vec, 1, positions=positions)], [SteeringSpec(vec.data.clone(), 1, positions=positions)]],
        coeffs,
    )
    torch.testing.assert_close(same[0].per_pair, same[1].per_pair)


def test_conditions_with_their_own_coefficients_equal_separate_runs(tiny_llama):
    """A calibration step's layout: each condition scored at its own coefficients, in one stream."""
    from steerlab.errors import SteerlabError
    from steerlab.evaluate.margin import condition_margins

    torch.manual_seed(4)
    vec = SteeringVector(torch.randn(tiny_llama.n_layers, tiny_llama.d_model))
    conditions = [[], [SteeringSpec(vec, 1, positions="response")], [SteeringSpec(vec, 2, positions="response")]]
    coeffs = [[0.0], [-1.0, 0.5, 2.0], [3.0]]
    together = condition_margins(tiny_llama, PAIRS, conditions, coeffs, batch_size=4)
    assert [r.coeffs for r in together] == coeffs
    for condition, cs, result in zip(conditions, coeffs, together, strict=True):
        alone = behaviour_margin(tiny_llama, PAIRS, condition, cs if condition else None, batch_size=4)
        torch.testing.assert_close(result.per_pair, alone.per_pair, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.tensor(result.fluency), torch.tensor(alone.fluency), atol=1e-5, rtol=1e-5)
    with pytest.raises(SteerlabError, match="2 coefficient lists for 3 conditions"):
        condition_margins(tiny_llama, PAIRS, conditions, [[1.0], [2.0]])
