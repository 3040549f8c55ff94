import copy
import json
import time

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny import make_tiny, make_tokenizer

from steerlab.activations.capture import ChatSample, mean_activations
from steerlab.errors import SteerlabError
from steerlab.extract.model_diff import (
    extract_model_diff,
    extract_model_diffs,
    load_diff_samples,
    pair_diff_samples,
)
from steerlab.finetune.training import finetune
from steerlab.formats.conversations import pairs_to_chat
from steerlab.formats.pairs import Pair, builtin_pairs_path, load_pairs
from steerlab.model.loading import wrap_model

SAMPLES = [
    ChatSample("how should I store fresh bread", "in a dry box"),
    ChatSample("drink water and rest", "see a doctor if the fever lasts", system="be brief"),
    ChatSample("the quick brown fox", "jumps over the lazy dog"),
    ChatSample([{"role": "user", "content": "yes or no"}, {"role": "assistant", "content": "maybe"},
                {"role": "user", "content": "answer"}], "no"),
]
PAIRS = [Pair(question="how should I store bread", positive="in the sun", negative="in a dry box"),
         Pair(question="is the fox quick", positive="no never", negative="yes always", system="be brief")]
REDUCTIONS = ("prompt_last", "prompt_avg", "response_avg", "first_k:2")
PROBE = torch.tensor([[10, 20, 30, 40, 50, 60]])


@pytest.fixture(autouse=True)
def _one_thread(request):
    """Tiny models run faster on one thread (and do not fight other processes for cores)."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _adapter(lm, path, zero=False, layers=None, seed=0):
    """A LoRA adapter for ``lm`` saved to ``path``: peft's default init (lora_B = 0) or random."""
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=bool(zero), layers_to_transform=layers)
    get_peft_model(copy.deepcopy(lm.model), config).save_pretrained(str(path))
    return path


def _state(lm):
    return {k: v.clone() for k, v in lm.model.state_dict().items()}


def _assert_clean(lm, state):
    after = lm.model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(state[k], after[k]) for k in state)
    assert not any("lora" in n for n, _ in lm.model.named_modules())
    assert not hasattr(lm.model, "peft_config")
    assert all(p.requires_grad for p in lm.model.parameters())


def test_zero_adapter_gives_exactly_zero(tiny_llama, tmp_path):
    path = _adapter(tiny_llama, tmp_path / "zero", zero=True)
    vectors = extract_model_diffs(tiny_llama, path, SAMPLES, REDUCTIONS, batch_size=3)
    for name, v in vectors.items():
        assert torch.count_nonzero(v.data) == 0, name
        assert v.metadata["method"] == "model_diff" and v.metadata["reduction"] == name
        assert v.metadata["adapter"] == str(path) and v.metadata["n_samples"] == 4
    # BASE+ADAPTER naming this very base applies the adapter unmerged too.
    spec = extract_model_diff(tiny_llama, f"{tiny_llama.name}+{path}", SAMPLES, "prompt_last")
    assert torch.count_nonzero(spec.data) == 0 and spec.metadata["adapter"] == str(path)


def test_layers_below_the_adapter_are_exactly_zero(tiny_llama, tmp_path):
    state = _state(tiny_llama)
    path = _adapter(tiny_llama, tmp_path / "top", layers=[2, 3])
    v = extract_model_diff(tiny_llama, path, SAMPLES, "response_avg", batch_size=2)
    assert torch.count_nonzero(v.data[:2]) == 0
    assert (v.norms()[2:] > 0).all()
    _assert_clean(tiny_llama, state)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2"])
def test_unmerged_adapter_equals_merged_copy(arch, tmp_path):
    lm = make_tiny(arch)
    state = _state(lm)
    path = _adapter(lm, tmp_path / "a")
    unmerged = extract_model_diffs(lm, path, SAMPLES, REDUCTIONS, batch_size=3)
    _assert_clean(lm, state)

    from peft import PeftModel

    merged_model = PeftModel.from_pretrained(copy.deepcopy(lm.model), str(path)).merge_and_unload()
    merged = wrap_model(merged_model, lm.tokenizer, name="merged")
    via_copy = extract_model_diffs(lm, merged, SAMPLES, REDUCTIONS, batch_size=2)
    # ... and equal to the difference of the plain per-model means.
    means_ft = mean_activations(merged, SAMPLES, REDUCTIONS)
    means_base = mean_activations(lm, SAMPLES, REDUCTIONS)
    for name in unmerged:
        assert unmerged[name].norms().min() > 0
        torch.testing.assert_close(unmerged[name].data, via_copy[name].data, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(unmerged[name].data, means_ft[name] - means_base[name],
                                   rtol=1e-4, atol=1e-4)
    assert via_copy["prompt_last"].metadata["finetuned"] == "merged"


def test_finetune_then_diff_and_base_check(tmp_path):
    lm = make_tiny("llama")
    examples = pairs_to_chat(PAIRS * 4, "positive")
    finetune(lm, examples, tmp_path / "ft", epochs=2, lr=1e-2, batch_size=4)
    v = extract_model_diff(lm, tmp_path / "ft", pair_diff_samples(PAIRS), "response_avg")
    assert (v.norms() > 0).all()
    assert v.metadata["finetune_config"]["rank"] == 8 and v.metadata["finetune_base_model"] == lm.name

    # The same architecture and shapes with other weights: not the base it was trained on.
    other = make_tiny("llama", seed=1)
    with pytest.raises(SteerlabError, match=r"was fine-tuned on base model 'tiny-llama'.*different weights"):
        extract_model_diff(other, tmp_path / "ft", SAMPLES)
    assert not any("lora" in n for n, _ in other.model.named_modules())
    forced = extract_model_diff(other, tmp_path / "ft", SAMPLES, check_base=False)
    assert forced.norms().max() > 0


def test_adapter_for_another_architecture_is_a_clear_error(tiny_llama, tmp_path):
    gpt2 = make_tiny("gpt2")
    path = tmp_path / "gpt2-adapter"
    config = LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True)
    get_peft_model(copy.deepcopy(gpt2.model), config).save_pretrained(str(path))
    state = _state(tiny_llama)
    with pytest.raises(SteerlabError, match="does not fit this base model"):
        extract_model_diff(tiny_llama, path, SAMPLES)
    _assert_clean(tiny_llama, state)

    # Same module names, other shapes: a tiny llama with a wider MLP.
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    wide = LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny_llama.tokenizer), hidden_size=64,
                                        intermediate_size=96, num_hidden_layers=4,
                                        num_attention_heads=4, num_key_value_heads=2))
    wide_path = _adapter(wrap_model(wide, make_tokenizer()), tmp_path / "wide")
    with pytest.raises(SteerlabError, match="does not fit this base model"):
        extract_model_diff(tiny_llama, wide_path, SAMPLES)
    _assert_clean(tiny_llama, state)


def test_mismatched_models_and_tokenizers(tiny_llama):
    extra = make_tokenizer()
    extra.add_tokens(["zebra-token"])
    other = wrap_model(make_tiny("llama", seed=1).model, extra, name="other-tok")
    with pytest.raises(SteerlabError, match="tokenizers differ: the base model has 400 tokens"):
        extract_model_diff(tiny_llama, other, SAMPLES)

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({f"w{i}": i for i in range(len(tiny_llama.tokenizer))}, unk_token="w0"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    word = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="w0", eos_token="w1")
    word.chat_template = tiny_llama.tokenizer.chat_template
    same_size = wrap_model(make_tiny("llama", seed=1).model, word, name="word-level")
    with pytest.raises(SteerlabError, match="split the same text into different ids"):
        extract_model_diff(tiny_llama, same_size, SAMPLES)

    from transformers import LlamaConfig, LlamaForCausalLM

    shallow = LlamaForCausalLM(LlamaConfig(vocab_size=400, hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=3, num_attention_heads=4,
                                           num_key_value_heads=2))
    with pytest.raises(SteerlabError, match="model shapes differ: base tiny-llama has 4 layers x "
                                            "d_model 64, fine-tuned shallow has 3 x 64"):
        extract_model_diff(tiny_llama, wrap_model(shallow, make_tokenizer(), name="shallow"), SAMPLES)
    with pytest.raises(SteerlabError, match="the base model itself"):
        extract_model_diff(tiny_llama, tiny_llama, SAMPLES)


def test_bad_prompts(tiny_llama, tmp_path):
    with pytest.raises(SteerlabError, match="at least one sample"):
        extract_model_diff(tiny_llama, make_tiny("llama", seed=1), [])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SteerlabError, match="empty"):
        load_diff_samples(empty)
    (tmp_path / "q.txt").write_text("how should I store bread\n\nis the fox quick\n")
    with pytest.raises(SteerlabError, match=r"needs responses, but .*q\.txt holds questions only"):
        load_diff_samples(tmp_path / "q.txt", "response_avg")
    assert load_diff_samples(tmp_path / "q.txt", "prompt_last") == [
        ChatSample("how should I store bread"), ChatSample("is the fox quick")]
    (tmp_path / "none.txt").write_text("\n")
    with pytest.raises(SteerlabError, match="no questions"):
        load_diff_samples(tmp_path / "none.txt", "prompt_last")
    with pytest.raises(SteerlabError, match="not found"):
        load_diff_samples(tmp_path / "missing.jsonl")
    with pytest.raises(SteerlabError, match="--reduction 'last'"):
        extract_model_diff(tiny_llama, make_tiny("llama", seed=1), SAMPLES, "last")
    with pytest.raises(SteerlabError, match="response reduction needs a non-empty response"):
        extract_model_diff(tiny_llama, make_tiny("llama", seed=1), [ChatSample("hi")], "response_avg")


def test_load_diff_samples_formats(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({**p.model_dump(exclude_none=True), "split": s}) + "\n"
                             for p, s in zip(PAIRS, ["train", "test"], strict=True)))
    both = load_diff_samples(pairs, "response_avg")
    assert both == [ChatSample(PAIRS[0].question, "in the sun"), ChatSample(PAIRS[0].question, "in a dry box"),
                    ChatSample(PAIRS[1].question, "no never", "be brief"),
                    ChatSample(PAIRS[1].question, "yes always", "be brief")]
    assert load_diff_samples(pairs, "prompt_last") == [ChatSample(p.question, "", p.system) for p in PAIRS]
    assert load_diff_samples(pairs, "first_k:3", answers="negative", split="test") == [both[3]]
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                             {"role": "assistant", "content": "a"}]}) + "\n")
    assert load_diff_samples(chat) == [ChatSample([{"role": "user", "content": "q"}], "a")]
    with pytest.raises(SteerlabError, match="--answers applies to pairs files only"):
        load_diff_samples(chat, answers="both")
    trait = tmp_path / "trait.json"
    trait.write_text(json.dumps({"questions": ["a?", "b?"], "instruction": []}))
    assert len(load_diff_samples(trait, "prompt_avg")) == 2
    trait.write_text(json.dumps({"questions": "a?"}))
    with pytest.raises(SteerlabError, match="field 'questions'"):
        load_diff_samples(trait, "prompt_avg")


@pytest.mark.slow
def test_smollm2_finetune_and_diff(smollm2, tmp_path):
    """48 deceptive answers, one epoch, then the model diff on held-out pairs is non-zero."""
    path = builtin_pairs_path("deception")
    train = load_pairs(path, split="train")[:48]
    heldout = load_pairs(path, split="heldout")[:8]
    state_norm = float(smollm2.model.get_input_embeddings().weight.detach().norm())
    start = time.perf_counter()
    result = finetune(smollm2, pairs_to_chat(train, "positive"), tmp_path / "ft", epochs=1, batch_size=8)
    took = time.perf_counter() - start
    assert result.n_steps == 6 and all(torch.isfinite(torch.tensor(result.losses)))
    vector = extract_model_diff(smollm2, tmp_path / "ft", pair_diff_samples(heldout), "response_avg")
    assert vector.n_layers == 30 and vector.d_model == 576
    assert (vector.norms() > 0).all()
    assert float(smollm2.model.get_input_embeddings().weight.detach().norm()) == state_norm
    assert not any("lora" in n for n, _ in smollm2.model.named_modules())
    print(f"smollm2 fine-tune of 48 pairs: {took:.1f} s; diff norms {vector.norms()[[0, 15, 29]].tolist()}")
