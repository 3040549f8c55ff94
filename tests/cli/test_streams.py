"""Results on stdout, everything else on stderr, shown through real pipes: each test runs
``python -m steerlab`` as a process whose stdout and stderr are separate pipes, with progress bars
forced on (they must stay on stderr). What a command was asked for (tables, readings, values, JSON)
is on stdout, so ``steerlab traits list | grep evil`` and ``steerlab compare ... > cosines.txt``
work; what happened (loaded, wrote, notes, warnings, progress) is on stderr. `info` is checked the
same way in test_output_width.py (with a long path, forced colours and a narrow COLUMNS), `diff
study`'s reading in test_diff.py; the multi-trait `persona extract` in test_persona_extract.py
(in-process, on the runner's separate stdout and stderr). Errors are one ``error:`` line on stderr
with exit status 2 (below, and test_bad_input_cli.py)."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import assert_streams, run_steerlab

import steerlab
from steerlab.formats.traits import list_traits, load_trait
from steerlab.vectors.vector import SteeringVector

BREAD = "how should I store bread"


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    """Two random vectors for the tiny llama ([4 layers, d_model 64])."""
    root = tmp_path_factory.mktemp("vectors")
    torch.manual_seed(0)
    return [SteeringVector(torch.randn(4, 64), {"method": "contrastive"}).save(root / f"{n}.safetensors") for n in "ab"]


def test_version_is_a_result():
    proc = run_steerlab("--version")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"steerlab {steerlab.__version__}\n", "")


def test_traits_list_and_show_print_to_stdout():
    proc = run_steerlab("traits", "list")
    assert_streams(proc, stdout=["evil", "eval questions"], stderr=["Any JSON file in this schema"])
    assert len([line for line in proc.stdout.splitlines() if "evil" in line]) == 1  # | grep evil
    listed = run_steerlab("traits", "list", "--json")
    assert [row["name"] for row in json.loads(listed.stdout)] == list_traits() and listed.stderr == ""
    trait = load_trait("evil")
    shown = run_steerlab("traits", "show", "evil")
    assert_streams(shown, stdout=[trait.questions[0], trait.instruction[0].pos[:40], "eval prompt"])
    assert shown.stderr == ""


def test_compare_prints_its_tables_on_stdout(vectors, tmp_path):
    proc = run_steerlab("compare", *vectors, "-o", tmp_path / "cmp", "--n-random", "20")
    assert_streams(proc, stdout=["cosine per layer", "a vs b", "trait matrix at layer 2"], stderr=["wrote"])
    assert (tmp_path / "cmp" / "compare.json").is_file()


def test_generate_prints_completions_on_stdout(tiny_dir, vectors):
    proc = run_steerlab("generate", "-m", tiny_dir, "-v", vectors[0], "-l", "1", "-c", "0,2", "-n", "2", BREAD)
    assert_streams(proc, stdout=[BREAD, "completion"], stderr=[f"loaded {tiny_dir}"])


def test_monitor_prints_projections_on_stdout(tiny_dir, vectors, tmp_path):
    data = tmp_path / "chat.jsonl"
    chat = [{"role": "user", "content": BREAD}, {"role": "assistant", "content": "in a box"}]
    data.write_text(json.dumps({"messages": chat}) + "\n")
    out = tmp_path / "proj.csv"
    proc = run_steerlab("monitor", "-m", tiny_dir, "-v", vectors[0], "-l", "1", "-d", data, "-o", out)
    assert_streams(proc, stdout=["projection on a.safetensors", "response_avg mean"], stderr=[f"wrote 1 rows to {out}"])
    assert out.is_file() and (tmp_path / "proj.summary.json").is_file()


def test_persona_monitor_prints_its_table_on_stdout(tiny_dir, vectors, tmp_path):
    out = tmp_path / "monitor.json"
    args = ("persona", "monitor", "-m", tiny_dir, "-t", "evil", "-v", vectors[0], "-l", "1", "--max-questions", "1")
    proc = run_steerlab(*args, "-n", "2", "-o", out)
    assert_streams(proc, stdout=["mean projection", "condition"], stderr=[f"wrote {out}"])
    assert out.is_file() and out.with_suffix(".html").is_file()


def test_sweep_prints_its_tables_on_stdout(tiny_dir, vectors, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"question": BREAD, "positive": "in the sun", "negative": "in a box"}) + "\n")
    questions = tmp_path / "q.txt"
    questions.write_text(BREAD + "\n")
    run = tmp_path / "sweep"
    args = ("sweep", "-m", tiny_dir, "-v", vectors[0], "-l", "1", "-c", "-1,1", "-q", questions, "-p", pairs)
    proc = run_steerlab(*args, "-n", "2", "--controls", "2", "-o", run)
    assert_streams(
        proc,
        stdout=["behaviour margin", "random band (p)"],
        stderr=[f"wrote 2 generations to {run / 'generations.jsonl'}", f"report: {run / 'report.html'}"],
    )


def test_persona_extract_prints_its_table_on_stdout(tiny_dir, tmp_path):
    run = tmp_path / "evil"
    args = ("persona", "extract", "-m", tiny_dir, "-t", "evil", "-j", f"local:{tiny_dir}", "-o", run)
    proc = run_steerlab(*args, "--max-questions", "1", "--max-instructions", "1", "-n", "2", "--no-filter")
    assert_streams(
        proc,
        stdout=["persona extract: evil", "pairs averaged"],
        stderr=["--no-filter: the vectors average all 1 pairs", f"response_avg: {run}"],
    )


def test_an_error_is_one_line_on_stderr_and_nothing_on_stdout():
    proc = run_steerlab("traits", "show", "no-such-trait")
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: unknown trait 'no-such-trait'"), line
