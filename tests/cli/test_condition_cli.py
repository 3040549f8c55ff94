"""`steerlab condition`, `steerlab extract condition` and the `--condition*` flags of generate: a
calibrated condition.json steers only the prompts that pass; bad flags fail with one line."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import assert_user_error, invoke

from steerlab.steering.condition_threshold import load_condition
from steerlab.vectors.vector import SteeringVector

POSITIVES = ["how should I store fresh bread so it stays soft", "the quick brown fox", "bread fox dog", "soft bread"]
NEGATIVES = ["0 1 2 3 4 5", "drink water rest", "always back up your files", "10 50 99 100"]
PROMPTS = [*POSITIVES, *NEGATIVES]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_dir):
    """Example files, a steering vector, a calibrated condition.json and the condition vector."""
    root = tmp_path_factory.mktemp("condition-cli")
    (root / "pos.txt").write_text("\n".join(POSITIVES) + "\n")
    (root / "neg.txt").write_text("\n".join(NEGATIVES) + "\n")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    gen = torch.Generator().manual_seed(1)
    SteeringVector(3 * torch.randn(4, 64, generator=gen)).save(root / "v.safetensors")
    result = invoke(
        "extract", "condition", "-m", tiny_dir, "--positive", root / "pos.txt", "--negative", root / "neg.txt",
        "-o", root / "cond.safetensors",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = invoke(
        "condition", "-m", tiny_dir, "-v", root / "cond.safetensors", "-l", "1-3",
        "--positive", root / "pos.txt", "--negative", root / "neg.txt", "-o", root / "cond.json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "condition: layer" in result.output
    return root


def _generate(tiny_dir, files, *flags):
    out = files / f"gens-{len(flags)}-{abs(hash(flags))}.jsonl"
    result = invoke(
        "generate", "-m", tiny_dir, "-v", files / "v.safetensors", "-l", "1", "-c", "4", "-n", "4",
        "--prompts-file", files / "prompts.txt", "-o", out, *flags,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_condition_json_gates_generate(tiny_dir, files):
    doc = json.loads((files / "cond.json").read_text())
    assert doc["format"] == "steerlab.condition/1" and doc["layer"] in (1, 2, 3)
    assert doc["threshold_source"] == "auto" and [r["layer"] for r in doc["layers"]] == [1, 2, 3]
    assert load_condition(files / "cond.json").threshold == doc["threshold"]
    gated = _generate(tiny_dir, files, "--condition", files / "cond.json")
    plain = _generate(tiny_dir, files)
    unsteered = _generate(tiny_dir, files, "-c", "0")
    met = [r["condition_met"] for r in gated]
    assert any(met) and not all(met)
    for g, p, u in zip(gated, plain, unsteered, strict=True):
        assert g["text"] == (p["text"] if g["condition_met"] else u["text"])
        assert g["condition_layer"] == doc["layer"] and g["condition_threshold"] == doc["threshold"]
    # the same from the condition vector file, with θ fitted on the example files
    auto = _generate(
        tiny_dir, files, "--condition", files / "cond.safetensors", "--condition-layer", str(doc["layer"]),
        "--condition-threshold", "auto", "--condition-positive", files / "pos.txt",
        "--condition-negative", files / "neg.txt",
    )  # fmt: skip
    assert [r["condition_met"] for r in auto] == met and auto[0]["condition_accuracy"] == doc["accuracy"]


def test_sweep_takes_the_condition_flags(tiny_dir, files, tmp_path):
    out = tmp_path / "sweep"
    result = invoke(
        "sweep", "-m", tiny_dir, "-v", files / "v.safetensors", "-l", "1", "-c", "2", "-n", "2",
        "-q", files / "prompts.txt", "--controls", "0", "-o", out, "--condition", files / "cond.json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    gated = _generate(tiny_dir, files, "--condition", files / "cond.json")
    assert [r["condition_met"] for r in rows] == [r["condition_met"] for r in gated]
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["config"]["condition"]["threshold"] == json.loads((files / "cond.json").read_text())["threshold"]
    assert meta["config"]["condition_layer"] == meta["config"]["condition"]["layer"]


def test_bad_condition_flags_fail_with_one_line(tiny_dir, files, tmp_path):
    doc = json.loads((files / "cond.json").read_text())
    base = ["generate", "-m", tiny_dir, "-v", files / "v.safetensors", "-l", "1", "-n", "2", "hello"]
    assert_user_error(invoke(*base, "--condition-threshold", "0.1"), "--condition-threshold: for a --condition only")
    assert_user_error(
        invoke(*base, "--condition", files / "cond.safetensors", "--condition-threshold", "0.1"),
        "needs --condition-layer",
    )
    assert_user_error(
        invoke(*base, "--condition", files / "cond.json", "--condition-threshold", "auto"),
        "give --condition-positive and --condition-negative",
    )
    assert_user_error(
        invoke(*base, "--condition", files / "cond.json", "--condition-threshold", "2"), "must be in [-1, 1]"
    )
    outside = doc["observed"][1] + 0.01
    assert_user_error(
        invoke(*base, "--condition", files / "cond.json", "--condition-threshold", str(outside)),
        "outside the similarities observed",
    )
    assert_user_error(
        invoke(*base, "--condition", files / "cond.json", "--condition-layer", str((doc["layer"] + 1) % 4)),
        f"holds the condition direction of layer {doc['layer']} only",
    )
    assert_user_error(
        invoke("generate", "-m", tiny_dir, "--condition", files / "cond.json", "hello"), "it needs --vector"
    )
    narrow = tmp_path / "narrow.safetensors"
    SteeringVector(torch.randn(4, 7)).save(narrow)
    assert_user_error(
        invoke(*base, "--condition", narrow, "--condition-layer", "1", "--condition-threshold", "0"),
        "condition vector: vector d_model 7",
    )
    assert_user_error(
        invoke(
            *base, "--condition", files / "cond.safetensors", "--condition-layer", "9", "--condition-threshold", "0"
        ),
        "--condition-layer 9 is out of range",
    )
    assert_user_error(invoke("condition", "-m", tiny_dir, "-l", "1"), "--positive FILE and --negative FILE")
    assert_user_error(
        invoke(
            "condition", "-m", tiny_dir, "--positive", files / "pos.txt", "--negative", files / "neg.txt",
            "--threshold", "0.1",
        ),
        "a given threshold is for one layer",
    )  # fmt: skip
    assert_user_error(
        invoke("condition", "-m", tiny_dir, "--examples", "cooking", "--positive", files / "pos.txt"),
        "not both",
    )
