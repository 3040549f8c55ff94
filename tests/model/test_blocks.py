import pytest
import torch

from steerlab import ChatSample, capture
from steerlab.errors import SteerlabError
from steerlab.model.blocks import find_decoder_blocks


def _hidden_states(lm, text):
    ids = lm.tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = lm.model(**ids, output_hidden_states=True)
    return out.hidden_states


def _final_norm(lm):
    base = lm.model.base_model if hasattr(lm.model, "base_model") else lm.model
    return getattr(base, "norm", None) or base.ln_f


def check_layer_convention(lm):
    sample = ChatSample("how should I store fresh bread", "drink water and rest")
    acts = capture(lm, [sample], ["prompt_last"])["prompt_last"][0]
    prompt = lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": sample.prompt}], tokenize=False, add_generation_prompt=True
    )
    hs = _hidden_states(lm, prompt)
    assert len(hs) == lm.n_layers + 1
    for layer in range(lm.n_layers - 1):
        # the capture continues from the prompt's KV cache (activations.continuations): equal to
        # the whole-sequence pass to float32 rounding of the residual stream's scale (smollm2 has
        # entries near 500), and to no other layer's hidden state
        expected = hs[layer + 1][0, -1].float()
        scale = float(expected.abs().max())
        torch.testing.assert_close(acts[layer], expected, rtol=0, atol=1e-6 * scale + 5e-5, msg=f"layer {layer}")
        if layer:
            assert float((acts[layer] - hs[layer][0, -1].float()).abs().max()) > 1e-3 * scale
    # transformers applies the final norm to hidden_states[-1]; steerlab's last layer is the raw
    # output of the last block, so the norm of it must match.
    with torch.no_grad():
        normed = _final_norm(lm)(acts[-1][None, None])[0, 0]
    torch.testing.assert_close(normed, hs[-1][0, -1].float(), rtol=1e-5, atol=5e-5)


def test_layer_l_is_hidden_states_l_plus_1(tiny_any):
    check_layer_convention(tiny_any)


@pytest.mark.slow
def test_layer_convention_smollm2(smollm2):
    check_layer_convention(smollm2)


def test_unknown_architecture_error_names_module_lists():
    model = torch.nn.Sequential(torch.nn.ModuleList([torch.nn.Linear(2, 2)]))
    with pytest.raises(SteerlabError, match="Module lists seen: 0"):
        find_decoder_blocks(model)
    blocks, path = find_decoder_blocks(model, "0")
    assert path == "0" and len(blocks) == 1
