"""``calibration.json`` from a calibration's measurements (:mod:`steerlab.pipelines.calibration`): each
point's evidence and verdict, each layer and direction's thresholds in three units, the recommended
layer and the reading. Pure: no model work."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ..evaluate.bisection import search_state
from ..evaluate.controls import min_controls
from ..evaluate.evidence import Evidence, steering_evidence
from ..evaluate.selection import ScanPoint, choose_layer
from .calibration_records import (
    CalibrationDoc,
    CalibrationPoint,
    CalibrationTrack,
    Recommended,
    bound,
    to_raw,
    track_reading,
    units,
)

DIRECTION_NAMES = {1: "add", -1: "subtract"}


def is_effective(ev: Evidence, p_max: float, min_effect: float = 0.0) -> bool:
    """Whether an effect is at least ``min_effect`` the intended way and lies beyond its random band
    that way with p <= ``p_max`` (the calibration's test; p one-sided the intended way,
    :func:`~steerlab.evaluate.evidence.alternative_for`)."""
    r = ev.random
    if r is None or ev.effect is None or not ev.intended:
        return False
    beyond = ev.effect > r["hi"] if ev.intended > 0 else ev.effect < r["lo"]
    return beyond and r["p"] <= p_max * (1 + 1e-9) and ev.intended * ev.effect >= min_effect


def evaluate_point(point: dict[str, Any], unsteered: dict[str, Any], config: Any, sign: int) -> dict[str, Any]:
    """One measured candidate read: its ``evidence`` (:func:`steering_evidence` of the margin change
    from unsteered against its controls, intended the direction's way), ``drop`` (fluency drop,
    nats/token), ``effective`` and ``fluent`` (drop <= ``max_fluency_drop`` and, where judged,
    coherence >= ``min_coherence``)."""
    ev = steering_evidence(
        point["per_pair"],
        unsteered["per_pair"],
        point["controls"],
        intended=sign,
        n_resamples=config.n_bootstrap,
        seed=config.seed,
    )
    drop = unsteered["fluency"] - point["fluency"]
    coherent = point.get("coherence") is None or point["coherence"] >= config.min_coherence
    return {
        "evidence": ev,
        "drop": drop,
        "effective": is_effective(ev, config.p_max, config.min_effect),
        "fluent": drop <= config.max_fluency_drop and coherent,
    }


def criterion(config: Any, judged: bool) -> dict[str, Any]:
    """What "effective" and "fluent" meant in this calibration, in words and numbers."""
    k = config.controls
    reaches = k >= min_controls(config.alpha)
    size = f"a margin change of at least {config.min_effect:g} nats/token the intended way, "
    effective = size + (
        f"beyond the band of {k} random directions of the vector's norm (one-sided p <= {config.alpha:g})"
        if reaches
        else f"outside all {k} random directions of the vector's norm (p = {1 / (k + 1):.2g}: with {k} controls "
        f"p cannot go below {1 / (k + 1):.2g} — use --controls {min_controls(config.alpha)} or more for a test at "
        f"{config.alpha:g})"
    )
    fluent = f"fluency drop <= {config.max_fluency_drop:g} nats/token"
    if judged:
        fluent += f" and judged coherence >= {config.min_coherence:g}"
    return {
        "effective": effective,
        "fluent": fluent,
        "alpha": config.alpha,
        "p_max": config.p_max,
        "min_effect": config.min_effect,
        "controls": k,
        "reaches_alpha": reaches,
        "max_fluency_drop": config.max_fluency_drop,
        "min_coherence": config.min_coherence if judged else None,
    }


def _track(
    layer: int, sign: int, norms: tuple[float, float], measured: dict[float, dict[str, Any]], unsteered, config
) -> CalibrationTrack:
    v_norm, h_norm = norms

    def convert(coeff: float):
        return units(to_raw(coeff, config.scale, v_norm, h_norm), v_norm, h_norm)

    read = {m: evaluate_point(p, unsteered, config, sign) for m, p in measured.items()}
    curve: list[CalibrationPoint] = []
    for m in sorted(measured):
        p, r = measured[m], read[m]
        curve.append(
            {
                "coeff": sign * m,
                "units": convert(sign * m),
                "step": p["step"],
                "margin": r["evidence"].level,
                "fluency": p["fluency"],
                "fluency_drop": r["drop"],
                "coherence": p.get("coherence"),
                "coherence_n": p.get("coherence_n", 0),
                "effective": r["effective"],
                "fluent": r["fluent"],
                "evidence": r["evidence"].to_dict(digits=5),  # type: ignore[typeddict-item]
            }
        )
    state = search_state({m: r["effective"] for m, r in read.items()}, {m: r["fluent"] for m, r in read.items()})
    top = read[state.c_max.value] if state.usable and state.c_max and state.c_max.value is not None else None
    track: CalibrationTrack = {
        "layer": layer,
        "direction": DIRECTION_NAMES[sign],  # type: ignore[typeddict-item]
        "vector_norm": v_norm,
        "residual_norm": h_norm,
        "c_min": bound(state.c_min, sign, convert),  # type: ignore[typeddict-item]
        "c_fluent": bound(state.c_fluent, sign, convert),  # type: ignore[typeddict-item]
        "c_max": bound(state.c_max, sign, convert),
        "usable": state.usable,
        "range": None,
        "effect_at_c_max": None if top is None else top["evidence"].effect,
        "ci95_at_c_max": None if top is None else top["evidence"].ci95,
        "verdict_at_c_max": None if top is None else top["evidence"].verdict,
        "fluency_drop_at_c_max": None if top is None else top["drop"],
        "reading": "",
        "curve": curve,
    }
    if state.usable and state.c_min.value is not None and state.c_max and state.c_max.value is not None:
        lo, hi = convert(sign * state.c_min.value), convert(sign * state.c_max.value)
        track["range"] = {s: [lo[s], hi[s]] for s in ("raw", "unit", "relative")}  # type: ignore[literal-required]
    return track


def recommend(tracks: list[CalibrationTrack], config: Any) -> Recommended | None:
    """The recommended layer and range: the one layer rule on each usable track's point at c_max
    (largest effect the intended way; every such point is fluent), the track with the largest
    effect at that layer; None when no track is usable."""
    usable = [t for t in tracks if t["usable"] and t["range"] is not None]
    if not usable:
        return None

    def effect(t: CalibrationTrack) -> float:
        e = t["effect_at_c_max"]
        return float("-inf") if e is None else (e if t["direction"] == "add" else -e)

    points = [ScanPoint(t["layer"], effect(t), t["fluency_drop_at_c_max"] or 0.0) for t in usable]
    layer = choose_layer(points, config.max_fluency_drop)
    best = max((t for t in usable if t["layer"] == layer), key=effect)
    rng = best["range"]
    assert rng is not None
    return {
        "layer": layer,
        "direction": best["direction"],
        "scale": config.scale,
        "range": list(rng[config.scale]),
        "units": {s: list(v) for s, v in rng.items()},
        "effect_at_c_max": best["effect_at_c_max"],
    }


def document(
    meta: dict[str, Any],
    config: Any,
    layers: list[int],
    norms: dict[int, tuple[float, float]],
    track_keys: list[tuple[int, int]],
    measured: list[dict[float, dict[str, Any]]],
    unsteered: dict[str, Any],
    plan: dict[str, int],
) -> CalibrationDoc:
    """The ``calibration.json`` document (:class:`~steerlab.pipelines.calibration_records.CalibrationDoc`)."""
    judged = meta.get("judge") is not None
    crit = criterion(config, judged)
    band = "beyond the random band" if crit["reaches_alpha"] else f"outside all {config.controls} random directions"
    short = f"effective (a change >= {config.min_effect:g} nats/token, {band})"
    tracks = [
        _track(layer, sign, norms[layer], measured[t], unsteered, config) for t, (layer, sign) in enumerate(track_keys)
    ]
    for track in tracks:
        track["reading"] = track_reading(track, config.scale, config.max_fluency_drop, short)
    recommended = recommend(tracks, config)
    if recommended is None:
        head = "no layer has a usable range: no coefficient was both effective and fluent at any candidate layer"
    else:
        lo, hi = recommended["range"]
        rel = recommended["units"]["relative"]
        head = (
            f"recommended: layer {recommended['layer']}, {recommended['direction']}, coefficients {lo:.3g} to "
            f"{hi:.3g} ({config.scale}; {rel[0]:.3g} to {rel[1]:.3g} of the residual norm)"
        )
    n = len(unsteered["per_pair"])
    unsteered_doc = {
        "margin": sum(unsteered["per_pair"]) / n,
        "fluency": unsteered["fluency"],
        **{k: unsteered[k] for k in ("coherence", "coherence_n") if k in unsteered},
    }
    return {
        **meta,  # type: ignore[typeddict-item]
        "config": {**asdict(config), "layers": layers},
        "criterion": crit,
        "unsteered": unsteered_doc,
        "tracks": tracks,
        "recommended": recommended,
        "reading": [head, *(t["reading"] for t in tracks)],
        "plan": plan,
        "timings": {},
    }


__all__ = ["criterion", "document", "evaluate_point", "is_effective", "recommend"]
