"""Flags with one meaning: the layer grammar on every layer flag (checked before any model loads),
coefficients and steering choices checked at parsing, one meaning per short flag, old long flags kept."""

import json

import pytest
import torch
import typer.main
from cli_helpers import assert_user_error, flat, invoke

from steerlab.cli import app
from steerlab.vectors.vector import SteeringVector

NO_MODEL = "no-such-model-xyz"  # loading it would fail with "unknown model": proves nothing loaded


@pytest.fixture
def files(tmp_path):
    vec = SteeringVector(torch.randn(4, 64)).save(tmp_path / "v.safetensors")
    vec2 = SteeringVector(torch.randn(4, 64)).save(tmp_path / "w.safetensors")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"question": "q", "positive": "p", "negative": "n", "split": split}) + "\n"
            for split in ("train", "heldout")
        )
    )
    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n"
    )
    questions = tmp_path / "q.txt"
    questions.write_text("how are you?\n")
    return {"vec": vec, "vec2": vec2, "pairs": pairs, "chat": chat, "questions": questions, "out": tmp_path / "out"}


# Every command with a layer flag, with the layer value as a placeholder, and the flag its messages name.
LAYER_COMMANDS = {
    "generate": (lambda f: ["generate", "-m", NO_MODEL, "-v", f["vec"], "LAYER", "hi"], "--layer"),
    "sweep": (
        lambda f: ["sweep", "-m", NO_MODEL, "-v", f["vec"], "LAYER", "-c", "1", "-q", f["questions"], "-o", f["out"]],
        "--layers",
    ),
    "monitor": (lambda f: ["monitor", "-m", NO_MODEL, "-v", f["vec"], "LAYER", "-d", f["chat"]], "--layer"),
    "diff finetune": (
        lambda f: ["diff", "finetune", "-m", NO_MODEL, "-d", f["chat"], "-o", f["out"], "LAYER"],
        "--layers",
    ),
    "diff study": (lambda f: ["diff", "study", "-m", NO_MODEL, "-p", f["pairs"], "-o", f["out"], "LAYER"], "--layers"),
    "compare": (lambda f: ["compare", f["vec"], f["vec2"], "-o", f["out"], "LAYER"], "--layer"),
}


def _args(command, files, flag, value):
    build, _ = LAYER_COMMANDS[command]
    args = build(files)
    i = args.index("LAYER")
    return [*args[:i], flag, value, *args[i + 1 :]]


@pytest.mark.parametrize("spelling", ["--layer", "--layers", "-l"])
@pytest.mark.parametrize("command", list(LAYER_COMMANDS))
@pytest.mark.parametrize("bad", ["ten", "1-", "3,,4"])
def test_bad_layer_string_fails_at_parsing_naming_the_flag(command, spelling, bad, files):
    result = invoke(*_args(command, files, spelling, bad))
    flag = LAYER_COMMANDS[command][1]
    assert_user_error(result, f"{flag} '{bad}'", "expected 'all'")
    assert "unknown model" not in result.output  # failed before any model load
    assert not files["out"].exists()


@pytest.mark.parametrize("command", [c for c in LAYER_COMMANDS if c != "compare"])
@pytest.mark.parametrize("good", ["all", "-1", "1-2,3"])
def test_good_layer_strings_pass_the_grammar(command, good, files):
    # the grammar accepts them, so the command goes on to load the (nonexistent) model
    assert_user_error(invoke(*_args(command, files, "-l", good)), "unknown model", NO_MODEL)


def test_compare_takes_one_layer_in_the_grammar(files):
    out = files["out"]
    args = [files["vec"], files["vec2"], "-o", out, "--n-random", "5"]
    result = invoke("compare", *args, "--layer", "-1")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "compare.json").read_text())["trait_matrix"]["layer"] == 3
    assert_user_error(invoke("compare", *args, "-l", "all"), "--layer 'all'", "takes one layer")
    assert_user_error(invoke("compare", *args, "-l", "9"), "--layer 9 is out of range", "each vector has 4 layers")


def test_range_is_checked_once_the_model_is_known(tiny_dir, files):
    result = invoke("generate", "-m", tiny_dir, "-v", files["vec"], "-l", "2-9", "hi")
    assert_user_error(result, "--layer 9 is out of range", "4 layers")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["-c", "abc"], ["--coeff 'abc'", "comma-separated numbers"]),
        (["--operator", "bogus"], ["--operator 'bogus'", "add, ablate, cap"]),
        (["--positions", "middle"], ["--positions 'middle'", "all, prompt, response"]),
        (["--scale", "huge"], ["--scale 'huge'", "raw, unit, relative"]),
    ],
)
def test_steering_options_checked_before_loading(args, needles, files):
    result = invoke("generate", "-m", NO_MODEL, "-v", files["vec"], "-l", "1", *args, "hi")
    assert_user_error(result, *needles)
    result = invoke(
        "sweep",
        "-m",
        NO_MODEL,
        "-v",
        files["vec"],
        "-l",
        "1",
        "-q",
        files["questions"],
        "-o",
        files["out"],
        *(["-c", "1"] if args[0] != "-c" else []),
        *args,
    )
    assert_user_error(result, *[n.replace("--coeff ", "--coeffs ") for n in needles])


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--operator", "cap", "--cap-percentile", "120"], ["--cap-percentile 120: expected a number in 0..100"]),
        (["--operator", "cap", "--cap-floor-percentile", "-5"], ["--cap-floor-percentile -5"]),
        (["--cap-percentile", "90"], ["--cap-percentile: for --operator cap only, not 'add'"]),
        (["--operator", "ablate", "--cap-ceiling", "1"], ["--cap-ceiling: for --operator cap only, not 'ablate'"]),
        (["--operator", "cap"], ["--operator cap needs a ceiling and/or a floor", "--cap-percentile"]),
        (
            ["--operator", "cap", "--cap-ceiling", "1", "--cap-percentile", "90"],
            ["give --cap-ceiling or --cap-percentile, not both"],
        ),
        (
            ["--operator", "cap", "--cap-ceiling", "1", "--reference-prompts", "Q"],
            ["--reference-prompts is used by --scale relative and --cap-percentile"],
        ),
    ],
)
def test_cap_flags_checked_before_loading(args, needles, files):
    args = [files["questions"] if a == "Q" else a for a in args]
    result = invoke("generate", "-m", NO_MODEL, "-v", files["vec"], "-l", "1", *args, "hi")
    assert_user_error(result, *needles)
    result = invoke(
        "sweep",
        "-m",
        NO_MODEL,
        "-v",
        files["vec"],
        "-l",
        "1",
        "-c",
        "1",
        "-q",
        files["questions"],
        "-o",
        files["out"],
        *args,
    )
    assert_user_error(result, *needles)
    assert not files["out"].exists()


def test_steering_flags_without_a_vector_fail(files):
    result = invoke("generate", "-m", NO_MODEL, "--operator", "cap", "--cap-percentile", "90", "hi")
    assert_user_error(result, "--cap-percentile: steering flags need --vector")


# --- one meaning per short flag ------------------------------------------------------------------

SHORT = {
    "-m": {"--model"},
    "-v": {"--vector"},
    "-l": {"--layer", "--layers"},
    "-c": {"--coeff", "--coeffs"},
    "-t": {"--trait"},
    "-o": {"--out"},
    "-f": {"--finetuned"},
    "-p": {"--pairs"},
    "-d": {"--data"},
    "-q": {"--questions"},
    "-r": {"--reduction", "--reductions"},
    "-j": {"--judge"},
    "-s": {"--system"},
    "-n": {"--max-new-tokens"},
    "-b": {"--batch-size"},
    "-e": {"--epochs"},
}


def _commands(command, path=()):
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield " ".join(path), command


def test_each_short_flag_means_one_thing_in_every_command():
    seen = {}
    for name, command in _commands(typer.main.get_command(app)):
        for param in command.params:
            opts = set(getattr(param, "opts", ()))
            for short in (o for o in opts if len(o) == 2):
                assert short in SHORT, f"{name}: {short} ({sorted(opts)}) has no agreed meaning"
                assert opts & SHORT[short], f"{name}: {short} means {sorted(opts)}, elsewhere {SHORT[short]}"
                seen.setdefault(short, set()).add(name)
    assert {"-m", "-v", "-l", "-c", "-t", "-o", "-f"} <= set(seen)


def test_seed_is_a_random_seed_in_every_command():
    for name, command in _commands(typer.main.get_command(app)):
        for param in command.params:
            if "--seed" in getattr(param, "opts", ()):
                # an integer everywhere; dataset build parses it itself to still read an old --seed FILE
                annotation = param.type_descriptor.annotation
                assert annotation is int or name == "dataset build", (name, annotation)


# --- renamed flags keep their old spelling ---------------------------------------------------------


def test_dataset_build_seed_file_and_old_seed_spelling(tmp_path):
    seeds = tmp_path / "seed.jsonl"
    seeds.write_text(json.dumps({"question": "How do I boil an egg?"}) + "\n")
    out = tmp_path / "pairs.jsonl"
    # new spelling: the file is --seed-file, --seed is the random seed
    result = invoke("dataset", "build", "-m", NO_MODEL, "--seed-file", seeds, "--seed", "3", "-o", out)
    assert_user_error(result, "unknown model")
    # old spelling: --seed FILE still works (an existing file, not an integer), with a note
    result = invoke("dataset", "build", "-m", NO_MODEL, "--seed", seeds, "--random-seed", "3", "-o", out)
    assert_user_error(result, "unknown model")
    assert "deprecated" in result.output and "--seed-file" in flat(result.output)
    assert_user_error(
        invoke("dataset", "build", "-m", NO_MODEL, "--seed", tmp_path / "nope.jsonl", "-o", out),
        "expected an integer random seed",
        "--seed-file",
    )
    assert_user_error(invoke("dataset", "build", "-m", NO_MODEL, "-o", out), "--seed-file is required")
    assert_user_error(
        invoke(
            "dataset", "build", "-m", NO_MODEL, "--seed-file", seeds, "--seed", "1", "--random-seed", "2", "-o", out
        ),
        "disagree",
    )
    assert not out.exists()


def test_resolve_seed_flags(tmp_path):
    from steerlab.cli.dataset import resolve_seed_flags

    seeds = tmp_path / "s.jsonl"
    seeds.write_text("{}\n")
    assert resolve_seed_flags("7", None, seeds) == (seeds, 7)
    assert resolve_seed_flags(None, 5, seeds) == (seeds, 5)
    assert resolve_seed_flags(None, None, seeds) == (seeds, 0)
    assert resolve_seed_flags(str(seeds), 4, None) == (seeds, 4)


@pytest.mark.parametrize(
    "args",
    [
        ["diff", "extract", "--base", NO_MODEL, "--finetuned", "ft", "--prompts", "P", "-o", "v.safetensors"],
        ["diff", "extract", "--model", NO_MODEL, "-f", "ft", "--prompts", "P", "-o", "v.safetensors"],
        ["diff", "study", "--base", NO_MODEL, "--pairs", "P", "-o", "OUT", "--layers", "1", "--coeffs", "1,2"],
        ["sweep", "-m", NO_MODEL, "-v", "V", "--layers", "1", "--coeffs", "1", "-q", "Q", "-o", "OUT"],
        ["generate", "-m", NO_MODEL, "--prompts-file", "Q", "--temperature", "0"],
        ["monitor", "-m", NO_MODEL, "-v", "V", "--layer", "1", "-d", "D", "--reductions", "prompt_last"],
    ],
)
def test_long_flags_that_existed_keep_working(args, files, tmp_path):
    paths = {
        "P": files["pairs"],
        "V": files["vec"],
        "Q": files["questions"],
        "D": files["chat"],
        "OUT": tmp_path / "run",
        "ft": tmp_path,
    }
    result = invoke(*[paths.get(a, a) for a in args])
    assert_user_error(result, "unknown model")  # parsed; failed only at the model


def test_steering_positions_of_the_studies_checked_before_loading(files):
    """``--steering-positions`` of ``diff study`` and ``persona extract`` (several traits) is checked
    at parsing; its default is the studies' own (StudyConfig / PersonaTraitsConfig)."""
    from steerlab.pipelines.persona_traits import PersonaTraitsConfig
    from steerlab.pipelines.study import StudyConfig

    result = invoke(
        "diff", "study", "-m", NO_MODEL, "-p", files["pairs"], "-o", files["out"], "--steering-positions", "middle"
    )
    assert_user_error(result, "--steering-positions 'middle'", "all, prompt, response")
    result = invoke(
        "persona",
        "extract",
        "-m",
        NO_MODEL,
        "-t",
        "evil",
        "-t",
        "humorous",
        "-o",
        files["out"],
        "--steering-positions",
        "middle",
    )
    assert_user_error(result, "--steering-positions 'middle'", "all, prompt, response")
    result = invoke(
        "persona", "extract", "-m", NO_MODEL, "-t", "evil", "-o", files["out"], "--steering-positions", "all"
    )
    assert_user_error(result, "--steering-positions: only with several traits")
    study = typer.main.get_command(app).commands["diff"].commands["study"]
    default = next(p.default for p in study.params if p.name == "steering_positions")
    assert default == StudyConfig().positions == PersonaTraitsConfig().positions == "response"
