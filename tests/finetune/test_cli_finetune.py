"""`steerlab diff finetune`: a rerun keeps the finished adapter, other settings retrain it."""

import json

import pytest
from cli_helpers import assert_user_error, flat, invoke
from finetune_data import EXAMPLES, PAIRS

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


def test_rerun_keeps_the_adapter_and_other_settings_retrain(tiny_dir, tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in EXAMPLES))
    out = tmp_path / "ft"
    common = ("diff", "finetune", "-m", tiny_dir, "-d", data, "-o", out, "-b", "5", "--max-grad-norm", "0")
    first = invoke(*common)
    assert first.exit_code == 0, first.output
    assert "wrote" in first.output and flat("5 conversations, 1 steps") in flat(first.output)
    info = json.loads((out / "steerlab_finetune.json").read_text())
    assert info["config"]["max_grad_norm"] == 0 and info["config"]["weight_decay"] == 0
    again = invoke(*common, "--reuse")  # the old flag is still accepted
    assert again.exit_code == 0 and flat("already holds this fine-tune") in flat(again.output)
    retrained = invoke(*common, "--weight-decay", "0.1")
    assert retrained.exit_code == 0 and "wrote" in retrained.output
    assert json.loads((out / "steerlab_finetune.json").read_text())["config"]["weight_decay"] == 0.1
    assert_user_error(invoke(*common, "--layers", "7"), "--layers 7 is out of range")


def test_dpo_on_pairs_and_only_on_pairs(tiny_dir, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({**p, "split": "train"}) + "\n" for p in PAIRS))
    out = tmp_path / "dpo"
    common = ("diff", "finetune", "-m", tiny_dir, "-d", pairs, "-o", out, "-b", "5", "--objective", "dpo")
    first = invoke(*common, "--beta", "0.2", "--split", "train")
    assert first.exit_code == 0, first.output
    assert flat("DPO (beta 0.2) LoRA r=8 on 5 pairs, 1 steps") in flat(first.output)
    assert "reward margin" in first.output
    info = json.loads((out / "steerlab_finetune.json").read_text())
    assert info["config"]["objective"] == "dpo" and info["config"]["beta"] == 0.2
    assert "reward_margin" in info["epochs"][0] and info["source"]["split"] == "train"
    again = invoke(*common, "--beta", "0.2", "--split", "train")
    assert again.exit_code == 0 and flat("already holds this fine-tune") in flat(again.output)

    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": m}) + "\n" for m in EXAMPLES))
    bad = ("diff", "finetune", "-m", tiny_dir, "-o", tmp_path / "x")
    assert_user_error(invoke(*bad, "-d", chat, "--objective", "dpo"), "--objective dpo needs a pairs file", "chat data")
    assert_user_error(invoke(*bad, "-d", pairs, "--objective", "ppo"), "--objective 'ppo': expected one of sft, dpo")
    assert_user_error(invoke(*bad, "-d", pairs, "--objective", "dpo", "--beta", "0"), "--beta 0.0: out of range")
    assert not (tmp_path / "x").exists()
