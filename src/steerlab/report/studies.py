"""Report sections for the diff study's further questions: blends of the two directions (effect against
the blend weight α with its interval and random band), the fine-tuning objectives (SFT vs DPO: their
directions, gaps and steering, the DPO study's evidence) and a trait's study (where its pairs came
from). Every plot shows its band; every effect its interval and verdict."""

from __future__ import annotations

import html
from typing import Any

from ..pipelines.study_records import BlendsDoc, ObjectivesDoc, TraitStudyDoc
from .html_parts import Section, fig_html, table_html

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def blends_figure(doc: BlendsDoc) -> str:
    """Undone (subtract from the fine-tuned model) and induced (add to the base) fraction against the
    blend weight α at the best layer, one line per coefficient: points with 95% bootstrap intervals
    (hollow where incoherent, a star where the blend beats both pure vectors beyond their intervals),
    and the shaded 2.5-97.5% band of random directions of the model-diff vector's norms (the same for
    every α of a coefficient: every blend has those norms)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    best = doc["best_layer"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("undone: subtract from fine-tuned", "induced: add to base"))
    coeffs = sorted({c["coeff"] for c in doc["cells"]})
    for col, model in enumerate(("finetuned", "base"), start=1):
        for cell in (c for c in doc["cells"] if c["model"] == model and c["layers"] == best):
            color = PALETTE[coeffs.index(cell["coeff"]) % len(PALETTE)]
            points = [p for p in cell["points"] if p["effect"] is not None]
            xs = [p["alpha"] for p in points]
            band = next((p["random"] for p in points if p.get("random")), None)
            if band and xs:
                lo, hi = min(xs), max(xs)
                fig.add_trace(
                    go.Scatter(
                        x=[lo, hi, hi, lo],
                        y=[band["lo"], band["lo"], band["hi"], band["hi"]],
                        fill="toself",
                        line={"width": 0},
                        fillcolor=_rgba(color, 0.12),
                        hoverinfo="skip",
                        name=f"random directions, c={cell['coeff']:g} (95% band)",
                        legendgroup=f"band{cell['coeff']}",
                        showlegend=col == 1,
                    ),
                    row=1,
                    col=col,
                )
            ci = [p["ci95"] or [None, None] for p in points]
            up = [(c[1] - p["effect"]) if c[1] is not None else 0 for p, c in zip(points, ci, strict=True)]
            down = [(p["effect"] - c[0]) if c[0] is not None else 0 for p, c in zip(points, ci, strict=True)]
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=[p["effect"] for p in points],
                    mode="lines+markers",
                    line={"color": color},
                    marker={
                        "symbol": [
                            "star" if p["beats_both"] else "circle" if p["coherent"] else "circle-open" for p in points
                        ],
                        "size": [14 if p["beats_both"] else 8 for p in points],
                    },
                    error_y={"type": "data", "visible": True, "array": up, "arrayminus": down},
                    hovertext=[p["verdict"] or "" for p in points],
                    name=f"coefficient {cell['coeff']:g} (95% CI)",
                    legendgroup=f"c{cell['coeff']}",
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="α (0: model-diff, 1: contrastive)", range=[-0.05, 1.05])
    fig.update_yaxes(title_text="fraction of the base → fine-tuned gap")
    fig.update_layout(
        title=f"blends α·contrastive + (1 − α)·model-diff at layer {best}: effect vs α, with intervals and the "
        "random band",
        template="plotly_white",
        height=460,
    )
    return fig_html(fig)


def blends_sections(doc: BlendsDoc) -> list[Section]:
    """The blend figure, its reading and a table of the blends that beat both pure vectors."""
    note = (
        "<p class='muted'>Each direction is normalised per layer and every blend is rescaled to the model-diff "
        "vector's norm (the norm the study gives every direction at its normalized scale), so α = 0 is the "
        "model-diff vector and α = 1 the contrastive vector at those norms; the random band is that of the "
        "model-diff vector's random directions. A blend beats both pure vectors when it is coherent and its "
        "effect lies above both pure vectors' 95% intervals under the same condition (intervals of the margin "
        "change over the held-out pairs, as fractions of the measured gap, which every condition compared "
        "shares).</p>"
    )
    reading = f"<p class='reading'>{html.escape(doc['reading'])}</p>"
    parts = note + reading + blends_figure(doc)
    if doc["winners"]:
        rows = [
            {
                "model": w["model"],
                "layers": w["layers"],
                "coeff": w["coeff"],
                "alpha": w["alpha"],
                "effect": w["effect"],
                "ci95": _interval(w["ci95"]),
                **{f"{name} up to": upper for name, upper in w["pure_upper"].items()},
                "verdict": w["verdict"],
            }
            for w in doc["winners"]
        ]
        parts += table_html(rows)
    return [("Blends of the two directions", parts)]


def _interval(ci: Any) -> str:
    if not ci:
        return "—"
    return "unbounded" if None in ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def objectives_sections(doc: ObjectivesDoc, dpo_evidence: str | None) -> list[Section]:
    """SFT vs DPO: the reading, a table of the cosines at the SFT study's best layer (with intervals
    and reliabilities), a table per objective (gap, best layer, training, best steering with its
    evidence), and the DPO study's effect figure (``dpo_evidence``, already rendered)."""
    at = doc["at_best_layer"]
    cosines = [
        {
            "directions": key.replace("|", " vs "),
            f"cosine at layer {at['layer']}": value,
            "95% CI": _interval(at["cosine_ci95"].get(key)),
            "random band": f"±{doc['random_band']:.3f}",
        }
        for key, value in at["cosine"].items()
    ]
    reliability = [{"direction": k, "split-half reliability": v} for k, v in at["reliability"].items()]
    steering = []
    for objective, per in doc["per_objective"].items():
        for vector_rows, label in ((per["steering"], per["vector"]), (per["contrastive"], "contrastive")):
            for model, row in vector_rows.items():
                if not row:
                    continue
                key = "undone" if model == "finetuned" else "induced"
                rnd = row.get("random") or {}
                steering.append(
                    {
                        "fine-tune": objective,
                        "gap": per["margins"]["gap"],
                        "vector": label,
                        "condition": "subtract from its fine-tuned model" if model == "finetuned" else "add to base",
                        "layer": per["best_layer"],
                        "coeff": row["coeff"],
                        key: row.get(key),
                        "ci95": _interval(row.get("ci95")),
                        "random band": f"[{rnd['lo']:.2f}, {rnd['hi']:.2f}]" if rnd else "—",
                        "verdict": row.get("verdict") or "—",
                    }
                )
    body = (
        "".join(f"<p>{html.escape(line)}</p>" for line in doc["reading"])
        + table_html(cosines)
        + table_html(reliability)
        + "<div class='scroll'>"
        + table_html(steering, [*dict.fromkeys(k for r in steering for k in r)] if steering else None)
        + "</div>"
    )
    out: list[Section] = [("Fine-tuning objectives: SFT vs DPO directions", body)]
    if dpo_evidence:
        out.append(("DPO fine-tune: effect, interval and random directions", dpo_evidence))
    return out


def trait_sections(doc: TraitStudyDoc) -> list[Section]:
    """Where a trait study's pairs came from: the reading, the split and the prompting instructions."""
    split = doc["split"]
    rows = [
        {"part": part, "questions": split["n_questions"][part], "pairs": split["n_pairs"][part]}
        for part in ("train", "heldout")
    ]
    warning = (
        "<p class='warning'>Unfiltered persona pairs (--no-filter): every pair of answers under the trait's "
        "positive and negative instructions, not only those the judge found to show the trait.</p>"
        if doc["filter"] == "none"
        else ""
    )
    body = (
        warning
        + "".join(f"<p>{html.escape(line)}</p>" for line in doc["reading"])
        + table_html(rows)
        + f"<p class='muted'>Split by question with seed {split['seed']} (held-out share "
        f"{split['heldout_fraction']:g}); the pairs are in {html.escape(split['file'])}, the persona answers in "
        "persona/.</p>"
    )
    return [(f"Trait study: {doc['name']}", body)]
