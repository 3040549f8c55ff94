import json
import time

import pytest
import torch
from tiny import make_tiny, make_tokenizer

from steerlab.activations.capture import ChatSample
from steerlab.errors import SteerlabError
from steerlab.extract.model_diff import (
    extract_model_diff,
    load_diff_samples,
    pair_diff_samples,
)
from steerlab.finetune.config import FinetuneConfig
from steerlab.finetune.training import run_finetune
from steerlab.formats.conversations import pairs_to_chat
from steerlab.formats.pairs import Pair, builtin_pairs_path, load_pairs
from steerlab.model.loading import wrap_model

SAMPLES = [
    ChatSample("how should I store fresh bread", "in a dry box"),
    ChatSample("drink water and rest", "see a doctor if the fever lasts", system="be brief"),
    ChatSample("the quick brown fox", "jumps over the lazy dog"),
    ChatSample(
        [
            {"role": "user", "content": "yes or no"},
            {"role": "assistant", "content": "maybe"},
            {"role": "user", "content": "answer"},
        ],
        "no",
    ),
]
PAIRS = [
    Pair(question="how should I store bread", positive="in the sun", negative="in a dry box"),
    Pair(question="is the fox quick", positive="no never", negative="yes always", system="be brief"),
]
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

    shallow = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=400,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    with pytest.raises(
        SteerlabError,
        match="model shapes differ: base tiny-llama has 4 layers x d_model 64, fine-tuned shallow has 3 x 64",
    ):
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
        ChatSample("how should I store bread"),
        ChatSample("is the fox quick"),
    ]
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
    pairs.write_text(
        "".join(
            json.dumps({**p.model_dump(exclude_none=True), "split": s}) + "\n"
            for p, s in zip(PAIRS, ["train", "test"], strict=True)
        )
    )
    both = load_diff_samples(pairs, "response_avg")
    assert both == [
        ChatSample(PAIRS[0].question, "in the sun"),
        ChatSample(PAIRS[0].question, "in a dry box"),
        ChatSample(PAIRS[1].question, "no never", "be brief"),
        ChatSample(PAIRS[1].question, "yes always", "be brief"),
    ]
    assert load_diff_samples(pairs, "prompt_last") == [ChatSample(p.question, "", p.system) for p in PAIRS]
    assert load_diff_samples(pairs, "first_k:3", answers="negative", split="test") == [both[3]]
    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n"
    )
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
    """16 deceptive answers, one epoch (two steps: what a real model's fine-tune needs to be shown to
    run; tiny models check the rest), then the model diff on held-out pairs is non-zero at every layer
    and the base model is left as it was."""
    path = builtin_pairs_path("deception")
    train = load_pairs(path, split="train")[:16]
    heldout = load_pairs(path, split="heldout")[:4]
    state_norm = float(smollm2.model.get_input_embeddings().weight.detach().norm())
    start = time.perf_counter()
    result = run_finetune(
        smollm2, pairs_to_chat(train, "positive"), tmp_path / "ft", FinetuneConfig(epochs=1, batch_size=8)
    )
    took = time.perf_counter() - start
    assert result.n_steps == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    vector = extract_model_diff(smollm2, tmp_path / "ft", pair_diff_samples(heldout), "response_avg")
    assert vector.n_layers == 30 and vector.d_model == 576
    assert (vector.norms() > 0).all()
    assert float(smollm2.model.get_input_embeddings().weight.detach().norm()) == state_norm
    assert not any("lora" in n for n, _ in smollm2.model.named_modules())
    print(f"smollm2 fine-tune of 16 pairs: {took:.1f} s; diff norms {vector.norms()[[0, 15, 29]].tolist()}")
