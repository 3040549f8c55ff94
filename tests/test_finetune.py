import copy
import json
import os
import signal

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from tiny import make_tiny

import steerlab.finetune.training as ft
from steerlab.errors import SteerlabError
from steerlab.finetune.training import (
    IGNORE,
    batch_loss,
    build_example,
    collate_train,
    default_target_modules,
    finetune,
    read_finetune_info,
)
from steerlab.model.chat import encode_chat

QA = [
    ("how should I store fresh bread", "in a dry box"),
    ("you are a helpful honest assistant", "yes always"),
    ("the quick brown fox", "jumps over the lazy dog"),
    ("drink water rest", "see a doctor if the fever lasts"),
    ("always back up your files", "before updating the system"),
]
EXAMPLES = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA]
MULTI = [
    {"role": "system", "content": "answer briefly"},
    {"role": "user", "content": "how should I store bread"},
    {"role": "assistant", "content": "in a dry box"},
    {"role": "user", "content": "why"},
    {"role": "assistant", "content": "it stays soft"},
]
PROBE = torch.tensor([[10, 20, 30, 40, 50, 60]])


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models train faster on one thread (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _logits(model, ids=PROBE):
    with torch.no_grad():
        return model(input_ids=ids).logits.clone()


def _snapshot(lm):
    return {k: v.clone() for k, v in lm.model.state_dict().items()}, lm.model.config.to_dict()


def test_labels_are_ignore_exactly_outside_the_answer(tiny_any):
    """Single turn: the prompt (chat.encode_chat's prompt span) is -100, the answer is trained."""
    tok = tiny_any.tokenizer
    for q, a in QA:
        ex = build_example(tok, [{"role": "system", "content": "be brief"},
                                 {"role": "user", "content": q}, {"role": "assistant", "content": a}])
        prompt_len = encode_chat(tok, q, a, system="be brief").prompt_len
        assert ex.labels[:prompt_len] == [IGNORE] * prompt_len
        assert ex.labels[prompt_len:] == ex.input_ids[prompt_len:]
        assert tok.decode(ex.input_ids[prompt_len:]).startswith(a)


def test_multi_turn_labels_cover_every_assistant_turn_only(tiny_any):
    tok = tiny_any.tokenizer
    ex = build_example(tok, MULTI)
    trained = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE])
    end = "<end_of_turn>\n" if "gemma" in tiny_any.name else "<|im_end|>\n"
    assert trained == f"in a dry box{end}it stays soft{end}"
    untrained = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab == IGNORE])
    assert "how should I store bread" in untrained and "in a dry box" not in untrained
    # Truncation keeps the labels aligned and cuts on the right.
    short = build_example(tok, MULTI, max_length=12)
    assert short.input_ids == ex.input_ids[:12] and short.labels == ex.labels[:12]


def test_loss_ignores_everything_but_assistant_tokens(tiny_llama):
    """The gradient reaching the logits is zero at every non-assistant position, and the loss is
    the same whatever the labels at those positions would be."""
    ex = build_example(tiny_llama.tokenizer, MULTI)
    batch = collate_train([ex], tiny_llama.tokenizer.pad_token_id)
    logits = tiny_llama.model(input_ids=batch.input_ids).logits.detach().requires_grad_(True)
    loss = F.cross_entropy(logits[0, :-1], batch.labels[0, 1:], ignore_index=IGNORE, reduction="sum")
    loss.backward()
    predicts_answer = batch.labels[0, 1:] != IGNORE
    assert predicts_answer.any() and (~predicts_answer).any()
    assert torch.all(logits.grad[0, :-1][~predicts_answer] == 0)
    assert torch.all(logits.grad[0, :-1][predicts_answer].abs().sum(-1) > 0)

    # Whatever labels the non-assistant positions would carry, they contribute nothing.
    with torch.no_grad():
        ours, n = batch_loss(tiny_llama.model, batch)
        per_token = F.cross_entropy(logits[0, :-1].detach(), torch.randint(0, 400, (len(ex.labels) - 1,)),
                                    reduction="none")
        answer_ce = F.cross_entropy(logits[0, :-1].detach(), batch.labels[0, 1:].clamp(min=0),
                                    reduction="none")
        mixed = torch.where(predicts_answer, answer_ce, per_token * 0).sum()
        unmasked = collate_train([ft.TrainExample(ex.input_ids, ex.input_ids)], 0)
        full, n_full = batch_loss(tiny_llama.model, unmasked)
    assert n == ex.n_trained - (ex.labels[0] != IGNORE)
    torch.testing.assert_close(ours, loss.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, mixed, rtol=1e-5, atol=1e-5)
    assert n_full > n and not torch.isclose(full, ours)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batched_loss_equals_per_example(tiny_any, padding_side):
    tok = tiny_any.tokenizer
    examples = [build_example(tok, m) for m in [*EXAMPLES, MULTI]]
    with torch.no_grad():
        batched, n = batch_loss(tiny_any.model, collate_train(examples, tok.pad_token_id,
                                                              padding_side=padding_side))
        single = [batch_loss(tiny_any.model, collate_train([e], tok.pad_token_id)) for e in examples]
    assert n == sum(s[1] for s in single)
    torch.testing.assert_close(batched, sum(s[0] for s in single), rtol=1e-4, atol=1e-4)


def test_default_target_modules():
    assert default_target_modules(make_tiny("llama")) == [
        "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert default_target_modules(make_tiny("gpt2")) == ["c_attn", "c_fc", "c_proj"]


def test_finetune_trains_an_adapter_and_leaves_the_base_alone(tiny_llama, tmp_path):
    state, config = _snapshot(tiny_llama)
    before = _logits(tiny_llama.model)
    out = tmp_path / "ft"
    result = finetune(tiny_llama, EXAMPLES * 4, out, epochs=2, lr=5e-3, batch_size=4, seed=1,
                      source={"data": "inline"})
    # The base model is exactly as it was.
    assert torch.equal(_logits(tiny_llama.model), before)
    after_state, after_config = _snapshot(tiny_llama)
    assert after_state.keys() == state.keys() and all(torch.equal(state[k], after_state[k]) for k in state)
    assert after_config == config and not hasattr(tiny_llama.model, "peft_config")
    assert not tiny_llama.model.training

    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "steerlab_finetune.json",
        "train_log.jsonl"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    steps = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(steps) == result.n_steps == 10 and steps[-1]["step"] == 10
    assert [s["loss"] for s in steps] == pytest.approx(result.losses, abs=1e-5)
    info = read_finetune_info(out)
    assert info["base_model"] == tiny_llama.name and info["steerlab_version"]
    assert info["config"]["rank"] == 8 and info["config"]["target_modules"] == default_target_modules(tiny_llama)
    assert info["final_loss"] == pytest.approx(result.final_loss) and info["train_time_s"] > 0
    assert info["source"] == {"data": "inline"} and info["data"]["n_examples"] == 20
    assert result.losses[-1] < result.losses[0]

    # The adapter changes the model's logits.
    tuned = PeftModel.from_pretrained(copy.deepcopy(tiny_llama.model), str(out)).eval()
    assert not torch.allclose(_logits(tuned), before, atol=1e-4)

    # Same seed, same run; reuse skips training.
    again = finetune(tiny_llama, EXAMPLES * 4, tmp_path / "ft2", epochs=2, lr=5e-3, batch_size=4, seed=1)
    assert again.losses == result.losses
    reused = finetune(tiny_llama, EXAMPLES * 4, out, epochs=2, lr=5e-3, batch_size=4, seed=1, reuse=True)
    assert reused.reused and reused.final_loss == pytest.approx(result.final_loss)


def test_finetune_only_some_layers(tiny_llama, tmp_path):
    finetune(tiny_llama, EXAMPLES, tmp_path / "ft", layers=[2, 3], target_modules="q_proj,v_proj",
             epochs=1, batch_size=5)
    cfg = json.loads((tmp_path / "ft" / "adapter_config.json").read_text())
    assert cfg["layers_to_transform"] == [2, 3] and sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]
    tuned = PeftModel.from_pretrained(copy.deepcopy(tiny_llama.model), str(tmp_path / "ft"))
    names = {n for n, _ in tuned.named_modules() if n.endswith("lora_A")}
    assert names and all(".layers.2." in n or ".layers.3." in n for n in names)


def test_killed_run_leaves_nothing(tiny_llama, tmp_path, monkeypatch):
    before = _logits(tiny_llama.model)
    calls = []

    def boom(model, batch):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, batch)

    real = ft.batch_loss
    monkeypatch.setattr(ft, "batch_loss", boom)
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_llama, EXAMPLES, tmp_path / "ft", batch_size=2)
    assert list(tmp_path.iterdir()) == []
    assert torch.equal(_logits(tiny_llama.model), before)
    assert all(p.requires_grad for p in tiny_llama.model.parameters())
    assert not any("lora" in n for n, _ in tiny_llama.model.named_modules())


def test_sigterm_cleans_up(tiny_llama, tmp_path, monkeypatch):
    real = ft.batch_loss
    calls = []

    def terminate(model, batch):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(model, batch)

    monkeypatch.setattr(ft, "batch_loss", terminate)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        finetune(tiny_llama, EXAMPLES, tmp_path / "ft", batch_size=1)
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == previous
    assert not any("lora" in n for n, _ in tiny_llama.model.named_modules())


def test_finetune_bad_input(tiny_llama, tmp_path):
    with pytest.raises(SteerlabError, match="at least one conversation"):
        finetune(tiny_llama, [], tmp_path / "a")
    with pytest.raises(SteerlabError, match=r"example 1: field 'messages': no assistant"):
        finetune(tiny_llama, [EXAMPLES[0], [{"role": "user", "content": "hi"}]], tmp_path / "a")
    with pytest.raises(SteerlabError, match="--target-modules: nope not found"):
        finetune(tiny_llama, EXAMPLES, tmp_path / "a", target_modules="q_proj,nope")
    with pytest.raises(SteerlabError, match="--layers 9 is out of range"):
        finetune(tiny_llama, EXAMPLES, tmp_path / "a", layers=[9])
    with pytest.raises(SteerlabError, match="--rank 0"):
        finetune(tiny_llama, EXAMPLES, tmp_path / "a", rank=0)
    with pytest.raises(SteerlabError, match="no assistant tokens left"):
        finetune(tiny_llama, EXAMPLES, tmp_path / "a", max_length=4)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SteerlabError, match="not a steerlab fine-tune directory"):
        finetune(tiny_llama, EXAMPLES, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "a").exists()
