"""`steerlab calibrate` and `--coeff auto` on generate and sweep: calibration.json is written, read, refused
when made for another model or vector, and made on the fly from --pairs; bad input is one clear error."""

import json

import pytest
from cli_helpers import assert_user_error, invoke

from steerlab.model.loading import load_model
from steerlab.pipelines.calibration_auto import generate_coeffs, sweep_coeffs

PAIRS = [
    ("how should I store bread", "in the fridge", "in a bread box"),
    ("yes or no", "no", "yes maybe"),
    ("is water wet", "never", "it makes things wet"),
    ("what is the answer", "no no no", "yes it is"),
    ("should I back up files", "no never", "always back up your files"),
    ("is the fox quick", "no it is lazy", "yes the quick brown fox"),
]


@pytest.fixture(scope="module")
def setup(tiny_dir, tmp_path_factory):
    """The tiny model directory, a pairs file, a direction that steers them (see test_calibration) and
    a calibration of it at layers 1 and 2 (subtract, fluency bound 0.05 nats/token)."""
    from tiny import answer_direction

    from steerlab.formats.pairs import Pair

    root = tmp_path_factory.mktemp("calibrate-cli")
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"question": q, "positive": p, "negative": n}) + "\n" for q, p, n in PAIRS))
    lm = load_model(str(tiny_dir))
    vector = answer_direction(lm, [Pair(question=q, positive=p, negative=n) for q, p, n in PAIRS]).save(
        root / "v.safetensors"
    )
    out = root / "cal"
    result = invoke(
        "calibrate", "-m", tiny_dir, "-v", vector, "-p", pairs, "-l", "1,2", "--direction", "subtract",
        "--controls", "4", "--max-fluency-drop", "0.05", "-o", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {"model": tiny_dir, "pairs": pairs, "vector": vector, "out": out, "output": result.output, "root": root}


def test_calibrate_writes_calibration_json_and_its_plot(setup):
    doc = json.loads((setup["out"] / "calibration.json").read_text())
    assert (setup["out"] / "calibration.html").read_text().count("plotly") > 0
    assert [(t["layer"], t["direction"]) for t in doc["tracks"]] == [(1, "subtract"), (2, "subtract")]
    assert doc["model"] == str(setup["model"]) and len(doc["vector"]["sha256"]) == 64
    assert doc["pairs"]["n"] == len(PAIRS) and doc["vector"]["file"] == str(setup["vector"])
    rec = doc["recommended"]
    assert rec is not None and rec["direction"] == "subtract" and rec["range"][0] > rec["range"][1]  # negative
    # 4 controls cannot reach 0.05: the criterion says so, as does the table's title
    assert not doc["criterion"]["reaches_alpha"] and "outside all 4 random directions" in doc["criterion"]["effective"]
    out = " ".join(setup["output"].split())
    assert "recommended: layer" in out and "c_min" in out and "outside all 4 random directions" in out


def test_generate_coeff_auto_reads_the_calibration(setup, tmp_path):
    doc = json.loads((setup["out"] / "calibration.json").read_text())
    gens = tmp_path / "gens.jsonl"
    result = invoke(
        "generate", "-m", setup["model"], "-v", setup["vector"], "-c", "auto", "--calibration", setup["out"],
        "-n", "2", "-o", gens, "how should I store bread",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in gens.read_text().splitlines()]
    layer, coeffs = generate_coeffs(doc, setup["out"], None, "raw")
    assert layer == doc["recommended"]["layer"] and len(coeffs) == 3
    assert [r["coeff"] for r in rows] == pytest.approx(coeffs)  # c_max, their geometric mean, c_min (negative)
    assert coeffs[0] == pytest.approx(doc["recommended"]["range"][1]) and coeffs[2] == pytest.approx(
        doc["recommended"]["range"][0]
    )
    assert {r["layer"] for r in rows} == {str(layer)} and {r["positions"] for r in rows} == {"response"}
    assert rows[0]["calibration"] == str(setup["out"])
    # another scale: the same interventions in its units
    unit = tmp_path / "unit.jsonl"
    result = invoke(
        "generate", "-m", setup["model"], "-v", setup["vector"], "-c", "auto", "--calibration", setup["out"],
        "--scale", "unit", "-n", "2", "-o", unit, "how should I store bread",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["coeff"] for x in unit.read_text().splitlines()] == pytest.approx(
        generate_coeffs(doc, setup["out"], None, "unit")[1]
    )


def test_sweep_coeffs_auto_sweeps_each_layer_over_its_range(setup, tmp_path):
    doc = json.loads((setup["out"] / "calibration.json").read_text())
    out = tmp_path / "sweep"
    result = invoke(
        "sweep", "-m", setup["model"], "-v", setup["vector"], "-c", "auto", "--calibration",
        setup["out"] / "calibration.json", "-q", setup["pairs"], "-n", "2", "--controls", "0", "-o", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    grids = sweep_coeffs(doc, setup["out"], None, "raw")
    assert grids and all(len(g) == 5 and 0.0 in g for g in grids.values())
    for layer, grid in grids.items():
        assert sorted({r["coeff"] for r in rows if r["layer"] == layer}) == pytest.approx(grid)
    assert {r["layer"] for r in rows} == set(grids)
    assert json.loads((out / "sweep.json").read_text())["config"]["positions"] == "response"


def test_coeff_auto_refuses_a_calibration_of_another_model_or_vector(setup, tmp_path):
    import torch

    from steerlab.vectors.vector import SteeringVector

    other = SteeringVector(torch.randn(4, 64)).save(tmp_path / "other.safetensors")
    args = ("-c", "auto", "--calibration", setup["out"], "-n", "2", "hi")
    result = invoke("generate", "-m", setup["model"], "-v", other, *args)
    assert_user_error(result, "made for another vector", str(setup["vector"]))
    doc = json.loads((setup["out"] / "calibration.json").read_text())
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps({**doc, "model": "Qwen/Qwen2.5-7B-Instruct"}))
    result = invoke("generate", "-m", setup["model"], "-v", setup["vector"], "-c", "auto", "--calibration", moved, "hi")
    assert_user_error(result, "made for model 'Qwen/Qwen2.5-7B-Instruct'", "calibrate this model first")


def test_coeff_auto_calibrates_first_on_pairs(setup, tmp_path):
    gens = tmp_path / "gens.jsonl"
    result = invoke(
        "generate", "-m", setup["model"], "-v", setup["vector"], "-c", "auto", "-p", setup["pairs"], "-l", "2",
        "-n", "2", "-o", gens, "is water wet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "gens.calibration" / "calibration.json").read_text())  # kept beside --out
    assert doc["config"]["controls"] == 19 and [(t["layer"], t["direction"]) for t in doc["tracks"]] == [(2, "add")]
    rows = [json.loads(line) for line in gens.read_text().splitlines()]
    assert [r["coeff"] for r in rows] == pytest.approx(generate_coeffs(doc, tmp_path, 2, "raw")[1])
    assert "--coeff auto: calibrating" in result.output and "--coeff auto: layer 2" in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("generate", "-c", "auto", "hi"), ["--coeff auto needs --calibration calibration.json, or --pairs/--trait"]),
        (("generate", "-c", "auto", "--operator", "ablate", "hi"), ["--coeff auto calibrates --operator add"]),
        (("generate", "--calibration", "x.json", "-l", "1", "hi"), ["--calibration: used with --coeff auto only"]),
        (("generate", "-c", "auto", "-l", "1-2", "--calibration", "x.json", "hi"), ["one calibrated layer"]),
        (("sweep", "-c", "auto", "-q", "q.txt", "-o", "o"), ["--coeff auto needs --calibration"]),
        (("sweep", "-c", "1", "-q", "q.txt", "-o", "o"), ["--layers is required"]),
        (("calibrate", "-o", "o"), ["give --pairs FILE or --trait NAME"]),
        (("calibrate", "-p", "p.jsonl", "-t", "evil"), ["--pairs and --trait"]),
        (("calibrate", "-p", "p.jsonl", "--range", "3,1"), ["--range", "0 < LO < HI"]),
        (("calibrate", "-p", "p.jsonl", "--direction", "up"), ["--direction 'up'"]),
        (("calibrate", "-p", "p.jsonl", "--controls", "0"), ["--controls"]),
    ],
)
def test_bad_input_is_one_clear_error(setup, args, needles):
    command, *rest = args
    result = invoke(command, "-m", setup["model"], "-v", setup["vector"], *rest)
    assert_user_error(result, *needles)


def test_positions_must_match_the_calibration(setup):
    result = invoke(
        "generate", "-m", setup["model"], "-v", setup["vector"], "-c", "auto", "--calibration", setup["out"],
        "--positions", "all", "hi",
    )  # fmt: skip
    assert_user_error(result, "--positions all", "steered at response positions")


def test_calibrate_on_a_trait_uses_its_eval_pairs(setup, tmp_path):
    out = tmp_path / "trait"
    args = ("-l", "1", "--controls", "2", "--grid", "3", "--steps", "0", "--trait-questions", "2", "-n", "4")
    result = invoke("calibrate", "-m", setup["model"], "-v", setup["vector"], "-t", "evil", *args, "-o", out)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "calibration.json").read_text())
    answers = [json.loads(line) for line in (out / "eval_answers.jsonl").read_text().splitlines()]
    assert sorted(a["kind"] for a in answers) == ["neg", "neg", "pos", "pos"]  # 2 questions x both persona prompts
    assert doc["pairs"]["source"].startswith("trait evil") and 1 <= doc["pairs"]["n"] <= 2
    assert len(doc["tracks"][0]["curve"]) == 3 and doc["plan"]["steps"] == 1
