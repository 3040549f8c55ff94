"""`steerlab report DIR`: one self-contained ``report.html`` for any run directory.

It renders whatever the directory holds — a demo, ``diff study`` (with its blends, fine-tuning
objectives and trait, :mod:`steerlab.report.studies`), ``persona extract`` or ``sweep`` run, the
vector readouts in ``readouts/*.json`` (``steerlab inspect --out``,
:func:`steerlab.pipelines.readouts.write_readouts`) and the calibrations in ``calibration.json``
files (``steerlab calibrate``; :func:`calibration_files`) — and says which parts are missing; it never
fails on a partial run. plotly.js is inlined once, so the page needs no network. A status element
(``#steerlab-status``) records, after the page's scripts ran, how many plots rendered and any
JavaScript errors (used by the browser test).
"""

from __future__ import annotations

import contextvars
import html
from pathlib import Path
from typing import Any

from ..errors import SteerlabError
from ..io.atomic import write_text
from ..io.files import file_problem, name_problem, read_json
from ..io.tables import cell_value, read_csv
from ..pipelines.artifacts import CALIBRATION, COMPARE, DIRECTIONS, POSITIONS, READOUTS_DIR, STUDY, SUMMARY
from ..pipelines.records import DirectionsDoc, MonitorDoc, StudyDoc, StudySample
from ..pipelines.runs import read_jsonl_rows
from ..pipelines.study import StudyResult
from ..pipelines.study_blends import blend_summary
from .calibration import calibration_section
from .evidence import effect_figure, evidence_sections
from .html_parts import Section
from .html_parts import fig_html as _fig
from .html_parts import table_html as _table
from .readout import readout_section
from .studies import blends_sections, objectives_sections, trait_sections

# Files that exist but could not be read while building one report (listed on the page, never fatal).
_UNREADABLE: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("unreadable", default=None)


def _unreadable(path: Path, why: object) -> None:
    problems = _UNREADABLE.get()
    if problems is not None:
        problems.append(f"{path.name} is unreadable ({why})")


def _load_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when it is absent or unreadable (then noted for the page)."""
    if file_problem(path) is not None:
        return None
    try:
        return read_json(path, "run file")
    except SteerlabError as exc:
        _unreadable(path, str(exc).rsplit(": ", 1)[-1])
        return None


def _load_csv(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV file with numbers parsed; [] when absent or unreadable (then noted)."""
    if file_problem(path) is not None:
        return []
    try:
        _, rows = read_csv(path, "run file")
        return [{k: cell_value(v) for k, v in row.items()} for _, row in rows]
    except SteerlabError as exc:
        _unreadable(path, str(exc).rsplit(": ", 1)[-1])
        return []


def _esc(text: Any) -> str:
    return html.escape(str(text))


# --- sections ---------------------------------------------------------------------------------
def cosine_section(comparison: DirectionsDoc, best_layer: int | None) -> str:
    """Cosine per layer between the vectors of a diff study, with the random band and reliabilities."""
    import plotly.graph_objects as go

    n = comparison["n_layers"]
    layers = list(range(n))
    band = comparison["baseline"]["band"]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=layers + layers[::-1],
            y=[band] * n + [-band] * n,
            fill="toself",
            fillcolor="rgba(128,128,128,0.2)",
            line={"width": 0},
            hoverinfo="skip",
            name=f"random directions (95% |cos| < {band:.3f})",
        )
    )
    intervals = comparison.get("cosine_ci95") or {}
    for pair, values in comparison["cosine"].items():
        ci = intervals.get(pair)
        error = (
            None
            if not ci
            else {
                "type": "data",
                "visible": True,
                "array": [hi - c for (_, hi), c in zip(ci, values, strict=True)],
                "arrayminus": [c - lo for (lo, _), c in zip(ci, values, strict=True)],
            }
        )
        label = pair.replace("|", " vs ") + (" (95% CI from resampling pairs)" if ci else "")
        fig.add_trace(go.Scatter(x=layers, y=values, mode="lines+markers", name=label, error_y=error))
    reliability = comparison.get("reliability") or {}
    for name, rel in reliability.items():
        fig.add_trace(
            go.Scatter(
                x=layers, y=rel["mean"], mode="lines", line={"dash": "dot"}, name=f"split-half reliability: {name}"
            )
        )
    if best_layer is not None:
        fig.add_vline(x=best_layer, line_dash="dash", line_color="black", annotation_text=f"best layer {best_layer}")
    fig.update_layout(
        title="cosine per layer (layer L = output of block L)",
        xaxis_title="layer",
        yaxis_title="cosine",
        yaxis_range=[-1.05, 1.05],
        template="plotly_white",
        height=460,
    )
    return _fig(fig)


def study_sections(study: StudyDoc) -> list[Section]:
    """The steering study: margin vs coefficient per condition, layer scan, ablation and samples."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    ref, rows, best = study["reference"], study["rows"], study["best_layer"]
    out: list[Section] = []
    gap = ref["finetuned"] - ref["base"]
    intro = (
        f"<p>Behaviour margin on held-out pairs (mean log-likelihood per token of the behaviour answer minus "
        f"the other): base <b>{ref['base']:+.4f}</b>, fine-tuned <b>{ref['finetuned']:+.4f}</b> "
        f"(gap {gap:+.4f}). Best layer for the model-diff vector: <b>{best}</b>.</p>"
    )
    fig = make_subplots(rows=1, cols=2, subplot_titles=("subtract from fine-tuned", "add to base"))
    colors = {"model_diff": "#d62728", "contrastive": "#1f77b4"}
    for col, model in ((1, "finetuned"), (2, "base")):
        for vector in ("model_diff", "contrastive"):
            for layer_set, dash in ((best, "solid"), ("all", "dot")):
                sel = sorted(
                    (
                        r
                        for r in rows
                        if r["stage"] == "sweep"
                        and r["model"] == model
                        and r["vector"] == vector
                        and r["scale"] == "raw"
                        and r["layers"] == layer_set
                    ),
                    key=lambda r: r["coeff"],
                )
                if not sel:
                    continue
                fig.add_trace(
                    go.Scatter(
                        x=[r["coeff"] for r in sel],
                        y=[r["margin"] for r in sel],
                        mode="lines+markers",
                        line={"color": colors[vector], "dash": dash},
                        name=f"{vector} @ {f'layer {layer_set}' if layer_set != 'all' else 'all layers'}",
                        legendgroup=f"{vector}{layer_set}",
                        showlegend=col == 1,
                    ),
                    row=1,
                    col=col,
                )
        for name, value in (("base", ref["base"]), ("fine-tuned", ref["finetuned"])):
            fig.add_hline(y=value, line_dash="dash", line_color="gray", annotation_text=name, row=1, col=col)
    # log axis: the all-layers sweep's coefficients are per layer, often far below one layer's; the
    # unsteered margins are the dashed lines
    fig.update_xaxes(title_text="coefficient magnitude per steered layer (raw vector)", type="log")
    fig.update_yaxes(title_text="margin")
    fig.update_layout(title="margin vs coefficient per layer and method", template="plotly_white", height=460)
    out.append(("Steering with the two directions", intro + _fig(fig)))

    scan = [r for r in rows if r["stage"] == "layer_scan"]
    if scan:
        fig = go.Figure()
        for vector in ("model_diff", "contrastive"):
            sel = sorted((r for r in scan if r["vector"] == vector), key=lambda r: int(r["layers"]))
            fig.add_trace(
                go.Bar(
                    x=[int(r["layers"]) for r in sel],
                    y=[r["undone"] for r in sel],
                    name=vector,
                    marker_color=colors[vector],
                )
            )
        fig.update_layout(
            title="fraction of the fine-tuning gap undone by subtracting each vector (coefficient 1)",
            xaxis_title="layer",
            yaxis_title="undone",
            template="plotly_white",
            barmode="group",
            height=380,
        )
        out.append(("Layer scan", _fig(fig)))
    table_rows = [r for r in rows if r["stage"] in ("sweep", "ablation") and r["scale"] == "raw"]
    cols = ["stage", "vector", "model", "direction", "layers", "coeff", "margin", "undone", "induced", "fluency_drop"]
    out.append(
        (
            "All conditions (raw scale)",
            "<p class='muted'>undone = (fine-tuned − steered) / gap; induced = "
            "(steered − base) / gap; fluency_drop = fall in mean log-likelihood of both answers (nats/token), "
            "a judge-free incoherence signal.</p>" + _table(table_rows, cols),
        )
    )
    if study.get("samples"):
        out.append(("Sample generations", samples_table(study["samples"])))
    return out


def samples_table(samples: list[StudySample] | list[dict[str, Any]]) -> str:
    """Side by side: one column per condition, one row per question."""
    conditions: list[str] = []
    by_question: dict[str, dict[str, str]] = {}
    for s in samples:
        label = s["model"] if not s.get("vector") else f"{s['model']} {s['vector']} {s['coeff']:+g} @ L{s['layer']}"
        if label not in conditions:
            conditions.append(label)
        by_question.setdefault(s["question"], {})[label] = s["text"]
    head = "<th>question</th>" + "".join(f"<th>{_esc(c)}</th>" for c in conditions)
    body = "".join(
        f"<tr><td><b>{_esc(q)}</b></td>" + "".join(f"<td>{_esc(texts.get(c, ''))}</td>" for c in conditions) + "</tr>"
        for q, texts in by_question.items()
    )
    table = f"<table class='samples'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f"<div class='scroll'>{table}</div>"


def sweep_sections(run: Path) -> list[Section]:
    """A sweep: margin and judged score vs coefficient per layer, and generations per coefficient."""
    from .plots import margin_vs_coeff_figure, score_vs_coeff_figure

    out: list[Section] = []
    margins = _load_csv(run / "margins.csv")
    if margins:
        out.append(("Sweep: behaviour margin", _fig(margin_vs_coeff_figure(margins)) + _table(margins)))
    scores = _load_csv(run / "scores.csv")
    if scores:
        out.append(("Sweep: judged scores", _fig(score_vs_coeff_figure(scores)) + _table(scores)))
    gens_path = run / "generations.jsonl"
    if gens_path.is_file():
        rows = read_jsonl_rows(gens_path)
        samples = [
            {
                "model": f"layer {r['layer']}",
                "vector": "v",
                "coeff": r["coeff"],
                "layer": r["layer"],
                "question": r["question"],
                "text": r["text"],
            }
            for r in rows
            if r.get("question_index", 0) < 4
        ]
        out.append(("Sweep: generations per coefficient", samples_table(samples)))
    return out


def persona_sections(run: Path) -> list[Section]:
    """A persona run: judged responses (trait and coherence boxes) and the effective-pair counts."""
    import plotly.graph_objects as go

    out: list[Section] = []
    pairs = _load_json(run / "pairs.json")
    judged = read_jsonl_rows(run / "judged.jsonl") if (run / "judged.jsonl").is_file() else []
    if judged:
        fig = go.Figure()
        for kind, name in (("pos", "positive persona"), ("neg", "negative persona")):
            for key, label in (("trait_score", "trait"), ("coherence", "coherence")):
                values = [r[key] for r in judged if r["kind"] == kind and r[key] is not None]
                fig.add_trace(go.Box(y=values, name=f"{name}: {label}", boxpoints="all"))
        unscored = sum(r["trait_score"] is None for r in judged)
        fig.update_layout(title="judged persona responses (0-100)", template="plotly_white", height=420)
        note = (
            f"<p>{len(judged)} responses judged; {unscored} got no score (the judge put < 25% probability on "
            "numbers — with a small local judge this is expected and is reported, not hidden).</p>"
        )
        out.append(("Persona pipeline: judged responses", note + _fig(fig)))
    if pairs:
        out.append(("Persona pipeline: effective pairs", _table([pairs["counts"]])))
    manifest = _load_json(run / "vectors" / "manifest.json")
    if manifest or (pairs and pairs.get("filter") == "none"):
        out.append(("Persona vectors", persona_vectors_section(manifest or {}, pairs or {})))
    return out


def persona_vectors_section(manifest: dict[str, Any], pairs: dict[str, Any]) -> str:
    """The persona vector files and how their pairs were chosen; a notice when they are unfiltered.

    ``manifest``: ``vectors/manifest.json`` (``metadata.filter`` is ``"none"`` for ``--no-filter``
    vectors); ``pairs``: ``pairs.json`` (its ``filter`` field, and ``counts``).
    """
    meta = manifest.get("metadata", {})
    unfiltered = meta.get("filter", pairs.get("filter")) == "none"
    parts = []
    if unfiltered:
        counts = pairs.get("counts", {})
        unscored = (
            f"; the judge could not score {meta['n_unscored_answers']} of {meta['n_answers']} answers"
            if "n_answers" in meta
            else ""
        )
        parts.append(
            f"<p class='warning'><b>Unfiltered persona vectors</b> (--no-filter): they average all "
            f"{_esc(manifest.get('n_pairs', len(pairs.get('pairs', []))))} (positive, negative) pairs, not only the "
            f"effective ones ({_esc(meta.get('n_effective', counts.get('effective', '?')))} would pass the filter"
            f"{_esc(unscored)}). Read them as the direction between the two system prompts' answers, not as a "
            "judged trait direction.</p>"
        )
    elif meta:
        t = meta.get("threshold")
        parts.append(
            f"<p>Filtered as persona-vectors: {_esc(manifest.get('n_pairs'))} effective pairs (positive "
            f"answer's trait score &ge; {_esc(t)}, negative's &lt; {_esc(100 - t if t is not None else '?')}, "
            f"both coherence &ge; {_esc(meta.get('min_coherence'))}).</p>"
        )
    files = [{"reduction": r, "file": f"vectors/{name}"} for r, name in manifest.get("vectors", {}).items()]
    if files:
        parts.append(_table(files))
    return "".join(parts)


def monitor_section(doc: MonitorDoc) -> str:
    """Projection monitoring: box plots of projections per group."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for group, values in doc["groups"].items():
        fig.add_trace(go.Box(y=values, name=group, boxpoints="all"))
    fig.update_layout(
        title=doc.get("title", "projections on the vector"),
        yaxis_title="(a·v)/‖v‖",
        template="plotly_white",
        height=420,
    )
    return _fig(fig) + _table(doc.get("summary", []))


def traits_sections(doc: dict[str, Any]) -> list[Section]:
    """The multi-trait study (``traits.json``, or a summary's ``traits``): a summary table with each
    trait's reading, the trait × trait cosine heatmap per layer (slider) with the random band, and per
    trait the margin vs coefficient with its interval and random-control bands, the per-pair margins
    and the judged score when there is one."""
    from .plots import trait_cosine_figure, trait_steering_figure

    entries = {k: v for k, v in doc.items() if isinstance(v, dict) and "status" in v}
    out: list[Section] = []
    summary = []
    for name, e in entries.items():
        if e["status"] != "ok":
            summary.append({"trait": name, "status": "failed", "reading": e.get("error")})
            continue
        summary.append(
            {
                "trait": name,
                "status": "ok",
                "pairs": e["pairs_averaged"],
                "filter": e["filter"],
                "eval pairs": e["n_eval_pairs"],
                "best layer": e["best_layer"],
                "reading": e.get("reading", ""),
            }
        )
    note = (
        "<p class='muted'>Effect: change in the judge-free behaviour margin (nats/token) from the unsteered model, "
        "on eval pairs (the model's own answers to held-out questions under the positive and negative persona "
        "prompts). Each coefficient carries a bootstrap 95% interval over pairs, the band of same-norm random "
        "directions under the same condition (2.5-97.5%, empirical p), the fractions of pairs moved towards / "
        "away from the trait, and the effect as a fraction of asking for the trait (or its opposite) in the "
        "system prompt.</p>"
    )
    out.append(("Multi-trait study", note + _table(summary)))
    cosine = doc.get("cosine")
    if cosine:
        band = cosine["random_band"]
        text = (
            f"<p>Random band: |cos| of two unrelated directions in {band['d_model']} dimensions lies below "
            f"<b>{band['band']:.3f}</b> in 95% of draws (expected {band['expected_abs_cos']:.3f}); cosines inside "
            "it are not distinguishable from unrelated directions. Move the slider to change layer; hover for "
            "each cell's resampling interval.</p>"
        )
        out.append(("Trait × trait cosine per layer", text + _fig(trait_cosine_figure(cosine))))
    cols = [
        "coeff",
        "effect",
        "ci95",
        "random",
        "verdict",
        "margin",
        "steerable_fraction",
        "anti_steerable_fraction",
        "vs_prompting",
        "vs_prompting_ci95",
        "score_mean",
        "score_ci95",
        "score_random",
    ]
    for name, e in entries.items():
        if e["status"] != "ok":
            continue
        rows = [{c: _short(r.get(c)) for c in cols} for r in e["rows"]]
        scan = ", ".join(
            f"L{r['layer']}: {r['effect']:+.3f}" + ("" if r["coherent"] else " (incoherent)")
            for r in e["layer_scan"]["rows"]
        )
        head = (
            f"<p>Best layer {e['best_layer']} from a scan at coefficient {e['layer_scan']['coeff']:g} (margin "
            f"increase; fluency drop &le; {e['layer_scan']['max_fluency_drop']:g} nats/token): {_esc(scan)}.</p>"
        )
        if e.get("filter") == "none":
            head += "<p class='warning'>Unfiltered persona vector (--no-filter): every pair averaged.</p>"
        table = f"<div class='scroll'>{_table(rows)}</div>"
        out.append((f"Trait: {name}", head + _fig(trait_steering_figure(name, e)) + table))
    return out


def _short(value: Any) -> Any:
    """Table cell text for lists and dicts of numbers (intervals, random bands)."""
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
    return value


# --- page -----------------------------------------------------------------------------------------
STATUS_SCRIPT = """
<script>
(function () {
  var status = document.getElementById('steerlab-status');
  var errors = [];
  window.addEventListener('error', function (e) { errors.push(String(e.message)); update(); });
  function update() {
    var plots = document.querySelectorAll('.plot .js-plotly-plot');
    var rendered = Array.prototype.filter.call(plots, function (p) { return p.querySelector('.main-svg'); });
    status.setAttribute('data-plots', String(plots.length));
    status.setAttribute('data-rendered', String(rendered.length));
    status.setAttribute('data-errors', JSON.stringify(errors));
  }
  window.addEventListener('load', function () { setTimeout(update, 0); });
})();
</script>
"""

CSS = """
body { font-family: system-ui, -apple-system, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.3rem; margin-top: 2.2rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.6rem 0; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } .muted { color: #666; } .scroll { overflow-x: auto; }
table.samples td { min-width: 12rem; }
.reading { background: #f7f9fc; border-left: 4px solid #4a78c2; padding: 0.6rem 1rem; }
.missing { color: #a15c00; }
.warning { background: #fff6e5; border-left: 4px solid #d08a00; padding: 0.6rem 1rem; }
"""


def build_report(run_dir: str | Path) -> tuple[Path, list[str]]:
    """Write ``DIR/report.html`` from whatever the run directory holds; returns (path, missing parts)."""

    run = Path(run_dir)
    problem = name_problem(run)
    if problem is None and not run.is_dir():
        problem = "not a directory"
    if problem is not None:
        raise SteerlabError(f"report {run}: {problem} (expected a run directory)")
    problems: list[str] = []
    token = _UNREADABLE.set(problems)
    try:
        return _build(run, problems)
    finally:
        _UNREADABLE.reset(token)


def _study(doc: dict[str, Any]) -> StudyDoc | None:
    """A ``study.json`` document with layers as numbers (also one written before they were); None
    when it is not a study."""
    try:
        return StudyResult.from_dict(doc).to_dict()  # type: ignore[return-value]
    except (KeyError, TypeError, ValueError):
        return doc if "rows" in doc else None


def _further(diff_dir: Path, study: StudyDoc) -> list[Section]:
    """The diff study's further questions, those the run answered: blends (from ``study.json``), the
    fine-tuning objectives (``summary.json``'s ``objectives`` and ``study_dpo.json``) and a trait study
    (``summary.json``'s ``trait``)."""
    out: list[Section] = []
    summary = _load_json(diff_dir / SUMMARY)
    summary = summary if isinstance(summary, dict) else {}
    if summary.get("trait"):
        out += trait_sections(summary["trait"])
    blends = blend_summary(study)
    if blends:
        out += blends_sections(blends)
    if summary.get("objectives"):
        dpo = _load_json(diff_dir / STUDY.replace(".json", "_dpo.json"))
        dpo = _study(dpo) if isinstance(dpo, dict) else None
        out += objectives_sections(summary["objectives"], effect_figure(dpo) if dpo else None)
    return out


def calibration_files(run: Path) -> list[Path]:
    """The ``calibration.json`` files of a run directory: its own and those up to two folders down
    (e.g. a demo's ``calibration/<vector>/``, a sweep's ``calibration/``)."""
    found: list[Path] = []
    for pattern in (CALIBRATION, f"*/{CALIBRATION}", f"*/*/{CALIBRATION}"):
        found += sorted(p for p in run.glob(pattern) if p.is_file())
    return found


def _guard(missing: list[str], what: str, make: Any, *args: Any) -> list[Section]:
    """Sections from ``make(*args)``; a file of the wrong shape lists ``what`` as unreadable instead."""
    try:
        out = make(*args)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError, ZeroDivisionError) as exc:
        missing.append(f"{what} (unreadable: {type(exc).__name__} {exc})")
        return []
    return out if isinstance(out, list) else [out]


def _build(run: Path, problems: list[str]) -> tuple[Path, list[str]]:
    import plotly.offline

    summary = _load_json(run / "summary.json")
    if summary is not None and not isinstance(summary, dict):
        problems.append("summary.json is unreadable (expected a JSON object)")
    summary = summary if isinstance(summary, dict) else {}
    sections: list[Section] = []
    missing: list[str] = []

    diff_dir = run / "diff" if (run / "diff").is_dir() else run
    # directions.json; compare.json in diff studies run before it was renamed (not steerlab compare's)
    comparison = _load_json(diff_dir / DIRECTIONS)
    if comparison is None and isinstance(old := _load_json(diff_dir / COMPARE), dict) and "reliability" in old:
        comparison = old
    study = _load_json(diff_dir / STUDY)
    study = _study(study) if isinstance(study, dict) else None
    if isinstance(comparison, dict) and "cosine" in comparison:
        sections += _guard(
            missing,
            f"vector comparison ({DIRECTIONS})",
            lambda: [
                (
                    "Do the two directions match? Cosine per layer",
                    cosine_section(comparison, study.get("best_layer") if study else None),
                )
            ],
        )
    else:
        missing.append(f"vector comparison ({DIRECTIONS})")
    if study:
        sections += _guard(missing, "steering study (study.json)", study_sections, study)
        sections += _guard(
            missing,
            "steering evidence (study.json, positions.json)",
            evidence_sections,
            study,
            _load_json(diff_dir / POSITIONS),
        )
        sections += _guard(missing, "further questions (summary.json, study_dpo.json)", _further, diff_dir, study)
    else:
        missing.append("steering study (study.json)")

    persona_dir = run / "persona" if (run / "persona").is_dir() else run
    persona = _guard(missing, "persona pipeline (judged.jsonl, pairs.json)", persona_sections, persona_dir)
    sections += persona
    traits = _load_json(run / "traits.json") or _load_json(run / "traits" / "traits.json") or summary.get("traits")
    if traits:
        sections += _guard(missing, "multi-trait study (traits.json)", traits_sections, traits)
    if not persona and not traits:
        missing.append("persona pipeline (judged.jsonl, pairs.json)")

    monitor = _load_json(run / "monitor.json")
    if monitor:
        sections += _guard(
            missing, "monitoring (monitor.json)", lambda: [("Monitoring: projections", monitor_section(monitor))]
        )
    else:
        missing.append("monitoring (monitor.json)")

    for path in sorted((run / READOUTS_DIR).glob("*.json")):
        doc = _load_json(path)
        if isinstance(doc, dict):
            sections += _guard(
                missing,
                f"vector readout ({READOUTS_DIR}/{path.name})",
                lambda doc=doc: [(f"Vector readout: {doc['name']}", readout_section(doc))],
            )

    for path in calibration_files(run):
        doc = _load_json(path)
        if isinstance(doc, dict) and "tracks" in doc:
            where = path.parent.relative_to(run).as_posix()
            title = "Calibration" + ("" if where == "." else f": {where}")
            sections += _guard(
                missing,
                f"calibration ({path.relative_to(run)})",
                lambda doc=doc, t=title: [(t, calibration_section(doc))],
            )

    sweep_dir = run / "sweep" if (run / "sweep").is_dir() else run
    sections += _guard(missing, "sweep (margins.csv, scores.csv, generations.jsonl)", sweep_sections, sweep_dir)
    missing += problems

    reading = summary.get("reading") if isinstance(summary.get("reading"), list) else None
    head = [f"<h1>steerlab report</h1><p class='muted'>{_esc(run.resolve())}"]
    if summary:
        head.append(
            f" · model {_esc(summary.get('model'))} · judge {_esc(summary.get('judge'))}"
            f" · steerlab {_esc(summary.get('steerlab_version'))}"
        )
    head.append("</p>")
    if reading:
        head.append(
            "<div class='reading'><h3>Reading of the results</h3>"
            + "".join(f"<p>{_esc(p)}</p>" for p in reading)
            + "</div>"
        )
    if isinstance(summary.get("timings"), dict):
        head.append("<h3>Timings (s)</h3>" + _table([summary["timings"]], fmt="{:.1f}"))
    if missing:
        head.append("<p class='missing'>Not in this run directory: " + _esc(", ".join(missing)) + ".</p>")
    body = "".join(head) + "".join(f"<h2>{_esc(t)}</h2>{h}" for t, h in sections)
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>steerlab report</title>"
        f"<style>{CSS}</style><script>{plotly.offline.get_plotlyjs()}</script></head><body>"
        f"<div id='steerlab-status' data-plots='0' data-rendered='0' data-errors='[]'></div>{body}"
        f"{STATUS_SCRIPT}</body></html>"
    )
    path = run / "report.html"
    write_text(path, page)
    return path, missing
