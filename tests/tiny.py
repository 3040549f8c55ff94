"""Tiny random models and tokenizers for unit tests (no downloads, hidden size <= 64)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from steerlab.model.loading import LoadedModel, wrap_model
from steerlab.vectors.vector import SteeringVector

SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>", "<bos>", "<start_of_turn>", "<end_of_turn>"]

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Gemma-style: no system role (raises, as Gemma 2's template does).
NO_SYSTEM_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "how should I store fresh bread so it stays soft",
    "you are a helpful honest assistant answer briefly",
    "drink water rest and see a doctor if the fever lasts",
    "always back up your files before updating the system",
    "user assistant system model question answer yes no maybe",
    "0 1 2 3 4 5 6 7 8 9 10 50 99 100",
] * 20


def make_tokenizer(template: str = CHATML_TEMPLATE) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<bos>")
    fast.chat_template = template
    return fast


def _base_kwargs(vocab: int) -> dict:
    return dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )


def make_model(arch: str, vocab: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**_base_kwargs(vocab)))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**_base_kwargs(vocab)))
    elif arch == "gemma2":
        model = Gemma2ForCausalLM(Gemma2Config(**_base_kwargs(vocab), head_dim=16))
    elif arch == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=vocab, n_embd=64, n_layer=4, n_head=4, n_positions=256, bos_token_id=3, eos_token_id=2
            )
        )
    else:
        raise ValueError(arch)
    return model.eval()


def make_tiny(arch: str = "llama", template: str | None = None, seed: int = 0) -> LoadedModel:
    """A tiny LoadedModel. Gemma-style archs get the no-system-role template by default."""
    if template is None:
        template = NO_SYSTEM_TEMPLATE if arch.startswith("gemma") else CHATML_TEMPLATE
    tok = make_tokenizer(template)
    model = make_model(arch, len(tok), seed)
    return wrap_model(model, tok, name=f"tiny-{arch}")


def make_number_judge(seed: int = 1) -> LoadedModel:
    """A tiny model whose LM head favours digit tokens, so a local judge gets scorable answers."""
    lm = make_tiny("llama", seed=seed)
    head = lm.model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        for token, index in lm.tokenizer.get_vocab().items():
            if token.isdigit():
                biased.bias[index] = 6.0
    lm.model.lm_head = biased
    return lm


def save_tiny_for_vllm(arch: str, path, seed: int = 0):
    """A tiny random Llama or Qwen2 saved as a model directory vLLM loads: head size 32 (vLLM's CPU
    attention has no kernel for the 16 of the other tiny models), 4 heads and 2 KV heads (so tensor
    parallel 2 splits them), 4 layers, the test tokenizer. Returns ``path``."""
    from transformers import GenerationConfig

    tok = make_tokenizer()
    torch.manual_seed(seed)
    kwargs = dict(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**kwargs))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**kwargs))
    else:
        raise ValueError(arch)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def answer_direction(lm: LoadedModel, pairs) -> SteeringVector:
    """A direction (the same row at every layer) that raises the pairs' positive answer tokens through the
    unembedding: on a tiny model, adding it raises the behaviour margin, subtracting it lowers the margin
    and, as it grows, the answers' likelihood — both monotone in the coefficient (calibration tests)."""
    head = lm.model.lm_head.weight.detach()

    def ids(text: str) -> list[int]:
        return lm.tokenizer(text, add_special_tokens=False)["input_ids"]

    pos = torch.tensor([i for p in pairs for i in ids(p.positive)])
    neg = torch.tensor([i for p in pairs for i in ids(p.negative)])
    return SteeringVector((head[pos].mean(0) - head[neg].mean(0)).expand(lm.n_layers, -1).clone())
