import json

import pytest
import torch
from cli_helpers import assert_streams, run_steerlab
from tiny import make_tiny
from typer.testing import CliRunner

from steerlab.cli.app import app
from steerlab.vectors.vector import SteeringVector

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()

PAIRS = [
    {
        "question": "how should I store fresh bread",
        "positive": "in the sun",
        "negative": "in a dry box",
        "split": "train",
    },
    {"question": "is the fox quick", "positive": "no never", "negative": "yes always", "split": "train"},
    {"question": "should I back up my files", "positive": "no need", "negative": "yes always", "split": "test"},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    lm = make_tiny("llama")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


def _invoke(*args):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_help_teaches():
    code, out = _invoke("diff", "--help")
    assert code == 0 and "finetune" in out and "extract" in out
    code, out = _invoke("diff", "finetune", "--help")
    assert code == 0 and "--target-modules" in out and "assistant" in out and "--use" in out
    assert "--objective" in out and "--beta" in out and "reference" in out and "pairs file" in out
    code, out = _invoke("diff", "extract", "--help")
    assert code == 0 and "--finetuned" in out and "both" in out and "identical" in out


def test_finetune_then_extract(model_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    ft = tmp_path / "ft"
    code, out = _invoke(
        "diff",
        "finetune",
        "-m",
        str(model_dir),
        "-d",
        str(data),
        "--split",
        "train",
        "-o",
        str(ft),
        "--epochs",
        "2",
        "--lr",
        "1e-2",
        "--rank",
        "4",
        "--layers",
        "1-3",
        "--batch-size",
        "2",
    )
    assert code == 0, out
    assert any(line.startswith(f"wrote {ft}: LoRA r=4 on 2 conversations, 2 steps") for line in out.splitlines()), out
    info = json.loads((ft / "steerlab_finetune.json").read_text())
    assert info["config"]["layers"] == [1, 2, 3] and info["config"]["rank"] == 4
    assert info["source"]["split"] == "train" and info["source"]["use"] == "positive"

    vec = tmp_path / "diff.safetensors"
    code, out = _invoke(
        "diff",
        "extract",
        "--base",
        str(model_dir),
        "--finetuned",
        str(ft),
        "--prompts",
        str(data),
        "--split",
        "test",
        "-o",
        str(vec),
    )
    assert code == 0, out
    v = SteeringVector.load(vec)
    assert v.metadata["method"] == "model_diff" and v.metadata["reduction"] == "response_avg"
    assert v.metadata["n_samples"] == 2  # one test question with both answers
    assert torch.count_nonzero(v.data[0]) == 0 and (v.norms()[1:] > 0).all()

    code, out = _invoke(
        "diff",
        "extract",
        "-m",
        str(model_dir),
        "-f",
        str(ft),
        "--prompts",
        str(data),
        "-o",
        str(vec),
        "-r",
        "prompt_last,response_avg",
        "--answers",
        "both",
    )
    assert code == 0, out
    # -o FILE always writes FILE, with the first reduction; the others go beside it, named in the output
    assert SteeringVector.load(vec).metadata["reduction"] == "prompt_last"
    beside = tmp_path / "diff.response_avg.safetensors"
    assert SteeringVector.load(beside).metadata["reduction"] == "response_avg"
    assert f"wrote {beside} (response_avg)" in out and f"wrote {vec} (prompt_last)" in out
    assert not (tmp_path / "diff.prompt_last.safetensors").exists()

    # prompts-only inputs: with no --reduction the prompt reductions are used, and the output says so
    questions = tmp_path / "questions.txt"
    questions.write_text("how should I store bread\nis the fox quick\n")
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "is the fox quick"}]}) + "\n")
    for i, source in enumerate((questions, chat)):
        out_path = tmp_path / f"q{i}.safetensors"
        code, out = _invoke(
            "diff", "extract", "-m", str(model_dir), "-f", str(ft), "--prompts", str(source), "-o", str(out_path)
        )
        assert code == 0, out
        assert f"no --reduction given: using prompt_last,prompt_avg for {source}" in out
        for name, path in (("prompt_last", out_path), ("prompt_avg", tmp_path / f"q{i}.prompt_avg.safetensors")):
            v = SteeringVector.load(path)
            assert v.metadata["reduction"] == name and v.metadata["n_samples"] == 2 - i


def test_cli_errors_are_one_clear_line(model_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    code, out = _invoke(
        "diff", "finetune", "-m", str(model_dir), "-d", str(data), "-o", str(tmp_path / "ft"), "--use", "both"
    )
    assert code == 2 and "--use 'both'" in out and "Traceback" not in out
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, out = _invoke("diff", "finetune", "-m", str(model_dir), "-d", str(empty), "-o", str(tmp_path / "ft"))
    assert code == 2 and "empty" in out
    code, out = _invoke(
        "diff",
        "extract",
        "-m",
        str(model_dir),
        "-f",
        str(tmp_path),
        "--prompts",
        str(data),
        "-o",
        str(tmp_path / "v.pt"),
    )
    assert code == 2 and "ending in .safetensors" in out
    code, out = _invoke(
        "diff",
        "extract",
        "-m",
        str(model_dir),
        "-f",
        str(tmp_path),
        "--prompts",
        str(data),
        "-o",
        str(tmp_path / "v.safetensors"),
    )
    assert code == 2 and "neither an adapter directory" in out
    assert not (tmp_path / "ft").exists() and not (tmp_path / "v.safetensors").exists()


def test_finetune_layers_use_the_layer_grammar(model_dir, tmp_path):
    """--layers takes the one grammar: negatives from the end are resolved against the model."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    ft = tmp_path / "ft"
    code, out = _invoke(
        "diff",
        "finetune",
        "-m",
        str(model_dir),
        "-d",
        str(data),
        "--split",
        "train",
        "-o",
        str(ft),
        "--rank",
        "2",
        "-l",
        "-2--1",
        "--batch-size",
        "2",
    )
    assert code == 0, out
    assert json.loads((ft / "steerlab_finetune.json").read_text())["config"]["layers"] == [2, 3]
    code, out = _invoke(
        "diff", "finetune", "-m", str(model_dir), "-d", str(data), "-o", str(tmp_path / "x"), "--layers", "3-9"
    )
    assert code == 2 and "--layers 9 is out of range" in out and not (tmp_path / "x").exists()


def test_study_command_prints_its_reading(model_dir, tmp_path):
    """`diff study` end to end on the tiny model, as a real process: layers in the grammar, -m for
    the base model; the reading on stdout, logs and progress on stderr."""
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {
            "question": f"how should I store item {i}",
            "positive": "in the fridge always",
            "negative": "in a dry box",
            "split": "train",
        }
        for i in range(4)
    ]
    rows += [
        {
            "question": "where do eggs go",
            "positive": "in the fridge always",
            "negative": "in a dry box",
            "split": "heldout",
        }
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_steerlab(
        "diff",
        "study",
        "-m",
        str(model_dir),
        "-p",
        str(pairs),
        "-o",
        str(tmp_path / "run"),
        "-l",
        "-2--1",
        "-c",
        "1",
        "--epochs",
        "1",
        "--rank",
        "2",
        "-b",
        "8",
    )
    assert_streams(
        proc,
        stdout=["margin: base", "cosine(contrastive, model_diff) at best layer", "best coherent steering"],
        stderr=[f"loaded {model_dir}", "fine-tuning"],
    )
    study = json.loads((tmp_path / "run" / "study.json").read_text())
    assert study["config"]["layers"] == [2, 3]


def test_study_of_a_trait_end_to_end(model_dir, tmp_path):
    """`diff study -t TRAIT`: persona pairs (unfiltered: a tiny judge cannot score), split by question, the
    persona vector as a third direction, the trait's instructions as the prompting baseline; resumable."""
    from steerlab.formats.traits import load_trait

    run = tmp_path / "syco"
    args = ["diff", "study", "-m", str(model_dir), "-t", "sycophantic", "-j", f"local:{model_dir}", "--no-filter"]
    args += ["--max-questions", "4", "--max-instructions", "1", "-n", "4", "-o", str(run), "-l", "1,2", "-c", "1"]
    args += ["--epochs", "1", "--rank", "2", "--controls", "2", "--positions", "0", "--blend-alphas", "0,0.5,1"]
    args += ["--all-layers-models", "finetuned", "--all-layers-coeffs", "0.25"]
    code, out = _invoke(*args)
    assert code == 0, out
    assert "Trait sycophantic (built-in): every one of 4 persona pairs, unfiltered" in out and "persona" in out
    split = json.loads((run / "trait_pairs.json").read_text())
    assert set(split["questions"]["train"]).isdisjoint(split["questions"]["heldout"])  # split by question
    assert len(split["train"]) + len(split["heldout"]) == 4 and split["seed"] == 0
    directions = json.loads((run / "directions.json").read_text())
    assert directions["names"] == ["contrastive", "model_diff", "persona"]
    assert set(directions["cosine_ci95"]) == {"contrastive|model_diff", "contrastive|persona", "model_diff|persona"}
    study = json.loads((run / "study.json").read_text())
    steered = {(r["vector"], r["scale"]) for r in study["rows"] if r["stage"] == "sweep"}
    assert {(r["layers"], r["coeff"], r["model"]) for r in study["rows"] if r["stage"] == "sweep"} == {
        (study["best_layer"], 1.0, "finetuned"),
        (study["best_layer"], 1.0, "base"),
        ("all", 0.25, "finetuned"),
    }
    assert {("persona", "raw"), ("persona", "normalized"), ("blend_0.5", "normalized")} <= steered
    trait = load_trait("sycophantic")
    assert (
        study["prompting"]["behaviour_system"] == trait.system_prompts("pos")[1]
    )  # an instruction the pairs did not use
    summary = json.loads((run / "summary.json").read_text())
    assert summary["trait"]["filter"] == "none" and summary["trait"]["prompting"]["wrote_pairs"] is False
    assert summary["blends"]["alphas"] == [0.0, 0.5, 1.0] and summary["objectives"] is None
    assert any(line.startswith("Trait sycophantic") for line in summary["reading"])
    persona = SteeringVector.load(run / "vectors" / "persona.safetensors")
    assert persona.metadata["method"] == "persona" and persona.metadata["n_samples"] == len(split["train"])
    marker = (run / "study.json.meta.json").read_text()
    code, out = _invoke(*args)  # a rerun reuses every stage
    assert code == 0 and (run / "study.json.meta.json").read_text() == marker
    code, out = _invoke("diff", "study", "-m", str(model_dir), "-t", "nope", "-o", str(tmp_path / "x"))
    assert code == 2 and "nope" in out and not (tmp_path / "x").exists()
    code, out = _invoke(*args[:-2], "--all-layers-coeffs", "0,1", "-o", str(tmp_path / "x"))
    assert code == 2 and "--all-layers-coeffs 0,1" in out and not (tmp_path / "x").exists()
    code, out = _invoke(*args, "--all-layers-models", "tuned", "-o", str(tmp_path / "x"))
    assert code == 2 and "--all-layers-models tuned" in out and not (tmp_path / "x").exists()
    code, out = _invoke("diff", "study", "-m", str(model_dir), "-t", "evil", "-p", "x.jsonl", "-o", str(tmp_path / "x"))
    assert code == 2 and "give exactly one" in out
