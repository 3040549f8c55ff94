"""The demo's plain-language reading of its headline numbers (``summary.json``'s ``reading``): every
sentence derived from the evidence — intervals, the random band with its one-sided p and the verdict
that knows what K controls can resolve, the per-pair spread, the prompting baseline — never from a
mean alone."""

from __future__ import annotations

from ..evaluate.controls import cosine_verdict
from .records import DemoSummary, StudyPrompting, StudyRow


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def _interval(ci: list[float | None] | None) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "95% CI unbounded"
    return f"95% CI {ci[0]:.0%} to {ci[1]:.0%}"


def _effect_sentence(row: StudyRow, key: str, prompting: StudyPrompting | None) -> str:
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
        sided = "two-sided" if rnd.get("alternative", "greater") == "two-sided" else "one-sided"
        parts.append(
            f"random directions of the same norm: {_pct(rnd['mean'])} (band {_pct(rnd['lo'])} to "
            f"{_pct(rnd['hi'])}, {sided} p = {rnd['p']:.2g}) — {row['verdict']}"
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


def reading(s: DemoSummary, max_drop: float) -> list[str]:
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
    verdict = cosine_verdict(cos, ci, band)
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
    for vector in ("model_diff", "contrastive"):
        if f"{vector}|finetuned|all" not in s["best_steering"]:
            continue
        row = s["best_steering"][f"{vector}|finetuned|all"]
        name = vector.replace("_", "-")
        lines.append(
            f"Subtracting the {name} vector at all {s['n_layers']} layers (coefficient {row['coeff']:g} at each, "
            f"fluency drop {row['fluency_drop']:.2f} nats/token) undoes {_effect_sentence(row, 'undone', prompting)}."
            if row
            else f"Subtracting the {name} vector at all {s['n_layers']} layers stayed fluent at none of its "
            f"coefficients (fluency drop above {max_drop} nats/token at each)."
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
    if s.get("blends"):
        lines.append(s["blends"]["reading"])  # type: ignore[index]
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
