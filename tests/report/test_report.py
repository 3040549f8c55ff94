"""The HTML report, rendered in a real headless Chromium (Debian's chromium, installed by `make test`)."""

import json
import os
import re
import shutil
import subprocess

import pytest
from tiny import make_number_judge

from steerlab.evaluate.readout import readout_vector
from steerlab.formats.pairs import Pair
from steerlab.formats.traits import load_trait
from steerlab.judge import make_judge
from steerlab.pipelines.diff_study import DiffStudyConfig, run_diff_study
from steerlab.pipelines.persona import PersonaConfig, run_persona
from steerlab.pipelines.persona_traits import PersonaTraitsConfig, run_persona_traits
from steerlab.pipelines.study import StudyConfig
from steerlab.report.html import build_report
from steerlab.vectors.vector import SteeringVector

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TRAIN = [
    Pair(question=f"how should I store item {i}", positive="in the fridge always", negative="in a dry box")
    for i in range(4)
]
HELDOUT = [Pair(question="where do eggs go", positive="in the fridge always", negative="in a dry box")]


@pytest.fixture(scope="module")
def run_dir(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = DiffStudyConfig(
        epochs=1,
        lr=5e-3,
        train_batch_size=4,
        batch_size=8,
        n_splits=3,
        study=StudyConfig(layers=[1, 2], coeffs=[1.0, 2.0], n_samples=1, max_new_tokens=3, blend_alphas=[0, 0.5, 1]),
        objectives=["sft", "dpo"],  # the blends' and objectives' figures render with the others
    )
    run_diff_study(tiny_llama, TRAIN, HELDOUT, out / "diff", config)
    judge = make_judge(make_number_judge())
    run_persona(
        tiny_llama,
        load_trait("evil"),
        judge,
        out / "persona",
        PersonaConfig(max_questions=1, max_instructions=1, max_new_tokens=3, threshold=0, min_coherence=0),
    )
    # the multi-trait study (traits/traits.json): cosine heatmap with slider, per-trait margin and score figures
    run_persona_traits(
        tiny_llama,
        ["evil", "humorous"],
        judge,
        out / "traits",
        PersonaTraitsConfig(
            persona=PersonaConfig(max_questions=1, max_instructions=2, max_new_tokens=3, threshold=0, min_coherence=0),
            coeffs=[-2.0, 2.0],
            eval_questions=3,
            eval_new_tokens=3,
            controls=2,
            n_resamples=100,
        ),
    )
    (out / "monitor.json").write_text(
        json.dumps(
            {
                "title": "t",
                "groups": {"a": [0.1, 0.2], "b": [0.5, 0.7]},
                "summary": [{"group": "a", "mean": 0.15, "n": 2}],
            }
        )
    )
    # a vector readout (steerlab inspect --out): its norm figure renders with the others
    vector_file = out / "diff" / "vectors" / "contrastive.safetensors"
    contrastive = SteeringVector.load(vector_file)
    readout = readout_vector(
        tiny_llama, contrastive, "1-2", top_k=3, prompts=["how do I keep bread fresh"], source=vector_file
    )
    (out / "readouts").mkdir()
    (out / "readouts" / "contrastive.json").write_text(json.dumps(readout))
    (out / "summary.json").write_text(
        json.dumps({"model": "tiny", "judge": "local", "reading": ["a reading"], "timings": {"load": 1.0}})
    )
    return out


def chromium(*args, timeout=120):
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--enable-logging=stderr",
        "--v=0",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="chromium not installed")
def test_report_renders_in_chromium(run_dir, tmp_path):
    path, missing = build_report(run_dir)
    assert missing == []
    html = path.read_text()
    for title in (
        "effect vs coefficient at layer",
        "per-pair margins",
        "position-resolved model diff",
        "95% CI from resampling pairs",
        "Prompting baseline",
    ):
        assert title in html, title  # the evidence figures (rendered below with the others)
    assert "<script src=" not in html  # self-contained: no network needed
    url = path.resolve().as_uri()
    profile = tmp_path / "profile"
    result = chromium(f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", url)
    status = re.search(r'id="steerlab-status"[^>]*', result.stdout)
    assert status, result.stderr[-2000:]
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', status.group(0)))
    expected_plots = html.count('<div class="plot">')
    assert expected_plots >= 8
    # the figures that must render, read from the rendered DOM (plotly draws titles as SVG text)
    dom = result.stdout
    for title in (
        "blends α·contrastive + (1 − α)·model-diff at layer",
        "Fine-tuning objectives: SFT vs DPO directions",
        "DPO fine-tune: effect, interval and random directions",
        "model_diff vs model_diff_dpo",
        "Trait × trait cosine per layer",
        "cosine at layer",
        "random directions (d=64): 95% of |cos|",
        "evil: steering at layer",
        "humorous: steering at layer",
        "per-pair change",
        "judged trait score",
        "Vector readout: contrastive",
        "norm per layer against the residual stream",
    ):
        assert title in dom, title
    assert int(attrs["plots"]) == expected_plots
    assert int(attrs["rendered"]) == expected_plots  # every plot drew its SVG
    assert json.loads(attrs["errors"].replace("&quot;", '"')) == []
    console_errors = [line for line in result.stderr.splitlines() if "CONSOLE" in line and "rror" in line]
    assert console_errors == []
    shot = run_dir / "report.png"
    result = chromium(
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        "--window-size=1280,2400",
        f"--screenshot={shot}",
        url,
    )
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", result.stderr[-2000:]


def test_report_on_partial_run_lists_missing(tmp_path):
    (tmp_path / "directions.json").write_text("{not json")  # the diff study's comparison (was compare.json)
    path, missing = build_report(tmp_path)
    assert path.is_file()
    assert "vector comparison (directions.json)" in missing and "steering study (study.json)" in missing
    assert "Not in this run directory" in path.read_text()


def test_report_reads_diff_studies_from_before_the_rename(run_dir, tmp_path):
    """A diff study written before directions.json (compare.json, layers as strings) still renders;
    steerlab compare's own compare.json is not taken for it."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(run_dir / "diff", old)
    (old / "directions.json").rename(old / "compare.json")
    study = json.loads((old / "study.json").read_text())
    for r in study["rows"]:
        r["layers"] = str(r["layers"])
    (old / "study.json").write_text(json.dumps(study))
    path, missing = build_report(old)
    html = path.read_text()
    assert not any("comparison" in m or "study" in m for m in missing), missing
    assert "Do the two directions match?" in html and "effect vs coefficient at layer" in html
    assert "one-sided" in html  # every p names its sidedness
    (old / "compare.json").write_text(json.dumps({"cosine": {}, "names": []}))  # steerlab compare's document
    assert "vector comparison (directions.json)" in build_report(old)[1]


def test_report_cli(run_dir):
    from typer.testing import CliRunner

    from steerlab.cli import app

    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "report.html").is_file()
    bad = CliRunner().invoke(app, ["report", str(run_dir / "nope")])
    assert bad.exit_code == 2 and "not a directory" in bad.output


def test_report_of_a_trait_study(tiny_llama, tmp_path):
    """`diff study -t`: the trait's section (where the pairs came from, unfiltered) beside the persona run,
    and the persona vector among the directions compared and steered with."""
    from steerlab.pipelines.trait_study import TraitStudyConfig, run_trait_study

    config = TraitStudyConfig(
        persona=PersonaConfig(max_questions=4, max_instructions=1, max_new_tokens=3, filter=False),
        diff=DiffStudyConfig(
            epochs=1, lr=5e-3, train_batch_size=4, batch_size=8, n_splits=3, positions=0,
            study=StudyConfig(layers=[1, 2], coeffs=[1.0], n_samples=1, max_new_tokens=2, controls=2),
        ),
    )  # fmt: skip
    run_trait_study(tiny_llama, "sycophantic", make_judge(tiny_llama), tmp_path, config, judge_name="local")
    path, missing = build_report(tmp_path)
    html = path.read_text()
    assert missing == ["monitoring (monitor.json)"]
    assert "Trait study: sycophantic" in html and "Unfiltered persona pairs (--no-filter)" in html
    assert "contrastive vs persona" in html and "model_diff vs persona" in html  # the cosine figure's traces
    assert "Persona pipeline: judged responses" in html
