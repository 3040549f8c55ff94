"""Baking a direction into the weights (steerlab.steering.bake): the baked directory, loaded back with
AutoModelForCausalLM, computes what the original computes with the direction projected out of every
write into the residual stream by hooks — the embedding output(s), each attention output and each MLP
output, biases included — in fp32 to 1e-4, on every architecture baking supports; the model in
memory is untouched; bad input gets one clear error."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import make_model, make_tokenizer
from transformers import (
    AutoModelForCausalLM,
    GemmaConfig,
    GemmaForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from steerlab import SteeringVector, bake_direction
from steerlab.errors import SteerlabError
from steerlab.model.hooks import installed_hooks, output_hooks
from steerlab.model.loading import wrap_model
from steerlab.steering.bake import BAKE_FILE, RESIDUAL_WRITERS, project_out

SMALL = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def _small(arch: str, vocab: int) -> torch.nn.Module:
    """A tiny model of ``arch`` (two blocks), every bias set to random values so biases are tested."""
    torch.manual_seed(1)
    if arch in ("llama", "qwen2", "gpt2"):
        model = make_model(arch, vocab, seed=1)
    elif arch == "llama_tied_bias":  # tied embeddings (as SmolLM2) and output biases
        model = LlamaForCausalLM(
            LlamaConfig(vocab_size=vocab, tie_word_embeddings=True, attention_bias=True, mlp_bias=True, **SMALL)
        )
    elif arch == "mistral":
        model = MistralForCausalLM(MistralConfig(vocab_size=vocab, **SMALL))
    elif arch == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(vocab_size=vocab, head_dim=16, **SMALL))
    elif arch == "phi3":
        model = Phi3ForCausalLM(Phi3Config(vocab_size=vocab, pad_token_id=0, **SMALL))
    elif arch == "gemma":
        model = GemmaForCausalLM(GemmaConfig(vocab_size=vocab, head_dim=16, **SMALL))
    elif arch == "gpt_neox":
        model = GPTNeoXForCausalLM(
            GPTNeoXConfig(
                vocab_size=vocab,
                hidden_size=64,
                intermediate_size=96,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=64,
            )
        )
    else:
        raise ValueError(arch)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.1)
    return model.eval()


# The reference, written independently of steerlab's table of writers: which modules' outputs are
# the writes into the residual stream (embeddings from the causal LM, attention and MLP from a block).
REFERENCE = {
    "llama": (("model.embed_tokens",), "self_attn", "mlp"),
    "gpt2": (("transformer.wte", "transformer.wpe"), "attn", "mlp"),
    "gpt_neox": (("gpt_neox.embed_in",), "attention", "mlp"),
}
ARCHS = ["llama", "llama_tied_bias", "qwen2", "mistral", "qwen3", "phi3", "gemma", "gpt2", "gpt_neox"]
TEXTS = ["how should I store fresh bread so it stays soft", "the quick brown fox"]


def _reference_modules(lm):
    model = lm.model
    key = model.config.model_type if model.config.model_type in REFERENCE else "llama"
    embeddings, attention, mlp = REFERENCE[key]
    modules = [model.get_submodule(path) for path in embeddings]
    for block in lm.blocks:
        modules += [block.get_submodule(attention), block.get_submodule(mlp)]
    return modules


def _ablated_logits(lm, unit, inputs) -> torch.Tensor:
    """The original model with ``unit`` projected out of every residual-stream write by hooks."""

    def project(module, args, output):
        if isinstance(output, tuple):
            return (output[0] - (output[0] @ unit)[..., None] * unit, *output[1:])
        return output - (output @ unit)[..., None] * unit

    with torch.no_grad(), output_hooks([(m, project) for m in _reference_modules(lm)]):
        return lm.model(**inputs).logits


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.mark.parametrize("arch", ARCHS)
def test_baked_model_equals_hook_ablation_of_every_write(arch, tokenizer, tmp_path, one_thread):
    lm = wrap_model(_small(arch, len(tokenizer)), tokenizer, name=f"tiny-{arch}")
    assert lm.model.config.model_type in RESIDUAL_WRITERS
    gen = torch.Generator().manual_seed(3)
    vec = SteeringVector(torch.randn(lm.n_layers, lm.d_model, generator=gen), {"method": "test"})
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    tied = lm.model.get_output_embeddings().weight is lm.model.get_input_embeddings().weight
    config_before = lm.model.config.to_dict()

    result = bake_direction(lm, vec, tmp_path / "baked", layer=1)

    # the model in memory is untouched: weights, ties, config
    after = lm.model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert (lm.model.get_output_embeddings().weight is lm.model.get_input_embeddings().weight) == tied
    assert lm.model.config.to_dict() == config_before
    assert installed_hooks(lm.model) == 0

    unit = vec.data[1] / vec.data[1].norm()
    assert torch.allclose(result.direction, unit)
    inputs = tokenizer(TEXTS, return_tensors="pt", padding=True)
    expected = _ablated_logits(lm, unit, inputs)
    baked = AutoModelForCausalLM.from_pretrained(result.path, dtype=torch.float32).eval()
    with torch.no_grad():
        got = baked(**inputs).logits
        plain = lm.model(**inputs).logits
    assert (got - expected).abs().max() < 1e-4, float((got - expected).abs().max())
    assert (plain - expected).abs().max() > 1e-3  # the ablation changes the model (the test can fail)
    # the unembedding kept its weights (untied where they were tied)
    assert torch.equal(baked.get_output_embeddings().weight, before[_head_key(lm)])
    assert result.untied == tied
    config = json.loads((result.path / "config.json").read_text())
    assert config["tie_word_embeddings"] is False or not tied
    # what was baked is recorded; the tokenizer travels with the weights
    meta = json.loads((result.path / BAKE_FILE).read_text())
    assert meta["vector"]["layer"] == 1 and meta["untied_embeddings"] == tied
    assert torch.allclose(torch.tensor(meta["direction"]["unit"]), unit)
    assert (result.path / "tokenizer_config.json").is_file()
    assert sorted(p.name for p in result.path.glob("*.safetensors")) == ["model.safetensors"]


def _head_key(lm) -> str:
    head = lm.model.get_output_embeddings()
    return next(name for name, module in lm.model.named_modules() if module is head) + ".weight"


def test_residual_stream_of_the_baked_model_has_no_component_along_the_direction(tokenizer, tmp_path):
    lm = wrap_model(_small("gpt2", len(tokenizer)), tokenizer, name="tiny-gpt2")
    direction = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(5))
    result = bake_direction(lm, direction, tmp_path / "baked")
    baked = AutoModelForCausalLM.from_pretrained(result.path, dtype=torch.float32).eval()
    inputs = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        states = baked(**inputs, output_hidden_states=True).hidden_states[:-1]  # [-1] has the final norm
        original = lm.model(**inputs, output_hidden_states=True).hidden_states[:-1]
    unit = direction / direction.norm()
    assert max(float((h @ unit).abs().max()) for h in states) < 1e-4
    assert max(float((h @ unit).abs().max()) for h in original) > 1e-2


def test_project_out_formula():
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(8, generator=gen)
    u = u / u.norm()
    w = torch.randn(8, 5, generator=gen)  # nn.Linear weight [d, in]: outputs along dim 0
    assert torch.allclose(project_out(w, u, dim=0), (torch.eye(8) - torch.outer(u, u)) @ w, atol=1e-6)
    e = torch.randn(3, 8, generator=gen)  # embedding rows / Conv1D [in, d]
    assert torch.allclose(project_out(e, u), e @ (torch.eye(8) - torch.outer(u, u)), atol=1e-6)
    assert project_out(w.double(), u, dim=0).dtype == torch.float64


# --- bad input: one clear error each, nothing written --------------------------------------------


@pytest.fixture(scope="module")
def small_llama(tokenizer):
    return wrap_model(_small("llama", len(tokenizer)), tokenizer, name="tiny-llama")


@pytest.mark.parametrize(
    ("vector", "layer", "needle"),
    [
        (lambda lm: SteeringVector(torch.ones(lm.n_layers, lm.d_model + 1)), 0, "d_model"),
        (lambda lm: SteeringVector(torch.ones(lm.n_layers, lm.d_model)), 9, "--layer 9 is out of range"),
        (lambda lm: SteeringVector(torch.ones(lm.n_layers, lm.d_model)), None, "--layer"),
        (lambda lm: SteeringVector(torch.zeros(lm.n_layers, lm.d_model)), 1, "zero at layer 1"),
        (lambda lm: SteeringVector(torch.ones(lm.n_layers + 3, lm.d_model)), 1, "layers"),
        (lambda lm: torch.ones(lm.d_model - 1), None, "d_model"),
    ],
)
def test_bad_vectors_are_refused(small_llama, tmp_path, vector, layer, needle):
    with pytest.raises(SteerlabError, match=needle):
        bake_direction(small_llama, vector(small_llama), tmp_path / "out", layer=layer)
    assert not (tmp_path / "out").exists()


def test_one_row_vector_is_an_explicit_direction(small_llama, tmp_path):
    direction = SteeringVector(torch.arange(small_llama.d_model, dtype=torch.float32))
    result = bake_direction(small_llama, direction, tmp_path / "out")
    assert result.metadata["vector"]["layer"] is None
    assert torch.allclose(result.direction, direction.data[0] / direction.data[0].norm())


def test_unknown_and_refused_architectures_are_named(tokenizer, tmp_path, tiny_gemma):
    vec = torch.ones(tiny_gemma.d_model)
    with pytest.raises(SteerlabError, match=r"gemma2.*post-attention / post-feedforward norms"):
        bake_direction(tiny_gemma, vec, tmp_path / "out")
    config = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        word_embed_proj_dim=32,
    )
    opt = wrap_model(OPTForCausalLM(config).eval(), tokenizer, name="tiny-opt")
    with pytest.raises(SteerlabError, match=r"OPTForCausalLM \(model_type 'opt'\).*not known.*llama"):
        bake_direction(opt, torch.ones(opt.d_model), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_out_must_be_new_or_an_earlier_bake(small_llama, tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(SteerlabError, match=r"--out .*not written by steerlab bake"):
        bake_direction(small_llama, torch.ones(small_llama.d_model), other)
    assert (other / "keep.txt").read_text() == "mine"
    first = bake_direction(small_llama, torch.ones(small_llama.d_model), tmp_path / "baked")
    second = bake_direction(small_llama, -torch.arange(small_llama.d_model, dtype=torch.float32), tmp_path / "baked")
    assert first.path == second.path and second.metadata["direction"]["sha256"] != first.metadata["direction"]["sha256"]


def test_bfloat16_models_are_baked_in_bfloat16(tokenizer, tmp_path):
    lm = wrap_model(_small("llama", len(tokenizer)).to(torch.bfloat16), tokenizer, name="tiny-bf16")
    direction = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(6))
    dtype_before = lm.model.config.dtype
    result = bake_direction(lm, direction, tmp_path / "baked")
    assert lm.model.config.dtype == dtype_before  # save_pretrained's own setting is put back
    baked = AutoModelForCausalLM.from_pretrained(result.path)
    assert baked.dtype == torch.bfloat16 and result.metadata["dtype"] == "bfloat16"
    unit = direction / direction.norm()
    residue = (baked.get_input_embeddings().weight.float() @ unit).abs().max()
    assert residue < 0.02 * baked.get_input_embeddings().weight.float().abs().max()  # bf16 rounding only


def test_adapters_and_the_models_own_directory_are_refused(tiny_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from steerlab import load_model

    lm = load_model(str(tiny_dir))
    with pytest.raises(SteerlabError, match="that is the model's own directory"):
        bake_direction(lm, torch.ones(lm.d_model), tiny_dir)
    assert (tiny_dir / "config.json").is_file() and not (tiny_dir / BAKE_FILE).exists()
    peft_model = get_peft_model(lm.model, LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(SteerlabError, match=r"has an adapter .*merge it into the base weights first"):
        bake_direction(wrap_model(peft_model, lm.tokenizer, name="tiny+lora"), torch.ones(64), tmp_path / "out")
    assert not (tmp_path / "out").exists()
