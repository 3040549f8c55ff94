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
4. ``summary.json`` headline figures and a plain-language reading; ``report.html``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..activations.capture import ChatSample
from ..errors import SteerlabError
from ..evaluate.monitor import project
from ..extract.model_diff import attached_adapter
from ..formats.pairs import builtin_pairs_path, load_pairs
from ..io.atomic import write_json
from ..judge import make_judge
from ..model.loading import LoadedModel, load_model
from ..vectors.vector import SteeringVector
from ..version import __version__
from .artifacts import SUMMARY
from .dataset import DECEPTIVE_SYSTEM, HONEST_SYSTEM
from .diff_study import DiffStudyConfig, run_diff_study
from .persona import PersonaConfig
from .persona_traits import PersonaTraitsConfig, run_persona_traits
from .runs import RunDir
from .study import StudyConfig, best_coherent


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

SIZES = {
    # for tests: every stage, minutes on 2 CPU cores
    "ci": DemoSize(
        32,
        6,
        2,
        StudyConfig(layers=[12], coeffs=[4.0], n_samples=1, max_new_tokens=8, controls=4, prompts=DECEPTION_PROMPTS),
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
        StudyConfig(coeffs=[1.0, 2.0, 4.0], n_samples=3, batch_size=64, prompts=DECEPTION_PROMPTS),
        4,
        2,
        32,
        [-4.0, 0.0, 4.0, 8.0],
        4,
    ),
    # paper scale, for a GPU
    "full": DemoSize(
        388,
        96,
        3,
        StudyConfig(coeffs=[0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0], n_samples=6, prompts=DECEPTION_PROMPTS),
        20,
        5,
        96,
        [-8.0, -4.0, 0.0, 2.0, 4.0, 8.0],
        20,
        2,
        1.0,
    ),
}


def run_demo(
    out_dir: str | Path = "out/demo",
    model: str = "smollm2",
    judge: str = "local",
    size: str = "small",
    traits: Sequence[str] = DEMO_TRAITS,
    judge_base_url: str | None = None,
    controls: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) the demo into ``out_dir``; returns the summary (also in summary.json).

    ``controls``: random same-norm directions per steering condition (default: the size's, 8;
    0 turns them off). Raises SteerlabError for an unknown size or a model/judge that cannot load.
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
    timings["load"] = time.perf_counter() - start

    path = builtin_pairs_path("deception")
    train = load_pairs(path, split="train")[: cfg.n_train]
    heldout = load_pairs(path, split="heldout")[: cfg.n_heldout]
    start = time.perf_counter()
    diff = run_diff_study(
        lm, train, heldout, out / "diff", DiffStudyConfig(epochs=cfg.epochs, study=cfg.study, batch_size=32)
    )
    timings["diff_study"] = time.perf_counter() - start
    timings.update({f"diff.{k}": v for k, v in diff.timings.items()})
    study = diff.study
    best = study["best_layer"]

    start = time.perf_counter()
    monitor = _monitor_stage(lm, out, diff, heldout, best)
    timings["monitor"] = time.perf_counter() - start

    start = time.perf_counter()
    persona = _traits_stage(lm, out / "traits", list(traits), judge, judge_base_url, cfg)
    timings["traits"] = time.perf_counter() - start

    summary = _summary(lm, model, judge, size, diff, monitor, persona, timings)
    write_json(out / SUMMARY, summary)
    return summary


def _monitor_stage(lm: LoadedModel, out: Path, diff: dict[str, Any], heldout, best: int) -> dict[str, Any]:
    stage = RunDir(out).stage(
        "monitor", "monitor.json", {"vectors": diff.vectors, "best": best, "heldout": [p.question for p in heldout]}
    )
    if stage.done():
        return stage.load_json()
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
    doc = {
        "title": f"held-out answers projected on the model-diff vector at layer {best}",
        "layer": best,
        "groups": groups,
        "summary": summary,
    }
    stage.save_json(doc)
    return doc


def _traits_stage(
    lm: LoadedModel, out: Path, traits: list[str], judge_spec: str, judge_base_url: str | None, cfg: DemoSize
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
    result = run_persona_traits(lm, traits, judge, out, config, judge_name=judge_spec)
    return {
        "judge": judge_spec,
        "traits": result.summary,
        "failed": result.failed,
        "readings": [e["reading"] for e in result.traits.values() if e.get("status") == "ok" and e.get("reading")],
    }


def _summary(lm, model, judge, size, diff, monitor, persona, timings) -> dict[str, Any]:
    study, comparison = diff.study, diff.comparison
    ref, best = study["reference"], study["best_layer"]
    cos = comparison["cosine"]["contrastive|model_diff"]
    rel = comparison["reliability"]
    max_drop = study["config"]["max_fluency_drop"]
    best_rows = {}
    for vector in ("model_diff", "contrastive"):
        for model_name, key in (("finetuned", "undone"), ("base", "induced")):
            for layers in (str(best), "all"):
                row = best_coherent(
                    study["rows"],
                    key,
                    max_drop,
                    stage="sweep",
                    vector=vector,
                    model=model_name,
                    scale="raw",
                    layers=layers,
                )
                best_rows[f"{vector}|{model_name}|{layers}"] = row
    gap = ref["finetuned"] - ref["base"]
    summary = {
        "steerlab_version": __version__,
        "model": model,
        "judge": judge,
        "size": size,
        "n_layers": lm.n_layers,
        "d_model": lm.d_model,
        "margins": {"base": ref["base"], "finetuned": ref["finetuned"], "gap": gap},
        "cosine_per_layer": cos,
        "best_layer": best,
        "cosine_at_best_layer": cos[best],
        "random_baseline": comparison["baseline"],
        "reliability_at_best_layer": {k: v["mean"][best] for k, v in rel.items()},
        "cosine_ci95_at_best_layer": comparison["cosine_ci95"]["contrastive|model_diff"][best],
        "best_steering": best_rows,
        "steering_positions": study["config"].get("positions", "all"),
        "prompting": study.get("prompting"),
        "model_diff_vs_contrastive": [c for c in study.get("comparisons", []) if c["layers"] == str(best)],
        "model_diff_positions": _positions_summary(diff.positions, best),
        "monitor": monitor["summary"],
        "traits": persona["traits"],
        "traits_failed": persona["failed"],
        "traits_judge": persona["judge"],
        "traits_readings": persona["readings"],
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    summary["reading"] = reading(summary, max_drop)
    return summary


def _positions_summary(positions: dict[str, Any] | None, best: int) -> dict[str, Any] | None:
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


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def _interval(ci: list[float | None] | None) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "95% CI unbounded"
    return f"95% CI {ci[0]:.0%} to {ci[1]:.0%}"


def _effect_sentence(row: dict[str, Any], key: str, prompting: dict[str, Any] | None) -> str:
    """How a steering row's effect compares with its interval, its random band and prompting."""
    delta = row.get("delta_ci95") or [None, None]
    change = (
        ""
        if None in delta
        else f", margin change {row['delta']:+.3f} nats/token, 95% CI {delta[0]:+.3f} to {delta[1]:+.3f}"
    )
    parts = [f"{_pct(row[key])} ({_interval(row.get('ci95'))}{change})"]
    rnd = row.get("random")
    if rnd:
        parts.append(
            f"random directions of the same norm: {_pct(rnd['mean'])} (band {_pct(rnd['lo'])} to "
            f"{_pct(rnd['hi'])}, p = {rnd['p']:.2g}) — {row['verdict']}"
        )
    if row.get("steerable_fraction") is not None:
        parts.append(
            f"{row['steerable_fraction']:.0%} of pairs moved the intended way, "
            f"{row['anti_steerable_fraction']:.0%} the wrong way"
        )
    if row.get("vs_prompting") is not None and prompting:
        parts.append(f"{row['vs_prompting']:.2g}× the effect of prompting")
    return "; ".join(parts)


# How the reading names the study's steering positions (docs/design.md §4).
STEERED_AT = {
    "response": "at the last prompt token and every answer token",
    "all": "at every token",
    "prompt": "at the prompt tokens",
}


def reading(s: dict[str, Any], max_drop: float) -> list[str]:
    """A short plain-language reading of the headline numbers (no claims beyond them)."""
    m, best = s["margins"], s["best_layer"]
    band = s["random_baseline"]["band"]
    lines = []
    if m["gap"] > 0:
        lines.append(
            f"Fine-tuning on deceptive answers raised the held-out behaviour margin from {m['base']:+.3f} to "
            f"{m['finetuned']:+.3f} (log-likelihood per token, deceptive minus honest): the fine-tune learned "
            "something that generalises to unseen questions."
        )
    else:
        lines.append(
            f"Fine-tuning did not raise the held-out margin ({m['base']:+.3f} → {m['finetuned']:+.3f}); the "
            "comparisons below describe a fine-tune that did not take."
        )
    cos, rel = s["cosine_at_best_layer"], s["reliability_at_best_layer"]
    ci = s.get("cosine_ci95_at_best_layer")
    ci_text = f" (95% CI {ci[0]:+.3f} to {ci[1]:+.3f} from resampling the pairs behind each vector)" if ci else ""
    if ci and (ci[0] > band or ci[1] < -band):
        verdict = "outside the random band: further from orthogonal than unrelated directions"
    elif ci and -band <= ci[0] and ci[1] <= band:
        verdict = "inside the random band: not distinguishable from unrelated directions"
    elif ci:
        verdict = "its interval overlaps the random band: not clearly distinguishable from unrelated directions"
    else:
        verdict = "outside the random band" if abs(cos) > band else "inside the random band"
    lines.append(
        f"At layer {best}, the model-diff and contrastive directions have cosine {cos:+.3f}{ci_text}, "
        f"{verdict} (±{band:.3f} in {s['d_model']} dimensions). Split-half reliabilities "
        f"(contrastive {rel['contrastive']:.2f}, model-diff {rel['model_diff']:.2f}) bound how similar two "
        "noisy estimates of the same direction could look."
    )
    prompting = s.get("prompting")
    if prompting:
        ask = prompting.get("finetuned_asked_opposite", {})
        induce = prompting.get("base_asked_behaviour", {})
        lines.append(
            f"Prompting baseline: asking the fine-tuned model to be honest undoes {_pct(ask.get('effect'))} "
            f"of the gap ({_interval(ask.get('ci95'))}); asking the base model to deceive induces "
            f"{_pct(induce.get('effect'))} ({_interval(induce.get('ci95'))})."
        )
    for vector in ("model_diff", "contrastive"):
        row = s["best_steering"].get(f"{vector}|finetuned|{best}")
        if row:
            lines.append(
                f"Subtracting the {vector.replace('_', '-')} vector from the fine-tuned model at layer {best} "
                f"({STEERED_AT[s.get('steering_positions', 'all')]}, "
                f"coefficient {row['coeff']:g}, fluency drop {row['fluency_drop']:.2f} nats/token, limit "
                f"{max_drop}) undoes {_effect_sentence(row, 'undone', prompting)}."
            )
    paired = [c for c in s.get("model_diff_vs_contrastive") or [] if c["model"] == "finetuned"]
    if paired:
        sure = [c for c in paired if c["distinguishable"]]
        lines.append(
            f"Model-diff vs contrastive at equal size (layer {best}, same pairs, paired bootstrap): the two "
            f"steer distinguishably at {len(sure)} of {len(paired)} coefficients"
            + (
                f" (e.g. c={sure[0]['coeff']:g}: margin difference {sure[0]['margin_difference']:+.3f}, 95% CI "
                f"{sure[0]['ci95'][0]:+.3f} to {sure[0]['ci95'][1]:+.3f})."
                if sure
                else "."
            )
        )
    positions = s.get("model_diff_positions")
    if positions:
        best_pos = positions["positions"].get(str(positions["best_position"]), {})
        p0 = positions.get("position_0") or {}
        lines.append(
            f"Read on {positions['n_prompts']} unrelated prompts, the fine-tune's activation difference "
            f"at token position {positions['best_position']} has cosine {best_pos.get('cosine', 0):+.3f} "
            f"with the contrastive vector at layer {best} (position 0, an attention sink, "
            f"{p0.get('cosine', 0):+.3f}; random band ±{positions['random_band']:.3f})."
        )
    lines.extend(s.get("traits_readings") or [])
    unfiltered = [
        name for name, e in (s.get("traits") or {}).items() if isinstance(e, dict) and e.get("filter") == "none"
    ]
    if unfiltered:
        lines.append(
            f"The {s['traits_judge']} judge could not score the persona answers of "
            f"{', '.join(unfiltered)} (too little probability on numbers), so their persona vectors "
            "average every pair, unfiltered; use a stronger judge (--judge openai:MODEL)."
        )
    lines.append(
        "What a 135M model cannot show: judged trait scores with a reliable judge, long coherent steered "
        "answers, and behaviours that need a capable model to express. The same commands run on a GPU "
        "with a real model (--model, --judge openai:...) at --size full."
    )
    return lines
