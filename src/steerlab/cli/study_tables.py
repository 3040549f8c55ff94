"""Tables of a diff study's summary (``summary.json``) for the terminal: the blends (effect against
the blend weight at the best layer, with intervals and verdicts), the fine-tuning objectives (SFT vs DPO
directions and their steering) and a trait study's pairs. Results go to stdout."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from ..progress import results


def _pct_ci(value: float | None, ci: list | None) -> str:
    text = "n/a" if value is None else f"{value:.0%}"
    if ci and None not in ci:
        text += f" [{ci[0]:.0%}, {ci[1]:.0%}]"
    return text


def print_blends(blends: dict[str, Any]) -> None:
    """Per condition at the best layer, the effect at each blend weight (95% CI), the random band of the
    model-diff vector's norms, and which blends beat both pure vectors beyond their intervals."""
    best = blends["best_layer"]
    table = Table(
        title=f"blends alpha x contrastive + (1 - alpha) x model-diff at layer {best} (fraction of the gap [95% CI]; "
        "* beats both pure vectors beyond their intervals; (incoherent): fluency drop over the limit)"
    )
    table.add_column("condition")
    table.add_column("coeff", justify="right")
    for alpha in blends["alphas"]:
        table.add_column(f"alpha {alpha:g}", justify="right")
    table.add_column("random band", justify="right")
    for cell in blends["cells"]:
        if cell["layers"] != best:
            continue
        by_alpha = {p["alpha"]: p for p in cell["points"]}
        values = []
        for alpha in blends["alphas"]:
            p = by_alpha.get(alpha)
            if p is None:
                values.append("")
                continue
            mark = " *" if p["beats_both"] else "" if p["coherent"] else " (incoherent)"
            values.append(_pct_ci(p["effect"], p["ci95"]) + mark)
        band = next((p["random"] for p in cell["points"] if p.get("random")), None)
        label = "subtract from fine-tuned: undone" if cell["model"] == "finetuned" else "add to base: induced"
        table.add_row(label, f"{cell['coeff']:g}", *values, "—" if not band else f"{band['lo']:.0%}..{band['hi']:.0%}")
    results.print(table)
    results.print(blends["reading"], highlight=False)


def print_objectives(objectives: dict[str, Any]) -> None:
    """The SFT vs DPO directions at the SFT study's best layer and each fine-tune's best steering."""
    at = objectives["at_best_layer"]
    table = Table(
        title=f"fine-tuning objectives: cosine at layer {at['layer']} [95% CI] "
        f"(random band ±{objectives['random_band']:.3f})"
    )
    for col in ("directions", "cosine", "95% CI"):
        table.add_column(col, justify="right")
    for key, cos in at["cosine"].items():
        ci = at["cosine_ci95"].get(key)
        table.add_row(key.replace("|", " vs "), f"{cos:+.3f}", "—" if not ci else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]")
    results.print(table)
    for line in objectives["reading"]:
        results.print(f"- {line}", highlight=False)


def print_summary_parts(summary: dict[str, Any] | None) -> None:
    """The blends, objectives and trait parts of a diff study's summary, those it has."""
    if not summary:
        return
    if summary.get("trait"):
        for line in summary["trait"]["reading"]:
            results.print(f"- {line}", highlight=False)
    if summary.get("blends"):
        print_blends(summary["blends"])
    if summary.get("objectives"):
        print_objectives(summary["objectives"])
