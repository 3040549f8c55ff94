"""Report figures for the evidence behind each steering effect (docs/design.md §7): the effect with its
bootstrap interval against the band of random same-norm directions, the per-pair distribution,
the prompting baseline and the position-resolved model diff. Every plot shows its band."""

from __future__ import annotations

from typing import Any

from ..pipelines.records import PositionsDoc, RandomDoc, StudyDoc
from .html_parts import Section, fig_html, table_html

COLORS = {"model_diff": "#d62728", "contrastive": "#1f77b4", "model_diff_dpo": "#ff7f0e", "persona": "#9467bd"}


def _color(vector: str) -> str:
    return COLORS.get(vector, "#2ca02c")


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def effect_figure(study: StudyDoc) -> str:
    """Undone (subtract from the fine-tuned model) and induced (add to the base) fraction vs
    coefficient at the best layer, per vector: points with 95% bootstrap intervals, the shaded
    2.5-97.5% band of random same-norm directions, and the prompting baseline as a dashed line."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    best, rows = study["best_layer"], study["rows"]
    prompting = study.get("prompting") or {}
    fig = make_subplots(rows=1, cols=2, subplot_titles=("undone: subtract from fine-tuned", "induced: add to base"))
    for col, (model, key) in enumerate((("finetuned", "undone"), ("base", "induced")), start=1):
        vectors = list(dict.fromkeys(r["vector"] for r in rows if r["stage"] == "sweep"))
        for vector in vectors:
            sel = sorted(
                (
                    r
                    for r in rows
                    if r["stage"] == "sweep"
                    and r["model"] == model
                    and r["vector"] == vector
                    and r["layers"] == best
                    and r["scale"] == ("raw" if not vector.startswith("model_diff_pos") else "normalized")
                ),
                key=lambda r: r["coeff"],
            )
            if not sel:
                continue
            xs = [r["coeff"] for r in sel]
            if all(r.get("random") for r in sel):
                lo, hi = [r["random"]["lo"] for r in sel], [r["random"]["hi"] for r in sel]
                fig.add_trace(
                    go.Scatter(
                        x=xs + xs[::-1],
                        y=hi + lo[::-1],
                        fill="toself",
                        line={"width": 0},
                        fillcolor=_rgba(_color(vector), 0.15),
                        hoverinfo="skip",
                        name=f"random directions, {vector}'s norm (95% band)",
                        legendgroup=f"band{vector}",
                        showlegend=col == 1,
                    ),
                    row=1,
                    col=col,
                )
            ys = [r[key] for r in sel]
            upper = [(r["ci95"][1] - r[key]) if r.get("ci95") and r["ci95"][1] is not None else 0 for r in sel]
            lower = [(r[key] - r["ci95"][0]) if r.get("ci95") and r["ci95"][0] is not None else 0 for r in sel]
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers",
                    line={"color": _color(vector)},
                    error_y={"type": "data", "array": upper, "arrayminus": lower, "visible": True},
                    name=f"{vector} (95% CI)",
                    legendgroup=vector,
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
        asked = prompting.get("finetuned_asked_opposite" if model == "finetuned" else "base_asked_behaviour")
        if asked and asked.get("effect") is not None:
            fig.add_hline(
                y=asked["effect"], line_dash="dash", line_color="black", row=1, col=col, annotation_text="prompting"
            )
    fig.update_xaxes(title_text="coefficient magnitude")
    fig.update_yaxes(title_text="fraction of the base → fine-tuned gap")
    fig.update_layout(
        title=f"effect vs coefficient at layer {best}, with intervals and the random band",
        template="plotly_white",
        height=460,
    )
    return fig_html(fig)


def per_pair_figure(study: StudyDoc, max_drop: float) -> str:
    """Per-pair margins (strip over a box) for the unsteered models, the prompting baseline and the
    best coherent coefficient of each vector at the best layer: the spread behind each mean."""
    import plotly.graph_objects as go

    best, rows = study["best_layer"], study["rows"]
    fig = go.Figure()
    for model, key in (("finetuned", "undone"), ("base", "induced")):
        # blends have their own figure (report.studies)
        for vector in dict.fromkeys(r["vector"] for r in rows if r["stage"] == "sweep" and r.get("alpha") is None):
            chosen = [
                r
                for r in rows
                if r["stage"] == "sweep"
                and r["model"] == model
                and r["vector"] == vector
                and r["layers"] == best
                and r.get(key) is not None
                and r.get("per_pair")
                and r["fluency_drop"] <= max_drop
            ]
            if not chosen:
                continue
            row = max(chosen, key=lambda r: r[key])
            label = f"{'subtract from ft' if model == 'finetuned' else 'add to base'}: {vector} c={row['coeff']:g}"
            fig.add_trace(
                go.Box(
                    y=row["per_pair"],
                    name=label,
                    boxpoints="all",
                    jitter=0.4,
                    pointpos=0,
                    marker_color=_color(vector),
                    hovertext=f"steerable {row['steerable_fraction']:.0%}, "
                    f"anti-steerable {row['anti_steerable_fraction']:.0%}",
                )
            )
    ref = study["reference"]
    for name in ("base", "finetuned"):
        fig.add_hline(y=ref[name], line_dash="dot", line_color="gray", annotation_text=f"{name} (unsteered)")
    fig.update_layout(
        title="per-pair margins at the best coherent coefficient (each dot is a held-out pair)",
        yaxis_title="margin (nats/token)",
        template="plotly_white",
        height=460,
        showlegend=False,
    )
    return fig_html(fig)


def evidence_table(study: StudyDoc) -> str:
    """Every sweep/ablation row with its interval, random band, p (with its sidedness), verdict and
    per-pair spread."""
    rows = []
    for r in study["rows"]:
        if r["stage"] not in ("sweep", "ablation"):
            continue
        key = "undone" if r["model"] == "finetuned" else "induced"
        rnd = r.get("random") or {}
        ci = r.get("ci95") or [None, None]
        rows.append(
            {
                "stage": r["stage"],
                "vector": r["vector"],
                "scale": r["scale"],
                "model": r["model"],
                "direction": r["direction"],
                "layers": r["layers"],
                "coeff": r["coeff"],
                key: r.get(key),
                "ci95": "unbounded" if None in ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]",
                "random band": f"[{rnd['lo']:.2f}, {rnd['hi']:.2f}] (k={rnd['k']})" if rnd else "—",
                "p": _p(rnd),
                "verdict": r.get("verdict") or "—",
                "steerable": r.get("steerable_fraction"),
                "anti-steerable": r.get("anti_steerable_fraction"),
                "vs prompting": r.get("vs_prompting"),
                "fluency_drop": r["fluency_drop"],
            }
        )
    cols = [
        "stage",
        "vector",
        "scale",
        "model",
        "direction",
        "layers",
        "coeff",
        "undone",
        "induced",
        "ci95",
        "random band",
        "p",
        "verdict",
        "steerable",
        "anti-steerable",
        "vs prompting",
        "fluency_drop",
    ]
    return table_html(rows, cols)


def _p(random: RandomDoc | None) -> str:
    """p with its sidedness (steering effects are tested one-sided, the intended way)."""
    if not random:
        return "—"
    sided = "two-sided" if random.get("alternative") == "two-sided" else "one-sided"
    return f"{random['p']:.2g} ({sided})"


def prompting_table(study: StudyDoc) -> str:
    """The prompting baseline: each model asked in its system prompt, its margin and gap fraction."""
    prompting = study.get("prompting")
    if not prompting:
        return "<p class='muted'>No prompting baseline in this run (pass --behaviour-prompt/--opposite-prompt).</p>"
    rows = []
    for key, label in (
        ("base_asked_behaviour", "base model, asked for the behaviour"),
        ("finetuned_asked_opposite", "fine-tuned model, asked for the opposite"),
    ):
        doc = prompting.get(key) or {}
        ci = doc.get("ci95") or [None, None]
        rows.append(
            {
                "condition": label,
                "margin": doc.get("margin"),
                "fraction of the gap": doc.get("effect"),
                "ci95": "unbounded" if None in ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]",
                "pairs moved": doc.get("steerable_fraction"),
            }
        )
    return (
        "<p>System prompts — behaviour: <i>"
        + _text(prompting["behaviour_system"])
        + "</i>; opposite: <i>"
        + _text(prompting["opposite_system"])
        + "</i></p>"
        + table_html(rows)
    )


def positions_section(positions: PositionsDoc) -> str:
    """Cosine per layer between the position-resolved model diff (tokens 0..k-1 of unrelated text)
    and the contrastive vector, each with its resampling interval, over the random band."""
    import plotly.graph_objects as go

    band = positions["random_band"]
    first = next(iter(positions["positions"].values()))
    layers = list(range(len(first["cosine_with_contrastive"])))
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=layers + layers[::-1],
            y=[band] * len(layers) + [-band] * len(layers),
            fill="toself",
            fillcolor="rgba(128,128,128,0.2)",
            line={"width": 0},
            hoverinfo="skip",
            name=f"random directions (95% |cos| < {band:.3f})",
        )
    )
    for i, doc in positions["positions"].items():
        ci = doc["ci95"]
        fig.add_trace(
            go.Scatter(
                x=layers,
                y=doc["cosine_with_contrastive"],
                mode="lines+markers",
                line={"dash": "dot" if i == "0" else "solid"},
                error_y={
                    "type": "data",
                    "visible": True,
                    "array": [hi - c for (lo, hi), c in zip(ci, doc["cosine_with_contrastive"], strict=True)],
                    "arrayminus": [c - lo for (lo, hi), c in zip(ci, doc["cosine_with_contrastive"], strict=True)],
                },
                name=f"position {i}" + (" (first token, kept apart)" if i == "0" else ""),
            )
        )
    fig.update_layout(
        title="position-resolved model diff vs the contrastive vector (cosine per layer, 95% CI)",
        xaxis_title="layer",
        yaxis_title="cosine",
        template="plotly_white",
        height=440,
    )
    return (
        f"<p>Fine-tuned − base activations at each of the first {positions['k']} tokens of "
        f"{positions['n_prompts']} built-in generic prompts ({_text(positions['inputs'])}), unrelated to the "
        f"behaviour (Minder et al. 2025). The study also steers with position {positions['best_position']}.</p>"
        + fig_html(fig)
    )


def _text(x: Any) -> str:
    import html

    return html.escape(str(x))


def evidence_sections(study: StudyDoc, positions: PositionsDoc | None) -> list[Section]:
    """The evidence sections of a diff study's report."""
    max_drop = study.get("config", {}).get("max_fluency_drop", 1.0)
    out: list[Section] = [
        ("Evidence: effect, interval and random directions", effect_figure(study)),
        ("Evidence: per-pair spread", per_pair_figure(study, max_drop)),
        ("Prompting baseline", prompting_table(study)),
        ("Evidence: every condition", "<div class='scroll'>" + evidence_table(study) + "</div>"),
    ]
    if study.get("comparisons"):
        out.append(
            (
                "Model-diff vs contrastive, paired on the same pairs",
                "<p class='muted'>Margin difference (model-diff minus contrastive at the model-diff vector's "
                "norms, nats/token) with a paired bootstrap 95% interval.</p>" + table_html(study["comparisons"]),
            )
        )
    if positions:
        out.append(("Position-resolved model diff", positions_section(positions)))
    return out
