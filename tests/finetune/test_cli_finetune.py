"""`steerlab diff finetune`: a rerun keeps the finished adapter, other settings retrain it."""

import json

import pytest
from cli_helpers import assert_user_error, flat, invoke
from finetune_data import EXAMPLES

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
