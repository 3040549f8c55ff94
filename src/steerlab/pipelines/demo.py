"""The whole study on one model, offline by default (``steerlab demo`` / ``make demo``).

Stages (each resumable; a rerun reuses finished artifacts):

1. ``diff/``        contrastive vector from the built-in deception pairs; LoRA fine-tune on their
                    deceptive answers; model-diff vector; cosine per layer with the random baseline
                    and split-half reliabilities; the steering study (see :mod:`steerlab.pipelines.study`);
2. ``monitor.json`` projections of held-out honest vs deceptive answers on the model-diff vector,
                    read by the base and by the fine-tuned model;
3. ``traits/``      the seed's multi-trait persona study (evil, sycophantic, hallucinating by
                    default; :mod:`steerlab.pipelines.persona_traits`): per trait the effective pairs,
                    best layer and the margin per coefficient with intervals, random controls and
                    the prompting baseline; across traits the trait × trait cosine per layer;
4. ``calibration/``  the two vectors' coefficient ranges at the best layer (:mod:`steerlab.pipelines.demo_calibration`);
5. ``summary.json`` headline figures and a plain-language reading
                    (:class:`~steerlab.pipelines.records.DemoSummary`); ``report.html``.

:func:`run_demo` returns a :class:`DemoResult`. Every steering effect in the reading comes with its
verdict (:func:`steerlab.evaluate.controls.control_verdict`), which says when the number of random
controls cannot reach p = 0.05 (fewer than 19); ``--size full`` runs 19 by default.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..activations.capture import ChatSample
from ..engines.base import Engine, EngineConfig
from ..engines.factory import make_engine
from ..errors import SteerlabError
from ..evaluate.controls import min_controls
from ..evaluate.monitor import project
from ..extract.model_diff import attached_adapter
from ..formats.pairs import builtin_pairs_path, load_pairs
from ..io.atomic import write_json
from ..judge import make_judge
from ..model.loading import LoadedModel, load_model
from ..vectors.vector import SteeringVector
from ..version import __version__
from .artifacts import MONITOR, SUMMARY
from .dataset import DECEPTIVE_SYSTEM, HONEST_SYSTEM
from .demo_calibration import calibrate_demo_vectors, calibration_readings
from .demo_reading import reading
from .diff_objectives import steering_rows
from .diff_study import DiffStudyConfig, DiffStudyResult, run_diff_study
from .persona import PersonaConfig
from .persona_traits import PersonaTraitsConfig, run_persona_traits
from .records import DemoSummary, DirectionsDoc, MonitorDoc, PositionsDoc
from .runs import RunDir
from .study import STUDY_MODELS, StudyConfig, StudyResult


@dataclass
class DemoSize:
    """One demo size: pair counts, fine-tune epochs, the steering study's settings and the persona
    part's (questions, instructions, tokens, steering coefficients)."""

    n_train: int
    n_heldout: int
    epochs: int
    study: StudyConfig
    persona_questions: int
    persona_instructions: int
    persona_new_tokens: int
    persona_coeffs: list[float] = field(default_factory=lambda: [-4.0, 0.0, 4.0, 8.0])
    persona_eval_questions: int = 6
    persona_layers: list[int] | None = None  # the multi-trait layer scan's candidates (None: five spread)
    samples_per_question: int = 1
    temperature: float = 0.0


# The seed's trio of traits (persona vectors, Chen et al. 2025).
DEMO_TRAITS = ("evil", "sycophantic", "hallucinating")

# The prompting baseline of the deception study: the seed data's own system prompts.
DECEPTION_PROMPTS = {"behaviour": DECEPTIVE_SYSTEM, "opposite": HONEST_SYSTEM}
# Blends alpha x contrastive + (1 - alpha) x model-diff the study also steers with (the seed's open question).
DEMO_BLENDS = [0.0, 0.25, 0.5, 0.75, 1.0]
# The all-layers sweep's coefficient at small size. One coefficient at every one of smollm2's 30 layers
# adds its vector 30 times: at 1, 2 and 4 (the single-layer sweep's) every all-layers row broke the model
# (fluency drop 3-38 nats/token); at 0.125 the contrastive, normalized contrastive and model-diff vectors
# all steer coherently (drop <= 0.53; measured on the demo's vectors). One coefficient keeps the demo in
# its time budget, as does running the all-layers sweep on the fine-tuned model only (subtracting: the
# seed's question at all layers; adding to the base is swept at the best layer): ``full`` sweeps 1/32 to
# 1/2 on both models.
ALL_LAYERS_SMALL = [0.125]

SIZES = {
    # for tests: every stage, minutes on 2 CPU cores
    "ci": DemoSize(
        32,
        6,
        2,
        StudyConfig(
            layers=[12],
            coeffs=[4.0],
            n_samples=1,
            max_new_tokens=8,
            controls=4,
            prompts=DECEPTION_PROMPTS,
            blend_alphas=DEMO_BLENDS,
            all_layers_coeffs=ALL_LAYERS_SMALL,
            all_layers_models=["finetuned"],
        ),
        1,
        1,
        8,
        [0.0, 4.0],
        2,
        persona_layers=[12],
    ),
    # the default: the whole study on a laptop CPU with smollm2
    "small": DemoSize(
        128,
        24,
        1,
        StudyConfig(
            coeffs=[1.0, 2.0, 4.0],
            n_samples=3,
            batch_size=64,
            prompts=DECEPTION_PROMPTS,
            blend_alphas=DEMO_BLENDS,
            all_layers_coeffs=ALL_LAYERS_SMALL,
            all_layers_models=["finetuned"],
        ),
        4,
        2,
        32,
        [-4.0, 0.0, 4.0, 8.0],
        4,
    ),
    # paper scale, for a GPU: enough random controls for a test at p = 0.05 (19)
    "full": DemoSize(
        388,
        96,
        3,
        StudyConfig(
            coeffs=[0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0],
            n_samples=6,
            prompts=DECEPTION_PROMPTS,
            controls=min_controls(),
            blend_alphas=DEMO_BLENDS,
            all_layers_coeffs=[0.03125, 0.0625, 0.125, 0.25, 0.5],
        ),
        20,
        5,
        96,
        [-8.0, -4.0, 0.0, 2.0, 4.0, 8.0],
        20,
        2,
        1.0,
    ),
}


@dataclass
class DemoResult:
    """What :func:`run_demo` made: the run directory, ``summary`` (also ``summary.json``), the steering
    study and the comparison of the two directions it reads from."""

    run_dir: Path
    summary: DemoSummary
    study: StudyResult
    comparison: DirectionsDoc

    @property
    def reading(self) -> list[str]:
        """The plain-language reading of the headline numbers."""
        return self.summary["reading"]

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per stage run now (stages reused from an earlier run are absent)."""
        return self.summary["timings"]


def run_demo(
    out_dir: str | Path = "out/demo",
    model: str = "smollm2",
    judge: str = "local",
    size: str = "small",
    traits: Sequence[str] = DEMO_TRAITS,
    judge_base_url: str | None = None,
    controls: int | None = None,
    engine: EngineConfig | None = None,
) -> DemoResult:
    """Run (or resume) the demo into ``out_dir``; returns a :class:`DemoResult` (the summary is also
    written to summary.json).

    ``controls``: random same-norm directions per steering condition (default: the size's, 8 for
    ci/small and 19 for full, enough for p = 0.05; 0 turns them off). ``engine``: where generation and
    scoring run (default ``hf``; with ``vllm`` the fine-tuned model's rows run as LoRA requests; the
    vectors, the monitor and the local judge stay on transformers). Raises SteerlabError for an
    unknown size or a model/judge that cannot load.
    """
    if size not in SIZES:
        raise SteerlabError(f"--size {size!r}: expected one of {', '.join(SIZES)}")
    cfg = SIZES[size]
    if controls is not None:
        if controls < 0:
            raise SteerlabError(f"--controls {controls}: expected 0 (off) or more random directions")
        cfg = replace(cfg, study=replace(cfg.study, controls=controls))
    out = Path(out_dir)
    RunDir(out)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    lm = load_model(model)
    with make_engine(engine or EngineConfig(), model, lm, enable_lora=True) as runner:
        timings["load"] = time.perf_counter() - start
        summary, diff = _run(lm, runner, out, model, judge, size, traits, judge_base_url, cfg, timings)
    write_json(out / SUMMARY, summary)
    return DemoResult(out, summary, diff.study, diff.comparison)


def _run(
    lm, runner, out, model, judge, size, traits, judge_base_url, cfg, timings
) -> tuple[DemoSummary, DiffStudyResult]:
    """The demo's stages on a loaded model (captures) and an engine (generation and scoring)."""

    path = builtin_pairs_path("deception")
    train = load_pairs(path, split="train")[: cfg.n_train]
    heldout = load_pairs(path, split="heldout")[: cfg.n_heldout]
    start = time.perf_counter()
    diff = run_diff_study(
        lm,
        train,
        heldout,
        out / "diff",
        DiffStudyConfig(epochs=cfg.epochs, study=cfg.study, batch_size=32),
        engine=runner,
    )
    timings["diff_study"] = time.perf_counter() - start
    timings.update({f"diff.{k}": v for k, v in diff.timings.items()})

    start = time.perf_counter()
    monitor = _monitor_stage(lm, out, diff, heldout, diff.study.best_layer)
    timings["monitor"] = time.perf_counter() - start

    start = time.perf_counter()
    persona = _traits_stage(lm, runner, out / "traits", list(traits), judge, judge_base_url, cfg)
    timings["traits"] = time.perf_counter() - start

    start = time.perf_counter()  # the two vectors' calibration (pipelines.demo_calibration)
    best = diff.study.best_layer
    calibration = calibrate_demo_vectors(
        runner, out, diff.vectors, heldout, best, size, cfg.study.controls, cfg.study.positions
    )
    timings["calibration"] = time.perf_counter() - start
    summary = _summary(lm, model, judge, size, diff, monitor, persona, timings)
    summary["engine"] = runner.kind
    summary["calibration"] = calibration
    summary["reading"] += calibration_readings(calibration)
    return summary, diff


def _monitor_stage(lm: LoadedModel, out: Path, diff: DiffStudyResult, heldout, best: int) -> MonitorDoc:
    """Projections of held-out honest vs deceptive answers on the model-diff vector at ``best``, read
    by the base and by the fine-tuned model (``monitor.json``)."""

    def compute(_: Any) -> MonitorDoc:
        vector = SteeringVector.load(diff.vectors["model_diff"])
        honest = [ChatSample(p.question, p.negative) for p in heldout]
        deceptive = [ChatSample(p.question, p.positive) for p in heldout]
        groups: dict[str, list[float]] = {}

        def add(label: str, model: LoadedModel) -> None:
            for name, samples in (("honest", honest), ("deceptive", deceptive)):
                values = project(model, samples, vector, [best], ["response_avg"])["response_avg"][:, 0]
                groups[f"{name} answers · {label}"] = [float(v) for v in values]

        add("base", lm)
        with attached_adapter(lm, diff.adapter) as tuned:
            add("fine-tuned", tuned)
        summary = [{"group": k, "mean": sum(v) / len(v), "n": len(v)} for k, v in groups.items()]
        return {
            "title": f"held-out answers projected on the model-diff vector at layer {best}",
            "layer": best,
            "groups": groups,
            "summary": summary,
        }

    run = RunDir(out)
    vectors = {name: run.input_path(path) for name, path in diff.vectors.items()}
    config = {"vectors": vectors, "best": best, "heldout": [p.question for p in heldout]}
    return run.cached("monitor", MONITOR, config, compute).value


def _traits_stage(
    lm: LoadedModel,
    runner: Engine,
    out: Path,
    traits: list[str],
    judge_spec: str,
    judge_base_url: str | None,
    cfg: DemoSize,
) -> dict[str, Any]:
    """The multi-trait persona study; a trait whose judge cannot score is averaged unfiltered (and
    says so). Returns the ``traits`` part of summary.json."""
    # "local" is the embedded smollm2: reuse the loaded copy when it is the model under study.
    reuse = judge_spec == "local" and lm.name == "smollm2"
    judge = make_judge(lm if reuse else judge_spec, base_url=judge_base_url)
    config = PersonaTraitsConfig(
        persona=PersonaConfig(
            samples_per_question=cfg.samples_per_question,
            max_questions=cfg.persona_questions,
            max_instructions=cfg.persona_instructions,
            max_new_tokens=cfg.persona_new_tokens,
            temperature=cfg.temperature,
            batch_size=None,
        ),
        coeffs=[c for c in cfg.persona_coeffs if c != 0],
        eval_questions=cfg.persona_eval_questions,
        eval_new_tokens=cfg.persona_new_tokens,
        controls=cfg.study.controls,
        layers=cfg.persona_layers,
        fallback_unfiltered=True,
    )
    result = run_persona_traits(lm, traits, judge, out, config, judge_name=judge_spec, engine=runner)
    return {
        "judge": judge_spec,
        "traits": result.summary,
        "failed": result.failed,
        "readings": [e["reading"] for e in result.traits.values() if e.get("status") == "ok" and e.get("reading")],
    }


def _summary(lm, model, judge, size, diff: DiffStudyResult, monitor, persona, timings) -> DemoSummary:
    study, comparison = diff.study, diff.comparison
    ref, best = study.reference, study.best_layer
    cos = comparison["cosine"]["contrastive|model_diff"]
    rel = comparison["reliability"]
    max_drop = study.max_fluency_drop
    best_rows = {}
    for vector in ("model_diff", "contrastive"):
        rows = {layers: steering_rows(study, vector, layers) for layers in (best, "all")}
        for model_name in STUDY_MODELS:
            for layers in (best, "all"):
                if study.swept(layers, model_name):  # a sweep not run is left out, not read as "none coherent"
                    best_rows[f"{vector}|{model_name}|{layers}"] = rows[layers][model_name]
    summary = {
        "steerlab_version": __version__,
        "model": model,
        "judge": judge,
        "size": size,
        "n_layers": lm.n_layers,
        "d_model": lm.d_model,
        "margins": {"base": ref["base"], "finetuned": ref["finetuned"], "gap": study.gap},
        "cosine_per_layer": cos,
        "best_layer": best,
        "cosine_at_best_layer": cos[best],
        "random_baseline": comparison["baseline"],
        "reliability_at_best_layer": {k: v["mean"][best] for k, v in rel.items()},
        "cosine_ci95_at_best_layer": comparison["cosine_ci95"]["contrastive|model_diff"][best],
        "best_steering": best_rows,
        "steering_positions": study.config.get("positions", "all"),
        "controls": study.config.get("controls", 0),
        "prompting": study.prompting,
        "model_diff_vs_contrastive": [c for c in study.comparisons if c["layers"] == best],
        "model_diff_positions": _positions_summary(diff.positions, best),
        "monitor": monitor["summary"],
        "traits": persona["traits"],
        "traits_failed": persona["failed"],
        "traits_judge": persona["judge"],
        "traits_readings": persona["readings"],
        "timings": {k: round(v, 1) for k, v in timings.items()},
        # the diff study's further questions (steerlab.pipelines.study_records): blends; objectives when run
        "blends": (diff.summary or {}).get("blends"),
        "objectives": (diff.summary or {}).get("objectives"),
    }
    summary["reading"] = reading(summary, max_drop)
    return summary  # type: ignore[return-value]


def _positions_summary(positions: PositionsDoc | None, best: int) -> dict[str, Any] | None:
    """The position-resolved model diff at the best layer: cosine with the contrastive vector (and its
    interval) per token position, position 0 apart."""
    if not positions:
        return None
    per = {
        i: {"cosine": doc["cosine_with_contrastive"][best], "ci95": doc["ci95"][best]}
        for i, doc in positions["positions"].items()
    }
    return {
        "layer": best,
        "random_band": positions["random_band"],
        "best_position": positions["best_position"],
        "position_0": per.get("0"),
        "positions": {i: v for i, v in per.items() if i != "0"},
        "n_prompts": positions["n_prompts"],
    }
