"""Bad input files through the command line: every command that reads a user's file, given one
that is truncated, empty, wrongly typed, non-UTF-8 or oddly named, exits with status 2 and ONE
``error:`` line naming the file (the reader's own message), never a traceback, and leaves nothing at
its --out path (docs/design.md §10). No model is loaded: a bad file fails before, and a file the damage left
valid meets a model spec that fails fast (a missing .gguf)."""

import json
import os
import warnings

import pytest
import torch
from bad_inputs import BAD_INPUT, LONG_NAME, damages, scratch, write
from cli_helpers import assert_user_error, invoke
from hypothesis import given
from hypothesis import strategies as st

from steerlab.errors import SteerlabError
from steerlab.evaluate.monitor import load_monitor_data
from steerlab.extract.model_diff import load_diff_samples
from steerlab.formats.conversations import load_chat_data
from steerlab.formats.pairs import load_pairs
from steerlab.formats.prompts import load_prompts
from steerlab.vectors.gguf import export_gguf, import_gguf
from steerlab.vectors.vector import SteeringVector

VECTOR = SteeringVector(torch.ones(3, 4), {"model": "tiny"})
PAIRS = json.dumps({"question": "q?", "positive": "oui, été", "negative": "no"}, ensure_ascii=False) + "\n"
CHAT = (
    json.dumps(
        {"messages": [{"role": "user", "content": "q é"}, {"role": "assistant", "content": "a"}]}, ensure_ascii=False
    )
    + "\n"
)
QUESTIONS = "How do I boil an egg?\nOù tombe la pluie ?\n"


def _vector_bytes(suffix):
    with scratch() as tmp:
        path = tmp / f"v{suffix}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            VECTOR.save(path) if suffix == ".safetensors" else export_gguf(VECTOR, path)
        return path.read_bytes()


SAFETENSORS, GGUF = _vector_bytes(".safetensors"), _vector_bytes(".gguf")


def _load_vector(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return SteeringVector.load(path)


# name: (input file name, its valid content, reader, args(tmp, bad, out), the --out path's name)
COMMANDS = {
    "extract contrastive": (
        "pairs.jsonl",
        PAIRS,
        load_pairs,
        lambda t, bad, out: ["extract", "contrastive", "-m", t / "missing.gguf", "-p", bad, "-o", out],
        "v.safetensors",
    ),
    "diff extract": (
        "questions.txt",
        QUESTIONS,
        lambda p: load_diff_samples(p, "prompt_last"),
        lambda t, bad, out: [
            "diff",
            "extract",
            "-m",
            t / "missing.gguf",
            "-f",
            t / "missing-ft",
            "--prompts",
            bad,
            "-r",
            "prompt_last",
            "-o",
            out,
        ],
        "diff.safetensors",
    ),
    # without --reduction: the command picks the reduction from the file, which must not crash either
    "diff extract (default reduction)": (
        "questions.txt",
        QUESTIONS,
        lambda p: load_diff_samples(p, "prompt_last"),
        lambda t, bad, out: [
            "diff",
            "extract",
            "-m",
            t / "missing.gguf",
            "-f",
            t / "missing-ft",
            "--prompts",
            bad,
            "-o",
            out,
        ],
        "diff.safetensors",
    ),
    "diff finetune": (
        "chat.jsonl",
        CHAT,
        load_chat_data,
        lambda t, bad, out: ["diff", "finetune", "-m", t / "missing.gguf", "-d", bad, "-o", out],
        "adapter",
    ),
    "import gguf": ("cv.gguf", GGUF, import_gguf, lambda t, bad, out: ["import", "gguf", bad, out], "v.safetensors"),
    "export gguf": (
        "v.safetensors",
        SAFETENSORS,
        _load_vector,
        lambda t, bad, out: ["export", "gguf", bad, out],
        "cv.gguf",
    ),
    "compare": (
        "b.safetensors",
        SAFETENSORS,
        _load_vector,
        lambda t, bad, out: ["compare", write(t / "a.safetensors", SAFETENSORS), bad, "--out", out],
        "compare",
    ),
    "sweep": (
        "questions.txt",
        QUESTIONS,
        load_prompts,
        lambda t, bad, out: [
            "sweep",
            "-m",
            t / "missing.gguf",
            "-v",
            write(t / "a.safetensors", SAFETENSORS),
            "-l",
            "1",
            "-c",
            "0,1",
            "-q",
            bad,
            "-o",
            out,
        ],
        "sweep",
    ),
    "sweep --pairs": (
        "pairs.jsonl",
        PAIRS,
        load_pairs,
        lambda t, bad, out: [
            "sweep",
            "-m",
            t / "missing.gguf",
            "-v",
            write(t / "a.safetensors", SAFETENSORS),
            "-l",
            "1",
            "-c",
            "0,1",
            "-q",
            write(t / "q.txt", QUESTIONS),
            "-p",
            bad,
            "-o",
            out,
        ],
        "sweep",
    ),
    "monitor": (
        "chat.jsonl",
        CHAT,
        load_monitor_data,
        lambda t, bad, out: [
            "monitor",
            "-m",
            t / "missing.gguf",
            "-v",
            write(t / "a.safetensors", SAFETENSORS),
            "-l",
            "1",
            "-d",
            bad,
            "-o",
            out,
        ],
        "projections.csv",
    ),
    "generate": (
        "prompts.txt",
        QUESTIONS,
        load_prompts,
        lambda t, bad, out: ["generate", "-m", t / "missing.gguf", "--prompts-file", bad, "-o", out],
        "gen.jsonl",
    ),
}


NO_MODEL = {"import gguf", "export gguf", "compare"}


def run_bad(name, tmp, bad):
    """Run command ``name`` on the file ``bad``: one error line, status 2, nothing at --out."""
    _, _, reader, args, out_name = COMMANDS[name]
    out = tmp / "out" / out_name
    try:
        reader(bad)
        expected = []  # the damage left the file valid: the missing model is the error
    except SteerlabError as exc:
        expected = [str(exc)]
    before = sorted(os.listdir(tmp))
    result = invoke(*args(tmp, bad, out))
    if not expected and name in NO_MODEL:  # still a valid file (e.g. bytes appended past the end): it ran
        assert result.exit_code == 0, result.output
        return result
    assert_user_error(result, *expected)
    assert not out.exists() and not out.parent.exists(), sorted(os.listdir(out.parent))
    assert sorted(p for p in os.listdir(tmp) if not p.startswith(("a.", "q."))) == sorted(
        p for p in before if not p.startswith(("a.", "q."))
    )  # no temp files either
    return result


@BAD_INPUT
@given(name=st.sampled_from(sorted(COMMANDS)), damage=damages())
def test_commands_on_damaged_files(name, damage):
    file_name, valid, *_ = COMMANDS[name]
    with scratch() as tmp:
        valid = valid.encode() if isinstance(valid, str) else valid
        run_bad(name, tmp, write(tmp / file_name, damage(valid)))


@pytest.mark.parametrize("kind", ["long name", "missing", "directory"])
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_commands_on_odd_paths(name, kind):
    file_name = COMMANDS[name][0]
    with scratch() as tmp:
        if kind == "long name":
            bad = tmp / (LONG_NAME + file_name)
        elif kind == "missing":
            bad = tmp / file_name
        else:
            bad = tmp / file_name
            bad.mkdir()
        result = run_bad(name, tmp, bad)
        reason = {"long name": "file name too long", "missing": "not found", "directory": "directory"}[kind]
        assert_user_error(result, reason)


def test_examples_before_and_after(tmp_path):
    """Before: tracebacks (UnicodeDecodeError, OSError [Errno 36]); after: one line each."""
    latin = write(tmp_path / "pairs.jsonl", PAIRS.encode("latin-1"))
    result = run_bad("extract contrastive", tmp_path, latin)
    assert f"error: pairs file {latin}: not UTF-8 text: byte 0xe9 at line 1" in result.output
    long = tmp_path / (LONG_NAME + ".gguf")
    result = run_bad("import gguf", tmp_path, long)
    assert "not a readable GGUF file (file name too long (305 bytes in one name" in result.output


def test_output_names_no_file_system_accepts(tmp_path):
    """A valid input and an --out name over 255 bytes: one error line, nothing written."""
    gguf_file = write(tmp_path / "cv.gguf", GGUF)
    out = tmp_path / (LONG_NAME + ".safetensors")
    result = invoke("import", "gguf", gguf_file, out)
    assert_user_error(result, "cannot write", "file name too long (312 bytes in one name")
    assert sorted(os.listdir(tmp_path)) == ["cv.gguf"]
    nested = tmp_path / LONG_NAME / "cv.gguf"
    assert_user_error(
        invoke("export", "gguf", write(tmp_path / "v.safetensors", SAFETENSORS), nested), "file name too long"
    )
    assert sorted(os.listdir(tmp_path)) == ["cv.gguf", "v.safetensors"]
