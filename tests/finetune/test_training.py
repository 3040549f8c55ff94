"""run_finetune: trains an adapter, leaves the base model alone, writes atomically, resumes as a stage."""

import copy
import json
import os
import signal

import pytest
import torch
import torch.nn.functional as F
from finetune_data import EXAMPLES, MULTI
from peft import LoraConfig, PeftModel, get_peft_model

import steerlab.finetune.training as ft
from steerlab.errors import SteerlabError
from steerlab.finetune.collate import collate_train
from steerlab.finetune.config import FinetuneConfig
from steerlab.finetune.examples import IGNORE, TrainExample, build_example
from steerlab.finetune.fingerprint import read_finetune_info
from steerlab.finetune.targets import default_target_modules
from steerlab.finetune.training import batch_loss, run_finetune
from steerlab.model.loading import wrap_model

pytestmark = pytest.mark.usefixtures("one_thread")

PROBE = torch.tensor([[10, 20, 30, 40, 50, 60]])


def _logits(model, ids=PROBE):
    with torch.no_grad():
        return model(input_ids=ids).logits.clone()


def _snapshot(lm):
    return {k: v.clone() for k, v in lm.model.state_dict().items()}, lm.model.config.to_dict()


def _count_steps(monkeypatch):
    """Count training steps (calls of the loss) from here on."""
    calls = []
    real = ft.batch_loss

    def counted(model, batch):
        calls.append(1)
        return real(model, batch)

    monkeypatch.setattr(ft, "batch_loss", counted)
    return calls


def _interrupt_at(monkeypatch, step, how):
    calls = []
    real = ft.batch_loss

    def boom(model, batch):
        calls.append(1)
        if len(calls) == step:
            how()
        return real(model, batch)

    monkeypatch.setattr(ft, "batch_loss", boom)


def _raise_interrupt():
    raise KeyboardInterrupt


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
        per_token = F.cross_entropy(
            logits[0, :-1].detach(), torch.randint(0, 400, (len(ex.labels) - 1,)), reduction="none"
        )
        answer_ce = F.cross_entropy(logits[0, :-1].detach(), batch.labels[0, 1:].clamp(min=0), reduction="none")
        mixed = torch.where(predicts_answer, answer_ce, per_token * 0).sum()
        unmasked = collate_train([TrainExample(ex.input_ids, ex.input_ids)], 0)
        full, n_full = batch_loss(tiny_llama.model, unmasked)
    assert n == ex.n_trained - (ex.labels[0] != IGNORE)
    torch.testing.assert_close(ours, loss.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, mixed, rtol=1e-5, atol=1e-5)
    assert n_full > n and not torch.isclose(full, ours)


def test_finetune_trains_an_adapter_and_leaves_the_base_alone(tiny_llama, tmp_path):
    state, config = _snapshot(tiny_llama)
    before = _logits(tiny_llama.model)
    out = tmp_path / "ft"
    settings = FinetuneConfig(epochs=2, lr=5e-3, batch_size=4, seed=1)
    result = run_finetune(tiny_llama, EXAMPLES * 4, out, settings, source={"data": "inline"})
    # The base model is exactly as it was.
    assert torch.equal(_logits(tiny_llama.model), before)
    after_state, after_config = _snapshot(tiny_llama)
    assert after_state.keys() == state.keys() and all(torch.equal(state[k], after_state[k]) for k in state)
    assert after_config == config and not hasattr(tiny_llama.model, "peft_config")
    assert not tiny_llama.model.training

    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "stage.meta.json",
        "steerlab_finetune.json",
        "train_log.jsonl",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]  # no temp dirs, nothing beside it
    steps = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(steps) == result.n_steps == 10 and steps[-1]["step"] == 10
    assert [s["loss"] for s in steps] == pytest.approx(result.losses, abs=1e-5)
    info = read_finetune_info(out)
    assert info["base_model"] == tiny_llama.name and info["steerlab_version"]
    assert info["config"]["rank"] == 8 and info["config"]["target_modules"] == default_target_modules(tiny_llama)
    assert info["config"] == result.config and info["config"]["epochs"] == 2
    assert info["final_loss"] == pytest.approx(result.final_loss) and info["train_time_s"] > 0
    assert info["source"] == {"data": "inline"} and info["data"]["n_examples"] == 20
    assert result.losses[-1] < result.losses[0] and not result.reused
    meta = json.loads((out / "stage.meta.json").read_text())
    assert meta["stage"] == "finetune" and meta["config_hash"] == result.config_hash
    assert meta["final_loss"] == pytest.approx(result.final_loss)

    # The adapter changes the model's logits.
    tuned = PeftModel.from_pretrained(copy.deepcopy(tiny_llama.model), str(out)).eval()
    assert not torch.allclose(_logits(tuned), before, atol=1e-4)

    # Same seed, same run.
    again = run_finetune(tiny_llama, EXAMPLES * 4, tmp_path / "ft2", settings)
    assert again.losses == result.losses and again.config_hash == result.config_hash


def test_rerun_is_skipped_and_a_change_retrains(tiny_llama, tmp_path, monkeypatch):
    """The adapter directory is a stage: same config, data and base -> kept; any change -> retrained."""
    out = tmp_path / "ft"
    first = run_finetune(tiny_llama, EXAMPLES, out, FinetuneConfig(batch_size=2, lr=1e-3))
    weights = (out / "adapter_model.safetensors").read_bytes()
    steps = _count_steps(monkeypatch)

    kept = run_finetune(tiny_llama, EXAMPLES, out, FinetuneConfig(batch_size=2, lr=1e-3), source={"other": 1})
    assert steps == [] and kept.reused and kept.config_hash == first.config_hash
    assert (kept.final_loss, kept.losses, kept.n_steps, kept.n_examples, kept.config) == (
        first.final_loss,
        pytest.approx(first.losses, abs=1e-6),
        first.n_steps,
        first.n_examples,
        first.config,
    )
    assert (out / "adapter_model.safetensors").read_bytes() == weights

    changed = run_finetune(tiny_llama, EXAMPLES, out, FinetuneConfig(batch_size=2, lr=2e-3))
    assert len(steps) == 3 and not changed.reused and changed.config_hash != first.config_hash
    assert read_finetune_info(out)["config"]["lr"] == 2e-3
    assert (out / "adapter_model.safetensors").read_bytes() != weights

    other_data = run_finetune(tiny_llama, EXAMPLES[:4], out, FinetuneConfig(batch_size=2, lr=2e-3))
    assert len(steps) == 5 and not other_data.reused and read_finetune_info(out)["data"]["n_examples"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]


def test_killed_retrain_keeps_the_finished_adapter(tiny_llama, tmp_path, monkeypatch):
    """A kill while retraining with other settings loses nothing finished: the old adapter stays, whole
    and still marked done for its own settings."""
    out = tmp_path / "ft"
    run_finetune(tiny_llama, EXAMPLES, out, FinetuneConfig(batch_size=2))
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    _interrupt_at(monkeypatch, 2, _raise_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(tiny_llama, EXAMPLES, out, FinetuneConfig(batch_size=2, rank=4))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]
    steps = _count_steps(monkeypatch)
    assert run_finetune(tiny_llama, EXAMPLES, out, FinetuneConfig(batch_size=2)).reused and steps == []


def test_finetune_only_some_layers(tiny_llama, tmp_path):
    run_finetune(
        tiny_llama,
        EXAMPLES,
        tmp_path / "ft",
        FinetuneConfig(layers=[2, 3], target_modules="q_proj,v_proj", epochs=1, batch_size=5),
    )
    cfg = json.loads((tmp_path / "ft" / "adapter_config.json").read_text())
    assert cfg["layers_to_transform"] == [2, 3] and sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]
    tuned = PeftModel.from_pretrained(copy.deepcopy(tiny_llama.model), str(tmp_path / "ft"))
    names = {n for n, _ in tuned.named_modules() if n.endswith("lora_A")}
    assert names and all(".layers.2." in n or ".layers.3." in n for n in names)


def test_killed_run_leaves_nothing(tiny_llama, tmp_path, monkeypatch):
    before = _logits(tiny_llama.model)
    _interrupt_at(monkeypatch, 2, _raise_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(tiny_llama, EXAMPLES, tmp_path / "ft", FinetuneConfig(batch_size=2))
    assert list(tmp_path.iterdir()) == []
    assert torch.equal(_logits(tiny_llama.model), before)
    assert all(p.requires_grad for p in tiny_llama.model.parameters())
    assert not any("lora" in n for n, _ in tiny_llama.model.named_modules())


def test_sigterm_cleans_up(tiny_llama, tmp_path, monkeypatch):
    _interrupt_at(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        run_finetune(tiny_llama, EXAMPLES, tmp_path / "ft", FinetuneConfig(batch_size=1))
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == previous
    assert not any("lora" in n for n, _ in tiny_llama.model.named_modules())


def test_finetune_bad_input(tiny_llama, tmp_path):
    with pytest.raises(SteerlabError, match="at least one conversation"):
        run_finetune(tiny_llama, [], tmp_path / "a")
    with pytest.raises(SteerlabError, match=r"example 1: field 'messages': no assistant"):
        run_finetune(tiny_llama, [EXAMPLES[0], [{"role": "user", "content": "hi"}]], tmp_path / "a")
    with pytest.raises(SteerlabError, match="--target-modules: nope not found"):
        run_finetune(tiny_llama, EXAMPLES, tmp_path / "a", FinetuneConfig(target_modules="q_proj,nope"))
    with pytest.raises(SteerlabError, match="--layers 9 is out of range"):
        run_finetune(tiny_llama, EXAMPLES, tmp_path / "a", FinetuneConfig(layers=[9]))
    with pytest.raises(SteerlabError, match="--rank 0"):
        run_finetune(tiny_llama, EXAMPLES, tmp_path / "a", FinetuneConfig(rank=0))
    with pytest.raises(SteerlabError, match="no assistant tokens left"):
        run_finetune(tiny_llama, EXAMPLES, tmp_path / "a", FinetuneConfig(max_length=4))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SteerlabError, match="not a steerlab fine-tune directory"):
        run_finetune(tiny_llama, EXAMPLES, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(SteerlabError, match=r"--out .*file: exists and is not a directory"):
        run_finetune(tiny_llama, EXAMPLES, tmp_path / "file")
    assert not (tmp_path / "a").exists()
    # A model that already carries an adapter is refused: fine-tune a plain base.
    stacked = get_peft_model(copy.deepcopy(tiny_llama.model), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(SteerlabError, match="already carries an adapter"):
        run_finetune(wrap_model(stacked, tiny_llama.tokenizer, name="stacked"), EXAMPLES, tmp_path / "b")
    assert not (tmp_path / "b").exists()
