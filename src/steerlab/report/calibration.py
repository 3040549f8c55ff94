"""The report's calibration section and the plot ``steerlab calibrate`` writes beside ``calibration.json``
(:mod:`steerlab.pipelines.calibration`): per layer and direction, the margin change against |coefficient|
(log scale) with its interval and the random directions' band, the fluency drop on a second axis with
its bound, and the usable range shaded."""

from __future__ import annotations

import html
from typing import Any

from ..pipelines.calibration_records import CalibrationDoc, CalibrationTrack
from .html_parts import fig_html, table_html


def _label(track: CalibrationTrack) -> str:
    return f"layer {track['layer']}, {track['direction']}"


def calibration_figure(doc: CalibrationDoc, title: str | None = None) -> Any:
    """One row per layer and direction: margin change (nats/token, left axis; 95% interval bars, the
    random band shaded grey, effective points filled) and fluency drop (right axis, dotted, its bound
    dashed) against |coefficient| in the calibration's scale (log axis); the usable range shaded green."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    tracks = doc["tracks"]
    scale = doc["config"]["scale"]
    bound = doc["criterion"]["max_fluency_drop"]
    fig = make_subplots(
        rows=len(tracks),
        cols=1,
        subplot_titles=[_label(t) for t in tracks],
        specs=[[{"secondary_y": True}] for _ in tracks],
        vertical_spacing=min(0.08, 0.3 / max(len(tracks), 1)),
    )
    for i, track in enumerate(tracks, start=1):
        curve = track["curve"]
        x = [abs(p["coeff"]) for p in curve]
        ev = [p["evidence"] for p in curve]
        band = [e["random"] for e in ev]
        fig.add_trace(
            go.Scatter(
                x=x + x[::-1],
                y=[b["hi"] if b else None for b in band] + [b["lo"] if b else None for b in band][::-1],
                fill="toself",
                fillcolor="rgba(128,128,128,0.25)",
                line={"width": 0},
                hoverinfo="skip",
                name="random directions (2.5-97.5%)",
                legendgroup="band",
                showlegend=i == 1,
            ),
            row=i,
            col=1,
        )
        ci = [e["ci95"] or [None, None] for e in ev]
        effect = [e["effect"] for e in ev]
        fig.add_trace(
            go.Scatter(
                x=x,
                y=effect,
                mode="lines+markers",
                marker={
                    "symbol": ["circle" if p["effective"] else "circle-open" for p in curve],
                    "size": 8,
                    "color": "#1f77b4",
                },
                error_y={
                    "type": "data",
                    "visible": True,
                    "array": [(hi - e) if hi is not None else 0 for (_, hi), e in zip(ci, effect, strict=True)],
                    "arrayminus": [(e - lo) if lo is not None else 0 for (lo, _), e in zip(ci, effect, strict=True)],
                },
                text=[f"p = {e['random']['p']:.2g} ({e['alternative']}); {e['verdict']}" for e in ev],
                name="margin change (95% CI; filled: effective)",
                legendgroup="effect",
                showlegend=i == 1,
            ),
            row=i,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[p["fluency_drop"] for p in curve],
                mode="lines+markers",
                line={"dash": "dot", "color": "#d62728"},
                marker={"symbol": ["square" if p["fluent"] else "x" for p in curve]},
                name="fluency drop (x: not fluent)",
                legendgroup="fluency",
                showlegend=i == 1,
            ),
            row=i,
            col=1,
            secondary_y=True,
        )
        fig.add_hline(y=bound, line_dash="dash", line_color="#d62728", row=i, col=1, secondary_y=True)
        if track["range"] is not None:
            lo, hi = sorted(abs(c) for c in track["range"][scale])
            fig.add_vrect(x0=lo, x1=hi, fillcolor="rgba(44,160,44,0.15)", line_width=0, row=i, col=1)
        fig.update_yaxes(title_text="margin change", row=i, col=1, secondary_y=False)
        fig.update_yaxes(title_text="fluency drop", row=i, col=1, secondary_y=True)
        fig.update_xaxes(type="log", row=i, col=1)
    fig.update_xaxes(title_text=f"|coefficient| ({scale})", row=len(tracks), col=1)
    fig.update_layout(
        title=title or f"calibration of {doc['vector'].get('file') or 'the vector'} on {doc['model']}",
        template="plotly_white",
        height=260 + 300 * len(tracks),
    )
    return fig


def _cell(u: dict[str, float] | None) -> str:
    return "—" if u is None else f"{u['raw']:.3g} / {u['unit']:.3g} / {u['relative']:.3g}"


def calibration_table(doc: CalibrationDoc) -> list[dict[str, Any]]:
    """One row per layer and direction: the bounds in raw / unit / relative units, the evidence at c_max."""
    rows = []
    for t in doc["tracks"]:
        ci = t["ci95_at_c_max"]
        rows.append(
            {
                "layer": t["layer"],
                "direction": t["direction"],
                "c_min (raw / unit / relative)": _cell(t["c_min"]["value"]) + f" [{t['c_min']['status']}]",
                "c_max (raw / unit / relative)": _cell(t["c_max"]["value"] if t["c_max"] else None)
                + (f" [{t['c_max']['status']}]" if t["c_max"] else ""),
                "largest fluent": _cell(t["c_fluent"]["value"]),
                "margin change at c_max": "—"
                if t["effect_at_c_max"] is None
                else f"{t['effect_at_c_max']:+.3f}"
                + ("" if not ci or None in ci else f" [{ci[0]:+.3f}, {ci[1]:+.3f}]"),
                "verdict at c_max": t["verdict_at_c_max"] or "—",
                "points": len(t["curve"]),
            }
        )
    return rows


def calibration_section(doc: CalibrationDoc, title: str | None = None) -> str:
    """A calibration as an HTML fragment: the criterion, the reading, the table and the figure."""
    crit = doc["criterion"]
    plan = doc.get("plan", {})
    intro = (
        f"<p>Effective: {html.escape(crit['effective'])}. Fluent: {html.escape(crit['fluent'])}. Held-out pairs: "
        f"{doc['pairs']['n']} ({html.escape(str(doc['pairs'].get('source') or '-'))}); steering at "
        f"{html.escape(doc['config']['positions'])} positions; unsteered margin {doc['unsteered']['margin']:+.4f} "
        f"nats/token. Bisection: {plan.get('steps', '?')} steps, {plan.get('margin_calls', '?')} margin calls, "
        f"{plan.get('sequences', '?')} teacher-forced sequences.</p>"
    )
    reading = "<div class='reading'>" + "".join(f"<p>{html.escape(r)}</p>" for r in doc["reading"]) + "</div>"
    return intro + reading + table_html(calibration_table(doc)) + fig_html(calibration_figure(doc, title))


__all__ = ["calibration_figure", "calibration_section", "calibration_table"]
