"""The command line: info, extract contrastive, export/import gguf, and bad input."""

import json
import os

import pytest
import torch
from cli_helpers import assert_user_error, flat, invoke

import steerlab.cli  # noqa: F401 - registers the commands
from steerlab import SteeringVector, extract_contrastive, load_model, load_pairs

PAIRS = [
    {
        "question": "Is the stove off?",
        "positive": "Yes, it is all off.",
        "negative": "I did not check.",
        "split": "train",
    },
    {
        "question": "how should I store fresh bread",
        "positive": "in the fridge always",
        "negative": "in a bread box",
        "system": "Answer briefly.",
        "split": "train",
    },
    {"question": "Did you back up the files?", "positive": "yes", "negative": "no, I forgot", "split": "test"},
]


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return path


@pytest.mark.slow
def test_info_smollm2_json():
    result = invoke("info", "smollm2", "--json")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["n_layers"] == 30 and facts["d_model"] == 576
    assert facts["system_role"] is True and facts["model_type"] == "llama"


def test_info_table_and_json(tiny_dir):
    result = invoke("info", tiny_dir, "--json")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert (facts["n_layers"], facts["d_model"], facts["model_type"]) == (4, 64, "llama")
    table = invoke("info", tiny_dir)
    assert table.exit_code == 0 and "d_model" in table.output and "64" in table.output


def test_extract_contrastive_writes_vector(tiny_dir, pairs_file, tmp_path):
    out = tmp_path / "out" / "vec.safetensors"
    result = invoke(
        "extract", "contrastive", "-m", tiny_dir, "-p", pairs_file, "-o", out, "--split", "train", "-b", "1"
    )
    assert result.exit_code == 0, result.output
    assert flat(f"wrote {out}") in flat(result.output)
    vec = SteeringVector.load(out)
    assert vec.data.shape == (4, 64)
    assert vec.metadata["method"] == "contrastive" and vec.metadata["n_samples"] == 2
    assert vec.metadata["reduction"] == "response_avg"
    assert vec.metadata["config"] == {"pairs": str(pairs_file), "split": "train", "reduction": "response_avg"}
    # same numbers as the Python API
    expected = extract_contrastive(load_model(str(tiny_dir)), load_pairs(pairs_file, "train"))
    torch.testing.assert_close(vec.data, expected.data, rtol=0, atol=1e-5)
    assert os.listdir(out.parent) == ["vec.safetensors"]


def test_export_import_gguf_round_trip(tmp_path):
    data = torch.randn(5, 8)
    src = SteeringVector(data, {"model": "m", "method": "contrastive"}).save(tmp_path / "v.safetensors")
    gguf_path = tmp_path / "v.gguf"
    result = invoke("export", "gguf", src, gguf_path, "--model-hint", "llama")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "layer0(outputofblock0)" in flat(result.output)
    back = tmp_path / "back.safetensors"
    result = invoke("import", "gguf", gguf_path, back)
    assert result.exit_code == 0, result.output
    vec = SteeringVector.load(back)
    assert torch.equal(vec.data, data)
    assert vec.metadata["method"] == "contrastive" and vec.metadata["model_hint"] == "llama"


def test_no_args_shows_help():
    result = invoke()
    assert "extract" in result.output and "info" in result.output


def _bad_pairs(tmp_path, text):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("unknown_model", ["unknown model", "no-such-model-xyz"]),
        ("malformed_pairs", ["bad.jsonl:2", "invalid JSON"]),
        ("missing_field", ["bad.jsonl:1", "'negative'"]),
        ("empty_pairs", ["bad.jsonl", "is empty"]),
        ("missing_pairs", ["nope.jsonl", "not found"]),
        ("wrong_suffix", ["--out", "vec.pt", ".safetensors"]),
        ("bad_reduction", ["--reduction", "'mean'"]),
        ("prompt_reduction", ["--reduction prompt_last", "response_avg"]),
        ("bad_split", ["split 'dev'"]),
    ],
)
def test_extract_bad_input(case, needles, tiny_dir, pairs_file, tmp_path):
    model, pairs, out = str(tiny_dir), pairs_file, tmp_path / "vec.safetensors"
    extra = []
    if case == "unknown_model":
        model = "no-such-model-xyz"
    elif case == "malformed_pairs":
        pairs = _bad_pairs(tmp_path, json.dumps(PAIRS[0]) + '\n{"question": "q",\n')
    elif case == "missing_field":
        pairs = _bad_pairs(tmp_path, json.dumps({"question": "q", "positive": "p"}) + "\n")
    elif case == "empty_pairs":
        pairs = _bad_pairs(tmp_path, "\n")
    elif case == "missing_pairs":
        pairs = tmp_path / "nope.jsonl"
    elif case == "wrong_suffix":
        out = tmp_path / "vec.pt"
    elif case == "bad_reduction":
        extra = ["-r", "mean"]
    elif case == "prompt_reduction":
        extra = ["-r", "prompt_last", "--split", "test"]
    elif case == "bad_split":
        extra = ["--split", "dev"]
    before = sorted(os.listdir(tmp_path))
    result = invoke("extract", "contrastive", "-m", model, "-p", pairs, "-o", out, *extra)
    assert_user_error(result, *needles)
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == before  # no partial or temp files


def test_gguf_commands_bad_input(tmp_path):
    vec = SteeringVector(torch.randn(3, 4)).save(tmp_path / "v.safetensors")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"junk" * 20)
    before = sorted(os.listdir(tmp_path))
    cases = [
        (["export", "gguf", vec, tmp_path / "v.bin"], ["OUT", "v.bin", ".gguf"]),
        (
            ["export", "gguf", tmp_path / "nope.safetensors", tmp_path / "o.gguf"],
            ["vector file not found", "nope.safetensors"],
        ),
        (["export", "gguf", junk, tmp_path / "o.gguf"], ["junk.gguf", "not a readable GGUF"]),
        (["import", "gguf", junk, tmp_path / "o.safetensors"], ["junk.gguf", "not a readable GGUF"]),
        (["import", "gguf", junk, tmp_path / "o.gguf"], ["OUT", ".safetensors"]),
    ]
    for args, needles in cases:
        assert_user_error(invoke(*args), *needles)
    assert sorted(os.listdir(tmp_path)) == before


def test_error_message_with_brackets_printed_verbatim(tmp_path):
    # rich markup must not eat or choke on [..] in paths
    result = invoke("import", "gguf", tmp_path / "cv[v2].gguf", tmp_path / "out[final].txt")
    assert_user_error(result, "out[final].txt", ".safetensors")
