import pytest
import torch
from tiny import make_tiny

from steerlab.activations.capture import ChatSample, Reduction, capture, collate, encode_samples, reduction_weights
from steerlab.errors import SteerlabError
from steerlab.extract.positions import extract_position_diffs
from steerlab.formats.prompts import generic_prompts

PROMPTS = [
    "how should I store fresh bread so it stays soft",
    "the quick brown fox",
    "drink water rest and see a doctor if the fever lasts for days",
    "0 1 2 3 4 5",
    "yes no maybe so, tokens here",
]


@pytest.fixture(scope="module")
def base():
    """A private copy: output_hidden_states makes transformers keep recording hooks on its blocks."""
    return make_tiny("llama", seed=0)


@pytest.fixture(scope="module")
def finetuned():
    return make_tiny("llama", seed=1)


def _hidden_states(lm, text):
    """Block outputs ``hidden_states[L + 1]``, L = 0 .. n_layers - 1, of one unpadded sequence.

    transformers applies the final norm to ``hidden_states[-1]``, so the last block's raw output
    (steerlab's last layer) is read with a hook on that block.
    """
    ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
    last = []
    handle = lm.blocks[-1].register_forward_hook(
        lambda _m, _i, out: last.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.inference_mode():
            hs = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    return (*hs[:-1], last[0])


def test_position_diffs_equal_a_hand_computation(base, finetuned):
    k = 5
    vectors = extract_position_diffs(base, finetuned, PROMPTS, k=k, batch_size=2)
    assert sorted(vectors) == list(range(k))
    expected = torch.zeros(k, base.n_layers, base.d_model, dtype=torch.float64)
    for text in PROMPTS:  # one prompt at a time: no padding, no batching
        hs_base, hs_ft = _hidden_states(base, text), _hidden_states(finetuned, text)
        for i in range(k):
            for layer in range(base.n_layers):  # layer L = output of block L = hidden_states[L + 1]
                expected[i, layer] += (hs_ft[layer + 1][0, i] - hs_base[layer + 1][0, i]).double()
    expected /= len(PROMPTS)
    for i, vec in vectors.items():
        torch.testing.assert_close(vec.data, expected[i].float(), atol=1e-5, rtol=0)
        assert vec.metadata["method"] == "model_diff" and vec.metadata["reduction"] == f"position:{i}"
        assert vec.metadata["position"] == i and vec.metadata["inputs"] == "plain text"
        assert vec.metadata["prompts"] == "custom" and vec.metadata["n_samples"] == len(PROMPTS)
    assert not torch.allclose(vectors[0].data, vectors[1].data)


def test_default_prompts_are_the_generic_prompts(base, finetuned):
    vectors = extract_position_diffs(base, finetuned, k=1, batch_size=64)
    assert list(vectors) == [0]
    assert vectors[0].metadata["prompts"] == "generic"
    assert vectors[0].metadata["n_samples"] == len(generic_prompts())


def test_position_diffs_bad_input(base, finetuned):
    with pytest.raises(SteerlabError, match=r"prompt 1 \('yes'\) has 1 tokens; positions 0..4 need at least 5"):
        extract_position_diffs(base, finetuned, ["the quick brown fox jumps", "yes"])
    with pytest.raises(SteerlabError, match="at least 1 token position"):
        extract_position_diffs(base, finetuned, PROMPTS, k=0)
    with pytest.raises(SteerlabError, match="no prompts"):
        extract_position_diffs(base, finetuned, [])
    with pytest.raises(SteerlabError, match="prompt 0: expected a non-empty string"):
        extract_position_diffs(base, finetuned, ["  "])


# --- the position:I reduction and plain-text samples (activations.capture) -------------------------


def test_position_reduction_parses_and_names():
    assert Reduction.parse("position:3") == Reduction("position", 3)
    assert Reduction.parse("position:0").name == "position:0"
    assert not Reduction.parse("position:2").needs_response
    for bad in ("position", "position:", "position:x", "position:-1"):
        with pytest.raises(SteerlabError, match="position:I needs a token position I >= 0"):
            Reduction.parse(bad)
    with pytest.raises(SteerlabError, match="or position:I"):
        Reduction.parse("prompt_last:2")


def test_position_reduction_counts_from_the_first_real_token_of_left_padded_rows(base):
    samples = [ChatSample(p, chat=False) for p in PROMPTS]
    acts = capture(base, samples, ["position:0", "position:2"], batch_size=3)
    for row, text in enumerate(PROMPTS):
        hs = _hidden_states(base, text)
        for i in (0, 2):
            expected = torch.stack([hs[layer + 1][0, i] for layer in range(base.n_layers)])
            torch.testing.assert_close(acts[f"position:{i}"][row], expected, atol=1e-5, rtol=0)


def test_position_reduction_errors_on_a_short_sequence(base):
    encoded = encode_samples(base, [ChatSample("yes", chat=False), ChatSample(PROMPTS[0], chat=False)], False)
    batch = collate(encoded, base.tokenizer.pad_token_id, base.device)
    with pytest.raises(SteerlabError, match="position:1: a sequence has only 1 tokens"):
        reduction_weights(batch, Reduction.parse("position:1"))
    w = reduction_weights(batch, Reduction.parse("position:0"))
    assert w.sum(-1).tolist() == [1.0, 1.0] and w[0, -1] == 1.0


def test_plain_text_samples_are_tokenized_as_text(base):
    tok = base.tokenizer
    (e,) = encode_samples(base, [ChatSample(PROMPTS[0], chat=False)], False)
    assert e.ids == tok(PROMPTS[0])["input_ids"] and e.prompt_len == len(e.ids)
    (chat,) = encode_samples(base, [ChatSample(PROMPTS[0])], False)
    assert chat.ids != e.ids  # the default still goes through the chat template
    with pytest.raises(SteerlabError, match="sample 0: a plain-text sample"):
        encode_samples(base, [ChatSample("hi", "there", chat=False)], False)
