"""Steering evidence for one persona vector (docs/design.md §7), the measuring half of
:mod:`steerlab.pipelines.persona_traits`.

All margins are the judge-free behaviour margin (docs/design.md §5, nats/token): on *eval pairs*, the model's own
greedy answers to the trait's held-out eval questions under its first positive and first negative
persona prompt (as :func:`steerlab.evaluate.persona_eval.persona_margin_pairs`), read by the
unprompted model. Layer L is the output of decoder block L.

- :func:`layer_scan` — one batch stream: unsteered, and the vector added at each candidate layer at one
  coefficient; plus the prompting baseline (the same pairs read under a positive and a negative
  persona system prompt). :func:`read_layer_scan` picks the layer by the one rule of
  :func:`steerlab.evaluate.selection.choose_layer` (largest margin increase whose fluency, the mean
  log-likelihood of both answers, drops by at most ``max_drop`` nats/token).
- :func:`sweep_margins` — at the chosen layer, every coefficient for the vector and for K same-norm
  random directions (Soligo et al. 2025), all as rows of one stream
  (:func:`~steerlab.evaluate.margin.condition_margins`).
- :func:`margin_rows` — per coefficient, :func:`steerlab.evaluate.evidence.steering_evidence` of the
  change in margin from the unsteered model: its interval, the controls' band and one-sided p, the
  steerable / anti-steerable fractions (Tan et al. 2024) and the effect as a fraction of the
  prompting effect.
- :func:`steerlab.pipelines.trait_scores.score_summary` — the same reading of judged scores (0-100)
  of steered generations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..engines.base import Engine
from ..evaluate.evidence import Interval, finite, steering_evidence
from ..evaluate.margin import MarginResult, behaviour_margin, condition_margins
from ..evaluate.selection import ScanPoint, choose_layer
from ..evaluate.statistics import bootstrap_ci
from ..formats.pairs import Pair
from ..formats.traits import Trait
from ..steering.steerer import SteeringSpec
from .trait_records import TraitEntry, TraitFailure, TraitReference, TraitRow, TraitScanRow, TraitTableRow

__all__ = ["finite"]


def interval(values: Sequence[float], n_resamples: int, seed: int) -> Interval:
    """Seeded bootstrap 95% interval ``[lo, hi]`` of the mean of ``values`` ``[n]``; None for n < 2."""
    if len(values) < 2:
        return None
    lo, hi = bootstrap_ci(list(values), n_resamples, seed)
    return [lo, hi]


# --- eval pairs ------------------------------------------------------------------------------------


def eval_items(eval_trait: Trait, n_questions: int) -> list[dict[str, Any]]:
    """The answers behind the eval pairs: each of the first ``n_questions`` eval questions under the
    first positive and the first negative persona prompt, keyed ``"{kind}/{question}"``."""
    systems = {"pos": eval_trait.system_prompts("pos")[0], "neg": eval_trait.system_prompts("neg")[0]}
    return [
        {"key": f"{kind}/{q}", "kind": kind, "question_index": q, "question": question, "system": systems[kind]}
        for kind in ("pos", "neg")
        for q, question in enumerate(eval_trait.questions[:n_questions])
    ]


def eval_pairs(rows: Sequence[dict[str, Any]]) -> list[Pair]:
    """Pairs (positive = persona answer) from generated :func:`eval_items` rows (with ``response``), in
    question order; a question where either answer is blank is left out (as persona_margin_pairs)."""
    by_q: dict[int, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_q.setdefault(row["question_index"], {})[row["kind"]] = row
    return [
        Pair(question=r["pos"]["question"], positive=r["pos"]["response"], negative=r["neg"]["response"])
        for _, r in sorted(by_q.items())
        if "pos" in r and "neg" in r and r["pos"]["response"].strip() and r["neg"]["response"].strip()
    ]


def prompting_systems(eval_trait: Trait, instruction: int) -> dict[str, str]:
    """The positive and negative system prompts of eval instruction ``instruction`` (clamped to the
    last one): the prompting baseline asks for the behaviour and for its opposite with them."""
    i = min(instruction, len(eval_trait.instruction) - 1)
    return {"pos": eval_trait.system_prompts("pos")[i], "neg": eval_trait.system_prompts("neg")[i]}


# --- measurements (model work; results are plain JSON-able dicts) ----------------------------------


def _result_doc(r: MarginResult) -> dict[str, Any]:
    return {"per_pair": r.per_pair.tolist(), "fluency": r.fluency}


def layer_scan(
    lm: Engine,
    pairs: Sequence[Pair],
    vector: torch.Tensor,
    layers: Sequence[int],
    coeff: float,
    positions: str,
    systems: dict[str, str],
    batch_size: int,
) -> dict[str, Any]:
    """Margins for choosing the layer and for the prompting baseline (two batch streams).

    ``vector``: ``[n_layers, d_model]``; row L is added at layer L with ``coeff`` (raw scale).
    Returns ``{"layers", "coeff", "unsteered": {per_pair [n], fluency}, "per_layer": [{layer,
    per_pair [n], fluency}], "prompted": {"pos"|"neg": {per_pair [n], fluency}}, "systems"}``; every
    per-pair list is in pair order, in nats/token.
    """
    conditions = [[]] + [[SteeringSpec(vector[layer], layer, coeff, positions=positions)] for layer in layers]
    results = condition_margins(lm, pairs, conditions, [coeff], batch_size=batch_size)
    n = len(pairs)
    prompted = [p.model_copy(update={"system": systems[kind]}) for kind in ("pos", "neg") for p in pairs]
    both = behaviour_margin(lm, prompted, batch_size=batch_size)
    half = {"pos": slice(0, n), "neg": slice(n, 2 * n)}
    return {
        "layers": list(layers),
        "coeff": coeff,
        "systems": systems,
        "unsteered": {"per_pair": results[0].per_pair[0].tolist(), "fluency": results[0].fluency[0]},
        "per_layer": [
            {"layer": layer, "per_pair": r.per_pair[0].tolist(), "fluency": r.fluency[0]}
            for layer, r in zip(layers, results[1:], strict=True)
        ],
        "prompted": {
            kind: {
                "per_pair": both.per_pair[0, s].tolist(),
                "fluency": float(((both.pos_logp + both.neg_logp) / 2)[0, s].mean()),
            }
            for kind, s in half.items()
        },
    }


def read_layer_scan(scan: dict[str, Any], max_drop: float) -> tuple[int, list[TraitScanRow]]:
    """The best layer of a :func:`layer_scan` and the scan's rows.

    Each row: ``layer``, ``margin`` and ``effect`` (margin increase over unsteered, nats/token),
    ``fluency_drop`` (unsteered minus steered fluency, nats/token) and ``coherent`` (drop <=
    ``max_drop``). The best layer follows :func:`steerlab.evaluate.selection.choose_layer`: the
    largest effect among coherent rows; when no row is coherent, the smallest fluency drop.
    """
    base = scan["unsteered"]
    base_margin = sum(base["per_pair"]) / len(base["per_pair"])
    rows: list[TraitScanRow] = []
    for r in scan["per_layer"]:
        margin = sum(r["per_pair"]) / len(r["per_pair"])
        drop = base["fluency"] - r["fluency"]
        rows.append(
            {
                "layer": r["layer"],
                "margin": margin,
                "effect": margin - base_margin,
                "fluency_drop": drop,
                "coherent": drop <= max_drop,
            }
        )
    best = choose_layer([ScanPoint(r["layer"], r["effect"], r["fluency_drop"]) for r in rows], max_drop)
    return best, rows


def sweep_margins(
    lm: Engine,
    pairs: Sequence[Pair],
    vector: torch.Tensor,
    controls: torch.Tensor,
    layer: int,
    coeffs: Sequence[float],
    positions: str,
    batch_size: int,
) -> dict[str, Any]:
    """The vector and its K random controls at ``layer``, every coefficient, as rows of one stream.

    ``vector`` ``[n_layers, d_model]``, ``controls`` ``[K, n_layers, d_model]`` (same per-layer norms,
    :func:`~steerlab.evaluate.controls.random_directions`). Returns ``{"coeffs", "real": {per_pair
    [n_coeffs][n], fluency [n_coeffs]}, "controls": [{margin [n_coeffs], fluency [n_coeffs]}] * K}``.
    """
    specs = [vector[layer]] + [c[layer] for c in controls]
    conditions = [[SteeringSpec(v, layer, 1.0, positions=positions)] for v in specs]
    results = condition_margins(lm, pairs, conditions, coeffs, batch_size=batch_size)
    return {
        "coeffs": [float(c) for c in coeffs],
        "layer": layer,
        "real": _result_doc(results[0]),
        "controls": [{"margin": r.mean, "fluency": r.fluency} for r in results[1:]],
    }


# --- statistics (pure) -----------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _sign(c: float) -> float:
    return 1.0 if c > 0 else -1.0 if c < 0 else 0.0


def margin_rows(scan: dict[str, Any], sweep: dict[str, Any], n_resamples: int, seed: int) -> list[TraitRow]:
    """One :class:`~steerlab.pipelines.trait_records.TraitRow` per coefficient of a :func:`sweep_margins`,
    read against the scan's unsteered and prompted margins (same pairs): the
    :meth:`~steerlab.evaluate.evidence.Evidence.to_dict` of
    :func:`~steerlab.evaluate.evidence.steering_evidence` of the change in margin (nats/token) from
    the unsteered model, intended up for c > 0 and down for c < 0 (one-sided p; two-sided at 0),
    compared with the positive persona prompt's change for c > 0 and the negative one's for c < 0
    (``vs_prompting``, None at 0), plus ``coeff``, ``fluency`` and ``fluency_drop`` (unsteered minus
    steered). ``random_effects``: one change per control. Intervals are None with fewer than 2 pairs.
    """
    base = torch.tensor(scan["unsteered"]["per_pair"], dtype=torch.float64)
    prompted = {k: torch.tensor(v["per_pair"], dtype=torch.float64) for k, v in scan["prompted"].items()}
    rows: list[TraitRow] = []
    for i, coeff in enumerate(sweep["coeffs"]):
        ev = steering_evidence(
            sweep["real"]["per_pair"][i],
            base,
            [c["margin"][i] for c in sweep["controls"]],  # margins.json keeps each control's mean
            intended=_sign(coeff),
            prompted=prompted["pos" if coeff > 0 else "neg"] if coeff != 0 else None,
            n_resamples=n_resamples,
            seed=seed,
        )
        fluency = sweep["real"]["fluency"][i]
        row = {
            "coeff": coeff,
            **ev.to_dict(),
            "fluency": fluency,
            "fluency_drop": scan["unsteered"]["fluency"] - fluency,
        }
        rows.append(row)  # type: ignore[arg-type]
    return rows


def reference_summary(scan: dict[str, Any], n_resamples: int, seed: int) -> TraitReference:
    """The unsteered and prompted margins of a scan (nats/token): ``{"unsteered": {margin,
    margin_ci95, fluency, per_pair}, "prompting": {"systems", "pos"|"neg": {margin, margin_ci95,
    effect, ci95}}}`` where a prompted ``effect`` is its change from unsteered (``ci95`` paired)."""
    base = scan["unsteered"]["per_pair"]
    out: dict[str, Any] = {
        "unsteered": {
            "margin": _mean(base),
            "margin_ci95": interval(base, n_resamples, seed),
            "fluency": scan["unsteered"]["fluency"],
            "per_pair": base,
        }
    }
    prompting: dict[str, Any] = {"systems": scan["systems"]}
    for kind, doc in scan["prompted"].items():
        deltas = [a - b for a, b in zip(doc["per_pair"], base, strict=True)]
        prompting[kind] = {
            "margin": _mean(doc["per_pair"]),
            "margin_ci95": interval(doc["per_pair"], n_resamples, seed),
            "effect": _mean(deltas),
            "ci95": interval(deltas, n_resamples, seed),
        }
    out["prompting"] = prompting
    return out


def trait_reading(name: str, entry: TraitEntry, max_drop: float) -> str:
    """One sentence read from a trait's evidence: the largest coherent positive coefficient's effect
    with its interval, its place against the random band, the per-pair spread and the prompting
    comparison (never the mean alone)."""
    rows = [r for r in entry["rows"] if r["coeff"] > 0 and r["fluency_drop"] <= max_drop]
    if not rows:
        return (
            f"{name}: no positive coefficient at layer {entry['best_layer']} kept the answers' likelihood within "
            f"{max_drop:g} nats/token of the unsteered model, so no steering effect is read."
        )
    r = max(rows, key=lambda r: r["coeff"])
    ci = r["ci95"]
    text = (
        f"{name}: adding the persona vector at layer {entry['best_layer']} with coefficient {r['coeff']:g} changes "
        f"the margin by {r['effect']:+.3f} nats/token"
        + (f" (95% CI {ci[0]:+.3f} to {ci[1]:+.3f})" if ci else "")
        + f", {r['verdict']}; {r['steerable_fraction']:.0%} of {len(r['per_pair'])} eval pairs moved towards "
        f"the trait and {r['anti_steerable_fraction']:.0%} away"
    )
    pos = entry["prompting"]["pos"]
    pci = pos["ci95"]
    text += f"; asking for the trait in the system prompt moves it by {pos['effect']:+.3f}" + (
        f" (95% CI {pci[0]:+.3f} to {pci[1]:+.3f})" if pci else ""
    )
    fci = r["vs_prompting_ci95"]
    if fci and None not in fci:
        text += f", so steering reaches {r['vs_prompting']:.0%} of prompting (95% CI {fci[0]:.0%} to {fci[1]:.0%})"
    else:
        text += ", an effect the pairs cannot tell from 0, so steering is not read as a fraction of it"
    return text + "."


def table_row(name: str, entry: TraitEntry | TraitFailure, max_drop: float) -> TraitTableRow:
    """One summary row of ``traits.csv`` for a trait's entry (sets ``entry["reading"]``): the reading's
    coefficient (the largest positive one within ``max_drop`` nats/token of fluency) with its margin,
    interval, random band and p, the effect, the per-pair fractions, the prompting fraction and the mean
    judged score; a failed trait's row has its ``error``."""
    if entry["status"] != "ok":
        return {"trait": name, "status": "failed", "error": entry["error"]}
    entry["reading"] = trait_reading(name, entry, max_drop)
    rows = [r for r in entry["rows"] if r["coeff"] > 0 and r["fluency_drop"] <= max_drop]
    r = max(rows, key=lambda r: r["coeff"]) if rows else {}
    rnd, ci = r.get("random") or {}, r.get("ci95") or [None, None]
    vs = r.get("vs_prompting_ci95") or [None, None]
    return {
        "trait": name,
        "status": "ok",
        "filter": entry["filter"],
        "effective_pairs": entry["effective_pairs"],
        "pairs_averaged": entry["pairs_averaged"],
        "eval_pairs": entry["n_eval_pairs"],
        "best_layer": entry["best_layer"],
        "unsteered": entry["unsteered"]["margin"],
        "coeff": r.get("coeff"),
        "margin": r.get("margin"),
        "effect": r.get("effect"),
        "effect_lo": ci[0],
        "effect_hi": ci[1],
        "random_lo": rnd.get("lo"),
        "random_hi": rnd.get("hi"),
        "p": rnd.get("p"),
        "alternative": rnd.get("alternative"),
        "steerable_fraction": r.get("steerable_fraction"),
        "anti_steerable_fraction": r.get("anti_steerable_fraction"),
        "vs_prompting": r.get("vs_prompting"),
        "vs_prompting_lo": vs[0],
        "vs_prompting_hi": vs[1],
        "score_mean": r.get("score_mean"),
    }
