"""The report's section for a vector readout (``steerlab inspect --out``, :mod:`steerlab.evaluate.readout`):
the vector's norm against the mean residual norm per layer, and per layer the tokens it promotes and
suppresses through the model's final norm and unembedding, with its cosine with the other vectors."""

from __future__ import annotations

import html
import json
from typing import Any

from .html_parts import fig_html, table_html


def _tokens(entries: list[dict[str, Any]]) -> str:
    """Tokens as JSON strings (quotes show leading spaces, escapes show newlines), as the CLI prints them."""
    return " ".join(json.dumps(e["token"], ensure_ascii=False) for e in entries)


def readout_figure(doc: dict[str, Any]) -> Any:
    """‖v‖ and the mean residual norm ‖h‖ per layer (log scale), and their ratio on a second axis."""
    import plotly.graph_objects as go

    rows = doc["layers"]
    layers = [r["layer"] for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=layers, y=[r["norm"] for r in rows], mode="lines+markers", name="‖v‖"))
    fig.add_trace(
        go.Scatter(x=layers, y=[r["residual_norm"] for r in rows], mode="lines+markers", name="mean ‖h‖ (reference)")
    )
    fig.add_trace(
        go.Scatter(
            x=layers,
            y=[r["relative_norm"] for r in rows],
            mode="lines",
            line={"dash": "dot"},
            name="‖v‖ / ‖h‖",
            yaxis="y2",
        )
    )
    fig.update_layout(
        title=f"{doc['name']}: norm per layer against the residual stream (layer L = output of block L)",
        xaxis_title="layer",
        yaxis={"title": "L2 norm (activation units)", "type": "log"},
        yaxis2={"title": "‖v‖ / ‖h‖", "overlaying": "y", "side": "right", "rangemode": "tozero"},
        template="plotly_white",
        height=380,
    )
    return fig


def readout_section(doc: dict[str, Any]) -> str:
    """A readout document as an HTML fragment: what was read and how, the norm plot, and one table
    row per layer (norms, promoted and suppressed tokens, cosine with each compared vector)."""
    vector = doc.get("vector") or {}
    reference = doc.get("reference") or {}
    source = vector.get("file") or doc["name"]
    intro = (
        f"<p>{html.escape(str(source))} read by {html.escape(str(doc['model']))}: "
        f"{html.escape(str(doc['lens']['formula']))} (final norm {html.escape(str(doc['lens']['final_norm']))}). "
        f"Promoted / suppressed: the {doc['top_k']} largest / smallest entries, most extreme first. "
        f"Mean residual norm over every token of {html.escape(str(reference.get('n_prompts', '?')))} reference "
        f"prompts ({html.escape(str(reference.get('prompts', '?')))}).</p>"
    )
    rows = []
    for r in doc["layers"]:
        row: dict[str, Any] = {
            "layer": r["layer"],
            "‖v‖": r["norm"],
            "mean ‖h‖": r["residual_norm"],
            "‖v‖/‖h‖": r["relative_norm"],
            "promoted": "(zero)" if r["zero"] else _tokens(r["promoted"]),
            "suppressed": "(zero)" if r["zero"] else _tokens(r["suppressed"]),
        }
        for name, value in r["cosine"].items():
            row[f"cos {name}"] = value
        rows.append(row)
    return intro + fig_html(readout_figure(doc)) + f"<div class='scroll'>{table_html(rows, fmt='{:.3g}')}</div>"
