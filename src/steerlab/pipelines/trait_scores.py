"""Judged scores of steered answers for the multi-trait study (docs/design.md §6 judge, §7 evidence).

For every trait whose extraction answers the judge could score: greedy answers to the trait's eval
questions with the persona vector added at the trait's best layer at each coefficient, with each of K
same-norm random directions under the identical condition, unsteered, and under the positive and the
negative persona system prompt (the prompting baseline). All traits' answers are rows of shared
batches (each steering spec acts only on its rows); each trait's answers are then judged 0-100 for the
trait and for coherence. Stages per trait: ``steered_generations.jsonl``, ``steered_judged.jsonl``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..engines.base import Engine
from ..evaluate.evidence import steering_evidence
from ..io.runs import ROWS
from ..judge import Judge, evaluate_coherence, evaluate_trait
from ..steering.steerer import SteeringSpec
from .runs import RunDir
from .shared_batches import shared_generation
from .trait_records import ScoreStats, TraitScores
from .trait_steering import interval, prompting_systems

BASELINES = ("unsteered", "prompted/pos", "prompted/neg")
# Fields of PersonaTraitsConfig the steered answers do not depend on (the vector's hash, its layer, the
# number of directions, the questions and the prompting systems are the stage's inputs instead).
_GENERATION_IGNORES = (
    "persona",
    "reduction",
    "fallback_unfiltered",
    "model_diff",
    "layers",
    "scan_coeff",
    "max_fluency_drop",
    "controls",
    "score_controls",
    "judge_scores",
    "eval_questions",
    "prompt_instruction",
    "n_resamples",
    "batch_size",
)


def steered_items(
    trait: str, eval_trait: Any, n_questions: int, coeffs: Sequence[float], k: int, instruction: int
) -> list[dict[str, Any]]:
    """The answers to generate for one trait: conditions ``real`` and ``control/0..k-1`` at every
    coefficient, then ``unsteered``, ``prompted/pos`` and ``prompted/neg`` (coefficient 0, the latter two
    with the prompting baseline's system prompts), each for the first ``n_questions`` eval questions."""
    questions = eval_trait.questions[:n_questions]
    systems = prompting_systems(eval_trait, instruction)
    steered = [
        {
            "key": f"{cond}/{c}/{q}",
            "trait": trait,
            "condition": cond,
            "coeff": float(c),
            "question_index": q,
            "question": question,
            "system": None,
        }
        for cond in ["real", *(f"control/{i}" for i in range(k))]
        for c in coeffs
        for q, question in enumerate(questions)
    ]
    return steered + [
        {
            "key": f"{cond}/{q}",
            "trait": trait,
            "condition": cond,
            "coeff": 0.0,
            "question_index": q,
            "question": question,
            "system": systems[cond.removeprefix("prompted/")] if cond != "unsteered" else None,
        }
        for cond in BASELINES
        for q, question in enumerate(questions)
    ]


def row_specs(
    items: Sequence[dict[str, Any]],
    directions: dict[str, dict[str, Any]],
    controls: dict[str, torch.Tensor],
    positions: str,
) -> list[SteeringSpec]:
    """One spec per (trait, steered condition) in ``items``, acting only on its rows with per-row
    coefficients: the trait's vector (``directions[trait]["vector"]`` ``[n_layers, d_model]``) or control i
    (``controls[trait][i]``) at the trait's layer (``directions[trait]["layer"]``)."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, it in enumerate(items):
        if it["condition"] not in BASELINES:
            groups.setdefault((it["trait"], it["condition"]), []).append(i)
    coeffs = [it["coeff"] for it in items]
    specs = []
    for (trait, cond), rows in groups.items():
        d = directions[trait]
        v = d["vector"] if cond == "real" else controls[trait][int(cond.split("/")[1])]
        specs.append(SteeringSpec(v[d["layer"]], d["layer"], coeffs, positions=positions, rows=rows))
    return specs


def judged_scores(
    lm: Engine,
    judge: Judge,
    judge_id: str,
    run: RunDir,
    traits: dict[str, dict[str, Any]],
    directions: dict[str, dict[str, Any]],
    controls: dict[str, torch.Tensor],
    config: Any,
    chunk: int,
) -> dict[str, list[dict[str, Any]]]:
    """Generate (shared batches) and judge (per trait) the steered answers; returns judged rows per trait.

    ``traits``: name -> ``{"run": RunDir, "eval": Trait}``; ``directions``: name -> ``{"vector", "layer",
    "hash"}``; ``controls``: name -> ``[k, n_layers, d_model]``; ``config``: a PersonaTraitsConfig.
    """
    k = len(next(iter(controls.values()))) if controls else 0
    targets = {}
    for name, t in traits.items():
        d = directions[name]
        items = steered_items(name, t["eval"], config.eval_questions, config.coeffs, k, config.prompt_instruction)
        stage = t["run"].stage(
            "steered_generations",
            "steered_generations.jsonl",
            {
                "vector": d["hash"],
                **lm.fingerprint(),
                "layer": d["layer"],
                "score_directions": k,
                "questions": t["eval"].questions[: config.eval_questions],
                "systems": prompting_systems(t["eval"], config.prompt_instruction),
            },
            settings=config,
            ignore=_GENERATION_IGNORES,
        )
        targets[name] = (stage, items)

    def work(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        prompts = [
            ([{"role": "system", "content": it["system"]}] if it["system"] else [])
            + [{"role": "user", "content": it["question"]}]
            for it in items
        ]
        gens = lm.generate(
            prompts,
            steering=row_specs(items, directions, controls, config.positions),
            max_new_tokens=config.eval_new_tokens,
            batch_size=config.persona.batch_size,
            description="steered answers (all traits)",
        )
        return [{**it, "text": g.text} for it, g in zip(items, gens, strict=True)]

    shared_generation(run, "steered_answers", targets, work, chunk)
    out = {}
    for name, t in traits.items():
        gen_stage = targets[name][0]

        def judge_chunk(items: list[dict[str, Any]], eval_prompt: str = t["eval"].eval_prompt) -> list[dict[str, Any]]:
            qs, answers = [it["question"] for it in items], [it["text"] for it in items]
            trait_res = evaluate_trait(judge, eval_prompt, qs, answers)
            coherence = evaluate_coherence(judge, qs, answers)
            return [
                {**it, "trait_score": a.score, "coherence": c.score}
                for it, a, c in zip(items, trait_res, coherence, strict=True)
            ]

        out[name] = (
            t["run"]
            .cached(
                "steered_judged",
                "steered_judged.jsonl",
                {"generations": gen_stage.hash, "judge": judge_id},
                lambda stage, gen_stage=gen_stage, judge_chunk=judge_chunk: stage.run_items(
                    gen_stage.load_rows(), judge_chunk, chunk=config.persona.judge_chunk
                ),
                codec=ROWS,
            )
            .value
        )
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def score_summary(rows: Sequence[dict[str, Any]], coeffs: Sequence[float], n_resamples: int, seed: int) -> TraitScores:
    """Judged scores (0-100) of steered generations, per condition.

    ``rows``: judged generation rows with ``condition`` (``"real"``, ``"control/K"``, ``"unsteered"``,
    ``"prompted/pos"``, ``"prompted/neg"``), ``coeff`` and ``trait_score`` / ``coherence`` (None
    where the judge gave no number). Returns ``{"unsteered": s, "prompting": {"pos": s, "neg": s},
    "rows": [{coeff, score_mean, score_ci95, score_n, coherence_mean, score_random, score_verdict}]}``
    where ``s`` is :class:`~steerlab.pipelines.trait_records.ScoreStats` and ``score_random`` the controls'
    band of mean scores with the one-sided empirical p (up for c > 0, down for c < 0) of
    :func:`~steerlab.evaluate.evidence.steering_evidence` on the scores as levels (None without
    scored controls), ``score_verdict`` its verdict.
    """

    def scores(condition: str, coeff: float | None = None, key: str = "trait_score") -> list[float]:
        return [
            r[key]
            for r in rows
            if r["condition"] == condition and (coeff is None or r["coeff"] == coeff) and r.get(key) is not None
        ]

    def stats(condition: str, coeff: float | None = None) -> ScoreStats:
        values, coherence = scores(condition, coeff), scores(condition, coeff, "coherence")
        return {
            "score_mean": _mean(values) if values else None,
            "score_ci95": interval(values, n_resamples, seed),
            "score_n": len(values),
            "coherence_mean": _mean(coherence) if coherence else None,
        }

    controls = sorted({r["condition"] for r in rows if r["condition"].startswith("control/")})
    out_rows = []
    for coeff in coeffs:
        row: dict[str, Any] = {"coeff": float(coeff), **stats("real", coeff), "score_random": None}
        values = scores("real", coeff)
        scored = [v for v in (scores(c, coeff) for c in controls) if v]
        if scored and values:
            sign = 1.0 if coeff > 0 else -1.0 if coeff < 0 else 0.0
            ev = steering_evidence(values, None, scored, intended=sign, n_resamples=n_resamples, seed=seed)
            row["score_random"], row["score_verdict"] = ev.random, ev.verdict
        out_rows.append(row)
    prompting = {k: stats(f"prompted/{k}") for k in ("pos", "neg")}
    return {"unsteered": stats("unsteered"), "prompting": prompting, "rows": out_rows}
