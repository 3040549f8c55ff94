"""Loading and wrapping models; layer checks; info()."""

import pytest
import torch
from tiny import CORPUS, make_model, make_tokenizer

from steerlab import load_model, wrap_model
from steerlab.errors import SteerlabError

INFO_KEYS = {
    "name",
    "architecture",
    "model_type",
    "n_layers",
    "d_model",
    "dtype",
    "device",
    "blocks_path",
    "chat_template",
    "system_role",
    "adapter",
    "vocab_size",
}


@pytest.fixture(scope="module")
def loaded_dir(tiny_dir):
    return load_model(str(tiny_dir))


@pytest.mark.parametrize("spec", ["no-such-model-xyz", "nobody/no-such-model", "./not/a/dir"])
def test_unknown_model_names_spec(spec):
    with pytest.raises(SteerlabError, match="unknown model") as exc:
        load_model(spec)
    assert repr(spec) in str(exc.value)


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(SteerlabError, match=r"not .*a loadable model directory") as exc:
        load_model(str(tmp_path))
    assert str(tmp_path) in str(exc.value)


def test_other_bad_specs(tmp_path):
    with pytest.raises(SteerlabError, match="--model: empty model spec"):
        load_model("  ")
    missing = tmp_path / "model.gguf"
    with pytest.raises(SteerlabError, match="GGUF file not found") as exc:
        load_model(str(missing))
    assert str(missing) in str(exc.value)


def test_bad_dtype_and_device(tiny_dir):
    with pytest.raises(SteerlabError, match="--dtype 'float8'"):
        load_model(str(tiny_dir), dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(SteerlabError, match=r"--device 'cuda'.*not available"):
            load_model(str(tiny_dir), device="cuda")


def test_bad_adapter(tiny_dir, tmp_path):
    with pytest.raises(SteerlabError, match=r"--adapter .*adapter_config\.json"):
        load_model(f"{tiny_dir}+{tmp_path}")


def test_check_layer(tiny_llama):
    n = tiny_llama.n_layers
    assert [tiny_llama.check_layer(L) for L in (0, 1, n - 1, -1, -n)] == [0, 1, n - 1, n - 1, 0]
    with pytest.raises(SteerlabError, match=rf"--layer {n} is out of range: tiny-llama has {n} layers"):
        tiny_llama.check_layer(n)
    with pytest.raises(SteerlabError, match=rf"--layers -{n + 1} is out of range: .*0\.\.{n - 1}"):
        tiny_llama.check_layer(-n - 1, flag="--layers")


def test_wrap_plain_transformers_model():
    tok = make_tokenizer()
    tok.pad_token = None  # wrap_model must supply one
    tok.padding_side = "right"
    model = make_model("gpt2", len(tok))
    lm = wrap_model(model, tok)
    assert lm.model is model and lm.tokenizer is tok
    assert lm.blocks_path == "transformer.h" and lm.blocks is model.transformer.h
    assert (lm.n_layers, lm.d_model) == (4, 64)
    assert lm.device == torch.device("cpu") and lm.dtype == torch.float32
    assert tok.padding_side == "left"
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    assert lm.name == "GPT2LMHeadModel"  # no name_or_path on a fresh model
    assert wrap_model(lm) is lm
    llama = wrap_model(make_model("llama", len(tok)), tok, name="mine", blocks_path="model.layers")
    assert llama.name == "mine" and llama.blocks_path == "model.layers"


def test_load_local_directory_round_trip(tiny_dir, tiny_llama, loaded_dir):
    lm = loaded_dir
    assert lm.name == str(tiny_dir)
    assert (lm.n_layers, lm.d_model, lm.blocks_path) == (4, 64, "model.layers")
    assert not lm.model.training
    original = tiny_llama.model.state_dict()
    for key, value in lm.model.state_dict().items():
        assert torch.equal(value, original[key]), key
    tok = lm.tokenizer
    assert tok.padding_side == "left" and tok.pad_token == "<pad>"
    assert tok.chat_template == tiny_llama.tokenizer.chat_template
    assert lm.extra["fallback_template"] is False
    text = CORPUS[1]
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == tiny_llama.tokenizer(text)["input_ids"]
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, tiny_llama.model(ids).logits)


def test_info(loaded_dir, tiny_gemma):
    info = loaded_dir.info()
    assert set(info) == INFO_KEYS
    assert info["architecture"] == "LlamaForCausalLM" and info["model_type"] == "llama"
    assert (info["n_layers"], info["d_model"]) == (4, 64)
    assert (info["dtype"], info["device"]) == ("float32", "cpu")
    assert info["chat_template"] is True and info["system_role"] is True
    assert info["adapter"] is None and info["vocab_size"] == len(loaded_dir.tokenizer)
    gemma = tiny_gemma.info()
    assert set(gemma) == INFO_KEYS
    assert gemma["system_role"] is False and gemma["model_type"] == "gemma2"


@pytest.mark.slow
def test_smollm2(smollm2):
    assert (smollm2.n_layers, smollm2.d_model) == (30, 576)
    assert smollm2.has_system_role is True
    info = smollm2.info()
    assert info["name"] == "smollm2" and info["model_type"] == "llama"
    assert (info["n_layers"], info["d_model"], info["system_role"]) == (30, 576, True)
    assert info["chat_template"] is True and info["dtype"] == "float32"
    assert smollm2.tokenizer.padding_side == "left" and smollm2.tokenizer.pad_token is not None
