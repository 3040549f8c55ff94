"""The model work of a calibration (:mod:`steerlab.pipelines.calibration`): each bisection step's
candidates — every layer and direction, the vector and its K random directions — as rows of ONE
:func:`~steerlab.evaluate.margin.condition_margins` call (the unsteered margins join step 0), with a
judge ONE generation call whose answers are judged for coherence; each step one checkpoint of the run
(:meth:`steerlab.io.runs.Stage.run_items`)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..evaluate.bisection import bisect, geometric_grid
from ..evaluate.controls import random_directions
from ..evaluate.margin import condition_margins
from ..judge import judge_coherence
from ..steering.steerer import SteeringSpec
from ..vectors.vector import SteeringVector
from .calibration_doc import evaluate_point
from .calibration_records import SIGNS

log = logging.getLogger("steerlab")
DEFAULT_RANGE = (0.005, 5.0)  # the search range, in relative units (times the mean residual norm)


class Search:
    """The bisection's model work (see the module docstring) for ``tracks`` = (layer, sign) pairs of
    ``layers`` and the configured direction(s); :meth:`run` returns the measurements."""

    def __init__(self, lm, vector, pairs, prompts, layers, norms, h_norms, config, judge) -> None:
        self.lm, self.vector, self.pairs, self.prompts, self.config, self.judge = (
            lm, vector, pairs, prompts, config, judge,
        )  # fmt: skip
        signs = [1, -1] if config.direction == "both" else [SIGNS[config.direction]]
        self.tracks = [(layer, sign) for layer in layers for sign in signs]
        self.norms = norms
        self.reference = h_norms if config.scale == "relative" else None
        self.controls = [SteeringVector(d) for d in random_directions(vector, config.controls, config.seed)]

    def spec(self, direction: SteeringVector, layer: int, **kwargs: Any) -> SteeringSpec:
        """``direction`` added at ``layer`` at the calibration's positions and scale (coefficient 1 unless
        ``coeff`` is given; further SteeringSpec fields in ``kwargs``)."""
        c = self.config
        return SteeringSpec(direction, layer, kwargs.pop("coeff", 1.0), positions=c.positions, scale=c.scale, **kwargs)

    def initial(self, layer: int) -> list[float]:
        """Step 0's magnitudes at ``layer``: the grid over the search range (in ``scale`` units)."""
        c = self.config
        if c.search_range is not None:
            lo, hi = c.search_range
        else:  # the default range is relative: 0.005..5 x the residual norm, in scale units
            v, h = self.norms[layer]
            per = {"raw": h / v, "unit": h, "relative": 1.0}[c.scale]
            lo, hi = DEFAULT_RANGE[0] * per, DEFAULT_RANGE[1] * per
        return geometric_grid(lo, hi, c.grid)

    def run(self, stage: Any) -> tuple[list[dict[float, dict[str, Any]]], dict[str, Any], dict[str, int]]:
        """Every step (:func:`~steerlab.evaluate.bisection.bisect`); returns the measurements per track
        ({magnitude: point}), the unsteered reference and the plan (steps, engine calls, rows)."""
        c = self.config
        measured: list[dict[float, dict[str, Any]]] = [{} for _ in self.tracks]
        unsteered: dict[str, Any] = {}
        plan = {"steps": 0, "margin_calls": 0, "sequences": 0, "generations": 0, "judge_calls": 0}

        def evaluate(step: int, pending: dict[int, list[float]]) -> dict[int, dict[float, tuple[bool, bool]]]:
            item = {"key": f"step{step}", "step": step, "candidates": {str(t): ms for t, ms in pending.items()}}
            (row,) = stage.run_items([item], lambda items: [self.measure(items[0])], chunk=1)  # a checkpoint
            unsteered.update(row.get("unsteered") or {})
            for point in row["points"]:
                measured[point["track"]][float(point["magnitude"])] = point
            for key in ("sequences", "generations", "judge_calls"):
                plan[key] += row[key]
            plan["margin_calls"] += 1
            out: dict[int, dict[float, tuple[bool, bool]]] = {}
            for t, ms in pending.items():
                read = [evaluate_point(measured[t][m], unsteered, c, self.tracks[t][1]) for m in ms]
                out[t] = {m: (r["effective"], r["fluent"]) for m, r in zip(ms, read, strict=True)}
            return out

        initial = [self.initial(layer) for layer, _ in self.tracks]
        _, plan["steps"] = bisect(initial, evaluate, c.steps, c.per_bracket, c.tolerance)
        return measured, unsteered, plan

    def measure(self, item: dict[str, Any]) -> dict[str, Any]:
        """One step: the margins of every candidate (vector and controls) and, with a judge, the judged
        coherence of the vector's answers, as one margin call (and one generation call)."""
        first, n = item["step"] == 0, len(self.pairs)
        candidates = {int(t): [float(m) for m in cs] for t, cs in item["candidates"].items()}
        conditions: list[list[SteeringSpec]] = [[]] if first else []
        coeffs: list[list[float]] = [[0.0]] if first else []
        for t, cs in candidates.items():
            layer, sign = self.tracks[t]
            for direction in (self.vector, *self.controls):
                conditions.append([self.spec(direction, layer)])
                coeffs.append([sign * m for m in cs])
        total = sum(len(cs) for cs in candidates.values())
        log.info("calibration step %d: %d candidates x %d directions", item["step"], total, 1 + len(self.controls))
        results = condition_margins(self.lm, self.pairs, conditions, coeffs, self.config.batch_size, self.reference)
        row: dict[str, Any] = {"key": item["key"], "points": [], "generations": 0, "judge_calls": 0}
        row["sequences"] = 2 * n * sum(len(c) for c in coeffs)
        if first:
            unsteered = results.pop(0)
            row["unsteered"] = {"per_pair": unsteered.per_pair[0].tolist(), "fluency": unsteered.fluency[0]}
        coherence = self.coherence(candidates, first, row) if self.judge is not None else {}
        if first and "unsteered_coherence" in row:
            row["unsteered"]["coherence"], row["unsteered"]["coherence_n"] = row.pop("unsteered_coherence")
        k = 1 + len(self.controls)
        for i, (t, cs) in enumerate(candidates.items()):
            real, controls = results[i * k], results[i * k + 1 : (i + 1) * k]
            for j, m in enumerate(cs):
                score, count = coherence.get((t, j), (None, 0))
                row["points"].append(
                    {
                        "track": t,
                        "magnitude": m,
                        "step": item["step"],
                        "per_pair": real.per_pair[j].tolist(),
                        "fluency": real.fluency[j],
                        "controls": [c.per_pair[j].tolist() for c in controls],
                        "coherence": score,
                        "coherence_n": count,
                    }
                )
        return row

    def coherence(
        self, candidates: dict[int, list[float]], first: bool, row: dict[str, Any]
    ) -> dict[tuple[int, int], tuple[float | None, int]]:
        """Judged coherence (mean 0-100, count) of the vector's greedy answers to the first
        ``judge_questions`` questions at every candidate, one generation call (step 0 also unsteered)."""
        c = self.config
        qs = list(range(min(c.judge_questions, len(self.pairs))))
        cells = ([(-1, 0, 0.0)] if first else []) + [
            (t, j, self.tracks[t][1] * m) for t, cs in candidates.items() for j, m in enumerate(cs)
        ]
        prompts = [self.prompts[q] for _ in cells for q in qs]
        row_coeffs = torch.tensor([coeff for _, _, coeff in cells for _ in qs])
        cell_of = [cell for cell in cells for _ in qs]
        specs = [
            self.spec(
                self.vector, self.tracks[t][0], coeff=row_coeffs, rows=[i for i, x in enumerate(cell_of) if x[0] == t]
            )
            for t in candidates
        ]
        gens = self.lm.generate(
            prompts,
            steering=specs,
            max_new_tokens=c.max_new_tokens,
            batch_size=c.batch_size,
            reference_norms=self.reference,
            description="calibration: judged answers",
        )
        scores = judge_coherence(
            self.judge, [self.pairs[q].question for _ in cells for q in qs], [g.text for g in gens]
        )
        row["generations"], row["judge_calls"] = len(gens), len(scores)
        out: dict[tuple[int, int], tuple[float | None, int]] = {}
        for (t, j, _), start in zip(cells, range(0, len(prompts), len(qs)), strict=True):
            values = [s for s in scores[start : start + len(qs)] if s is not None]
            out[(t, j)] = (sum(values) / len(values) if values else None, len(values))
        if first:
            row["unsteered_coherence"] = out.pop((-1, 0))
        return out


__all__ = ["DEFAULT_RANGE", "Search"]
