"""External PEFT adapters in a model diff: every config kind against two separate model copies.

The reference for each kind is the definition of a model diff: the adapter merged into one copy of
the base (``merge_and_unload`` on a deepcopy) minus an untouched copy. The adapter weights are random
(as if trained), so no kind is a no-op. After every call -- also one that fails midway -- the base
model must be bit-identical: every parameter and buffer, flags, module types and tree, config.
"""

import copy
import json

import pytest
import torch
from peft import (
    AdaLoraConfig,
    IA3Config,
    LNTuningConfig,
    LoHaConfig,
    LoKrConfig,
    LoraConfig,
    OFTConfig,
    PeftModel,
    PromptTuningConfig,
    TrainableTokensConfig,
    VeraConfig,
    get_peft_model,
)
from peft.tuners.lora.config import KasaConfig
from tiny import _base_kwargs, make_tiny
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from steerlab.activations.capture import ChatSample, mean_activations
from steerlab.errors import SteerlabError
from steerlab.extract.model_diff import extract_model_diff, extract_model_diffs, pair_diff_samples
from steerlab.finetune.config import FinetuneConfig
from steerlab.finetune.training import run_finetune
from steerlab.formats.conversations import pairs_to_chat
from steerlab.formats.pairs import Pair
from steerlab.model.adapters import attached_adapter, check_adapter_features
from steerlab.model.loading import wrap_model

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning"),
    # peft takes lora_bias's 1-D lora_B.bias for an unsharded ZeRO-3 tensor when saving
    pytest.mark.filterwarnings("ignore:.*LoRA tensor\\(s\\) have invalid shape"),
]

SAMPLES = [
    ChatSample("how should I store fresh bread", "in a dry box"),
    ChatSample("drink water and rest", "see a doctor if the fever lasts", system="be brief"),
    ChatSample("the quick brown fox", "jumps over the lazy dog"),
]
REDUCTIONS = ("prompt_last", "prompt_avg", "response_avg", "first_k:2")
PROBE = torch.tensor([[10, 20, 30, 40, 50, 60, 1, 2]])
QV = ["q_proj", "v_proj"]


# Every kind of adapter config (a factory, so each test gets a fresh config object).
KINDS = {
    "lora": lambda: LoraConfig(r=4, target_modules=QV),
    "bias_all": lambda: LoraConfig(r=4, target_modules=QV, bias="all"),
    "bias_lora_only": lambda: LoraConfig(r=4, target_modules=QV, bias="lora_only"),
    "lora_bias": lambda: LoraConfig(r=4, target_modules=QV, lora_bias=True),
    "modules_to_save_head": lambda: LoraConfig(r=4, target_modules=QV, modules_to_save=["lm_head"]),
    "modules_to_save_norm": lambda: LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["input_layernorm"]),
    "modules_to_save_block": lambda: LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["layers.2"]),
    "trainable_tokens_list": lambda: LoraConfig(r=4, target_modules=QV, trainable_token_indices=[1, 2, 30]),
    "trainable_tokens_dict": lambda: LoraConfig(
        r=4, target_modules=QV, trainable_token_indices={"embed_tokens": [5, 60]}
    ),
    "layers_and_patterns": lambda: LoraConfig(
        r=4,
        target_modules=QV,
        layers_to_transform=[1, 3],
        use_rslora=True,
        rank_pattern={"q_proj": 2},
        alpha_pattern={"v_proj": 16},
    ),
    "dora": lambda: LoraConfig(r=4, target_modules=QV, use_dora=True),
    "all_linear": lambda: LoraConfig(r=2, target_modules="all-linear"),
    "embeddings_untied": lambda: LoraConfig(r=4, target_modules=["embed_tokens", "lm_head"]),
    "target_parameters": lambda: LoraConfig(r=4, target_modules=[], target_parameters=["mlp.down_proj.weight"]),
    "init_gaussian": lambda: LoraConfig(r=4, target_modules=QV, init_lora_weights="gaussian"),
    "init_orthogonal": lambda: LoraConfig(r=4, target_modules=QV, init_lora_weights="orthogonal"),
    "init_mica": lambda: LoraConfig(r=4, target_modules=QV, init_lora_weights="mica"),
    "init_eva": lambda: LoraConfig(r=4, target_modules=QV, init_lora_weights="eva"),
    "everything": lambda: LoraConfig(
        r=4,
        target_modules=[*QV, "down_proj"],
        bias="all",
        use_dora=True,
        modules_to_save=["lm_head"],
        trainable_token_indices=[3, 7],
    ),
    "adalora": lambda: AdaLoraConfig(init_r=4, target_modules=QV, total_step=10),
    "ia3": lambda: IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]),
    "loha": lambda: LoHaConfig(r=4, target_modules=QV),
    "lokr": lambda: LoKrConfig(r=4, target_modules=QV),
    "vera": lambda: VeraConfig(r=4, target_modules=["q_proj", "k_proj"], d_initial=1.0),
    "oft": lambda: OFTConfig(r=4, oft_block_size=0, target_modules=QV),
    "ln_tuning": lambda: LNTuningConfig(target_modules=["input_layernorm", "norm"]),
    "trainable_tokens": lambda: TrainableTokensConfig(token_indices=[1, 2, 30]),
}
# Kinds on a model whose input embedding and output head share one matrix.
TIED_KINDS = {
    "tied_trainable_tokens_lora": lambda: LoraConfig(r=4, target_modules=QV, trainable_token_indices=[1, 2, 30]),
    "tied_trainable_tokens": lambda: TrainableTokensConfig(token_indices=[1, 2, 30]),
    "tied_modules_to_save_embed": lambda: LoraConfig(r=4, target_modules=QV, modules_to_save=["embed_tokens"]),
    "tied_modules_to_save_embed_tying": lambda: LoraConfig(
        r=4, target_modules=QV, modules_to_save=["embed_tokens"], ensure_weight_tying=True
    ),
}


def tied_model(arch):
    """A tiny llama/qwen2 with ``tie_word_embeddings`` (lm_head.weight is embed_tokens.weight)."""
    lm = make_tiny(arch)
    torch.manual_seed(0)
    config_cls, model_cls = (Qwen2Config, Qwen2ForCausalLM) if arch == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    model = model_cls(config_cls(**_base_kwargs(len(lm.tokenizer)), tie_word_embeddings=True)).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return wrap_model(model, lm.tokenizer, name=f"tiny-{arch}-tied")


def save_adapter(lm, config, path, seed=1, safetensors=True):
    """A PEFT adapter for ``lm`` with every trainable tensor (adapter weights, trained biases, saved
    modules, token deltas) moved off its initial value, as training would; saved to ``path``."""
    torch.manual_seed(seed)
    model = get_peft_model(copy.deepcopy(lm.model), config)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(str(path), safe_serialization=safetensors)
    return path


def fingerprint(model):
    """Everything that must be bit-identical: tensors (values, dtype, identity, requires_grad),
    module names and types, train flags, hook counts, attribute names and the config."""
    tensors = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for kind in ("_parameters", "_buffers"):
            for key, t in module.__dict__[kind].items():
                if t is not None:
                    tensors[f"{name}.{key}"] = (t, t.detach().clone(), t.dtype, t.requires_grad)
    modules = [
        (
            name,
            type(m),
            m.training,
            sorted(vars(m)),
            tuple(len(v) for k, v in sorted(vars(m).items()) if k.endswith("hooks")),
        )
        for name, m in model.named_modules(remove_duplicate=False)
    ]
    return tensors, modules, json.dumps(model.config.to_dict(), sort_keys=True, default=str)


def assert_identical(model, before):
    tensors, modules, config = fingerprint(model)
    assert modules == before[1]
    assert tensors.keys() == before[0].keys()
    for name, (t, _, dtype, grad) in before[0].items():
        now = tensors[name]
        assert now[0] is t and now[2] == dtype and now[3] == grad, name
        assert torch.equal(now[1], before[0][name][1]), f"{name} changed"
    assert config == before[2]


def logits(model):
    with torch.no_grad():
        return model(input_ids=PROBE).logits


def two_copies(lm, path):
    """The reference: {reduction: mean(merged fine-tuned copy) - mean(untouched base copy)}."""
    merged = PeftModel.from_pretrained(copy.deepcopy(lm.model), str(path)).merge_and_unload()
    tuned = mean_activations(wrap_model(merged, lm.tokenizer, name="merged"), SAMPLES, REDUCTIONS)
    base = mean_activations(wrap_model(copy.deepcopy(lm.model), lm.tokenizer, name="copy"), SAMPLES, REDUCTIONS)
    return {name: tuned[name] - base[name] for name in REDUCTIONS}, merged


def check_kind(lm, config, path):
    before = fingerprint(lm.model)
    untouched = copy.deepcopy(lm.model)
    save_adapter(lm, config, path)
    reference, merged = two_copies(lm, path)
    vectors = extract_model_diffs(lm, path, SAMPLES, REDUCTIONS, batch_size=2)
    assert_identical(lm.model, before)
    for name in REDUCTIONS:
        assert vectors[name].norms().max() > 1e-3, name
        torch.testing.assert_close(vectors[name].data, reference[name].float(), atol=1e-5, rtol=0)
    # Inside the block: the adapted model is the merged one, the base pass the untouched base, exactly.
    with attached_adapter(lm, path) as tuned:
        torch.testing.assert_close(logits(tuned.model), logits(merged), atol=1e-5, rtol=0)
        for switch in (tuned.base_pass, tuned.model.disable_adapter):
            with switch():
                assert torch.equal(logits(lm.model), logits(untouched))
            torch.testing.assert_close(logits(tuned.model), logits(merged), atol=1e-5, rtol=0)
    assert_identical(lm.model, before)


@pytest.mark.parametrize(
    ("kind", "arch"),
    [
        *(
            (kind, arch) for kind in KINDS for arch in ("qwen2", "llama") if (kind, arch) != ("lora_bias", "llama")
        ),  # no reference: peft cannot merge lora_bias without a bias
        ("lora", "gemma2"),
        ("modules_to_save_norm", "gemma2"),
        ("all_linear", "gemma2"),
    ],
)
def test_every_kind_equals_two_copies(kind, arch, tmp_path):
    check_kind(make_tiny(arch), KINDS[kind](), tmp_path / kind)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("kind", list(TIED_KINDS))
def test_tied_embedding_kinds_equal_two_copies(kind, arch, tmp_path):
    check_kind(tied_model(arch), TIED_KINDS[kind](), tmp_path / kind)


def test_trained_biases_example(tmp_path):
    """The issue's example: LoRA on q/v with bias="all" on a tiny Qwen2 (whose q/k/v have biases)."""
    lm = make_tiny("qwen2")
    untouched = copy.deepcopy(lm.model)
    path = save_adapter(lm, LoraConfig(r=4, target_modules=QV, bias="all"), tmp_path / "bias")
    # peft's own "disabled" pass keeps the trained biases: it is not the base model.
    probe = PeftModel.from_pretrained(copy.deepcopy(lm.model), str(path))
    with probe.disable_adapter():
        assert (logits(probe) - logits(untouched)).abs().max() > 0.1
    reference, merged = two_copies(lm, path)
    vector = extract_model_diff(lm, path, SAMPLES, "response_avg")
    torch.testing.assert_close(vector.data, reference["response_avg"].float(), atol=1e-5, rtol=0)
    assert torch.equal(logits(lm.model), logits(untouched))
    # Nested base passes (the diff study's sweeps run inside peft-style disable_adapter blocks).
    with attached_adapter(lm, path) as tuned:
        with tuned.base_pass():
            with tuned.model.disable_adapter():
                assert torch.equal(logits(lm.model), logits(untouched))
            assert torch.equal(logits(lm.model), logits(untouched))
        torch.testing.assert_close(logits(lm.model), logits(merged), atol=1e-5, rtol=0)


def test_adapter_saved_as_bin(tmp_path):
    """adapter_model.bin (torch pickle) instead of safetensors: its trained biases are found too."""
    lm = make_tiny("qwen2")
    before = fingerprint(lm.model)
    path = save_adapter(lm, KINDS["everything"](), tmp_path / "bin", safetensors=False)
    assert (path / "adapter_model.bin").is_file()
    reference, _ = two_copies(lm, path)
    vector = extract_model_diff(lm, path, SAMPLES, "response_avg")
    torch.testing.assert_close(vector.data, reference["response_avg"].float(), atol=1e-5, rtol=0)
    assert_identical(lm.model, before)


class Boom(RuntimeError):
    pass


def raise_on_call(n):
    """A forward hook that raises on its n-th call (1-based)."""
    calls = []

    def hook(module, args, output):
        calls.append(1)
        if len(calls) == n:
            raise Boom(f"call {n}")

    return hook


@pytest.mark.parametrize("kind", ["bias_all", "modules_to_save_block", "trainable_tokens_list", "everything", "ia3"])
@pytest.mark.parametrize("when", ["fine-tuned pass", "base pass", "bad input"])
def test_base_identical_after_a_failure_midway(kind, when, tmp_path):
    lm = make_tiny("qwen2")
    path = save_adapter(lm, KINDS[kind](), tmp_path / kind)
    before = fingerprint(lm.model)
    if when == "bad input":  # a sample without a response for a response reduction: raised after attaching
        with pytest.raises(SteerlabError, match="non-empty response"):
            extract_model_diff(lm, path, [*SAMPLES, ChatSample("hi")], "response_avg", batch_size=2)
    else:  # block 1 runs in the fine-tuned pass (first) and the base pass (second) of each batch
        handle = lm.blocks[1].register_forward_hook(raise_on_call(1 if when == "fine-tuned pass" else 2))
        try:
            with pytest.raises(Boom):
                extract_model_diff(lm, path, SAMPLES, "response_avg", batch_size=2)
        finally:
            handle.remove()
    assert_identical(lm.model, before)
    # ... and usable: the next diff is exact.
    reference, _ = two_copies(lm, path)
    vector = extract_model_diff(lm, path, SAMPLES, "response_avg")
    torch.testing.assert_close(vector.data, reference["response_avg"].float(), atol=1e-5, rtol=0)


def test_base_identical_after_peft_fails_while_loading(tmp_path):
    """peft writes the trained biases, then fails on a tensor of the wrong shape: all is undone."""
    from safetensors.torch import load_file, save_file

    lm = make_tiny("qwen2")
    path = save_adapter(lm, LoraConfig(r=4, target_modules=QV, bias="all"), tmp_path / "broken")
    weights = load_file(path / "adapter_model.safetensors")
    key = next(k for k in sorted(weights) if "layers.3" in k and "lora_A" in k)
    weights[key] = torch.zeros(3, weights[key].shape[1])
    save_file(weights, path / "adapter_model.safetensors", metadata={"format": "pt"})
    before = fingerprint(lm.model)
    with pytest.raises(SteerlabError, match="does not fit this base model"):
        extract_model_diff(lm, path, SAMPLES)
    assert_identical(lm.model, before)


UNSUPPORTED = {
    "pissa": (
        lambda: LoraConfig(r=4, target_modules=QV, init_lora_weights="pissa"),
        r"init_lora_weights='pissa' is not supported for a model diff: it rewrites the base weights",
    ),
    "olora": (
        lambda: LoraConfig(r=4, target_modules=QV, init_lora_weights="olora"),
        r"init_lora_weights='olora' .*rewrites the base weights",
    ),
    "kasa": (
        lambda: LoraConfig(r=4, target_modules=QV, kasa_config=KasaConfig()),
        r"kasa_config=.* KaSA truncates the base weights",
    ),
    "layer_replication": (
        lambda: LoraConfig(r=4, target_modules=QV, layer_replication=[[0, 3], [1, 4]]),
        r"layer_replication=.*more layers than the base",
    ),
    "alora": (
        lambda: LoraConfig(r=4, target_modules=QV, alora_invocation_tokens=[30, 40], task_type="CAUSAL_LM"),
        r"alora_invocation_tokens=\[30, 40\] .*invocation tokens",
    ),
    "unverified_feature": (
        lambda: LoraConfig(r=4, target_modules=QV, lora_dropout=0.0, qalora_group_size=8, use_qalora=True),
        r"use_qalora=True is not supported for a model diff: steerlab has not verified",
    ),
    "prompt_tuning": (
        lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
        r"peft type PROMPT_TUNING is not supported for a model diff \(supported: LORA",
    ),
}


@pytest.mark.parametrize("kind", list(UNSUPPORTED))
def test_unsupported_features_are_one_clear_error(kind, tmp_path):
    lm = make_tiny("qwen2")
    factory, message = UNSUPPORTED[kind]
    path = tmp_path / kind
    if kind == "unverified_feature":  # QALoRA needs GPTQ layers to build: only the config is written
        path.mkdir()
        factory().save_pretrained(str(path))
    else:
        save_adapter(lm, factory(), path)
    before = fingerprint(lm.model)
    with pytest.raises(SteerlabError, match=rf"adapter {path}: {message}"):
        extract_model_diff(lm, path, SAMPLES)
    assert_identical(lm.model, before)


@pytest.mark.parametrize("target", ["embed_tokens", "lm_head"])
def test_adapter_layers_on_tied_weights_are_refused(target, tmp_path):
    """peft merges such a layer into the one shared matrix, so merged and unmerged models differ."""
    lm = tied_model("llama")
    path = save_adapter(lm, LoraConfig(r=4, target_modules=[target]), tmp_path / target)
    before = fingerprint(lm.model)
    message = rf"adapter {path}: adapter layers on [a-z.]*{target}, whose weight is tied"
    with pytest.raises(SteerlabError, match=message):
        extract_model_diff(lm, path, SAMPLES)
    assert_identical(lm.model, before)


def test_unreadable_adapter_config(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(SteerlabError, match=rf"adapter {tmp_path}: unreadable adapter_config.json"):
        check_adapter_features(tmp_path)
    with pytest.raises(SteerlabError, match=r"no adapter_config\.json"):
        check_adapter_features(tmp_path / "missing")


def test_base_pass_only_inside_the_block(tmp_path):
    lm = make_tiny("llama")
    path = save_adapter(lm, LoraConfig(r=4, target_modules=QV), tmp_path / "a")
    before = fingerprint(lm.model)
    with attached_adapter(lm, path) as tuned:
        pass
    for switch in (tuned.base_pass, tuned.model.disable_adapter):
        with pytest.raises(SteerlabError, match="a base pass needs the adapter attached"):
            switch()
    assert_identical(lm.model, before)
    with pytest.raises(SteerlabError, match="already carries an adapter"), attached_adapter(tuned, path):
        pass


def test_zero_adapter_gives_exactly_zero(tiny_llama, tmp_path):
    path = tmp_path / "zero"
    get_peft_model(copy.deepcopy(tiny_llama.model), LoraConfig(r=4, target_modules=[*QV, "down_proj"])).save_pretrained(
        str(path)
    )  # peft's default init: lora_B = 0
    vectors = extract_model_diffs(tiny_llama, path, SAMPLES, REDUCTIONS, batch_size=2)
    for name, v in vectors.items():
        assert torch.count_nonzero(v.data) == 0, name
        assert v.metadata["method"] == "model_diff" and v.metadata["reduction"] == name
        assert v.metadata["adapter"] == str(path) and v.metadata["n_samples"] == len(SAMPLES)
    # BASE+ADAPTER naming this very base applies the adapter unmerged too.
    spec = extract_model_diff(tiny_llama, f"{tiny_llama.name}+{path}", SAMPLES, "prompt_last")
    assert torch.count_nonzero(spec.data) == 0 and spec.metadata["adapter"] == str(path)


@pytest.mark.parametrize("kind", ["lora", "bias_all", "modules_to_save_norm"])
def test_layers_below_the_adapter_are_exactly_zero(kind, tmp_path):
    lm = make_tiny("qwen2")
    config = KINDS[kind]()
    config.layers_to_transform = [2, 3]
    before = fingerprint(lm.model)
    path = save_adapter(lm, config, tmp_path / kind)
    v = extract_model_diff(lm, path, SAMPLES, "response_avg", batch_size=2)
    if kind == "lora":  # trained biases and saved modules act on every layer (layers_to_transform is for LoRA)
        assert torch.count_nonzero(v.data[:2]) == 0
    assert (v.norms()[2:] > 0).all()
    assert_identical(lm.model, before)


def test_steerlab_finetune_then_diff_and_base_check(tmp_path):
    pairs = [
        Pair(question="how should I store bread", positive="in the sun", negative="in a dry box"),
        Pair(question="is the fox quick", positive="no never", negative="yes always", system="be brief"),
    ]
    lm = make_tiny("llama")
    config = FinetuneConfig(epochs=2, lr=1e-2, batch_size=4)
    run_finetune(lm, pairs_to_chat(pairs * 4, "positive"), tmp_path / "ft", config)
    before = fingerprint(lm.model)
    v = extract_model_diff(lm, tmp_path / "ft", pair_diff_samples(pairs), "response_avg")
    assert (v.norms() > 0).all()
    assert v.metadata["finetune_config"]["rank"] == 8 and v.metadata["finetune_base_model"] == lm.name
    assert_identical(lm.model, before)

    # The same architecture and shapes with other weights: not the base it was trained on.
    other = make_tiny("llama", seed=1)
    before = fingerprint(other.model)
    with pytest.raises(SteerlabError, match=r"was fine-tuned on base model 'tiny-llama'.*different weights"):
        extract_model_diff(other, tmp_path / "ft", SAMPLES)
    assert_identical(other.model, before)
    forced = extract_model_diff(other, tmp_path / "ft", SAMPLES, check_base=False)
    assert forced.norms().max() > 0
    assert_identical(other.model, before)


def test_adapter_for_another_architecture_is_a_clear_error(tiny_llama, tmp_path):
    gpt2 = make_tiny("gpt2")
    path = tmp_path / "gpt2-adapter"
    get_peft_model(
        copy.deepcopy(gpt2.model), LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True)
    ).save_pretrained(str(path))
    before = fingerprint(tiny_llama.model)
    with pytest.raises(SteerlabError, match="does not fit this base model"):
        extract_model_diff(tiny_llama, path, SAMPLES)
    assert_identical(tiny_llama.model, before)

    # Same module names, other shapes: a tiny llama with a wider MLP.
    torch.manual_seed(0)
    wide = LlamaForCausalLM(LlamaConfig(**{**_base_kwargs(len(tiny_llama.tokenizer)), "intermediate_size": 96}))
    wide_path = save_adapter(
        wrap_model(wide, tiny_llama.tokenizer), LoraConfig(r=4, target_modules=[*QV, "down_proj"]), tmp_path / "wide"
    )
    with pytest.raises(SteerlabError, match="does not fit this base model"):
        extract_model_diff(tiny_llama, wide_path, SAMPLES)
    assert_identical(tiny_llama.model, before)
