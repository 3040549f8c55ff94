"""Calibration: at which layer, and with which coefficients, does a vector steer a behaviour?
(``steerlab calibrate``; ``--coeff auto`` on ``generate`` and ``sweep`` reads its result.)

For each candidate layer and direction (``add``: coefficients > 0, meant to raise the held-out
behaviour margin; ``subtract``: < 0, meant to lower it) a log-scale bisection
(:mod:`steerlab.evaluate.bisection`) finds

- ``c_min``: the smallest *effective* coefficient: its change in the behaviour margin (nats/token, from
  the unsteered model, on held-out pairs) is at least ``min_effect`` the intended way and lies beyond
  the band of ``controls`` random directions of the vector's norm at the test's level: one-sided
  p <= ``alpha`` the intended way (:func:`steerlab.evaluate.evidence.steering_evidence`; with fewer
  than 19 controls p cannot reach 0.05, and the criterion becomes "outside all K random directions",
  which the file says). The effect size is needed: while the margin responds linearly to small
  coefficients, the vector's effect and every random direction's grow in proportion, so its rank
  among them — and p — is the same at every small coefficient; significance says *whether* the
  direction stands out, the effect size *from where on* it moves the behaviour measurably;
- ``c_fluent``: the largest coefficient whose fluency (mean log-likelihood per token of both held-out
  answers) drops by at most ``max_fluency_drop`` nats/token and, with a judge, whose steered answers'
  judged coherence is at least ``min_coherence`` (0-100; ADL searches strength up to coherence 75,
  Minder et al. 2025);
- ``c_max``: the top of the usable range [c_min, c_max] (effective and fluent throughout the points
  evaluated), empty when no coefficient is both — a valid answer.

Step 0 evaluates ``grid`` coefficients spaced geometrically over the search range (default: 0.005 to
5 times the mean residual norm at the layer, in the requested ``scale``'s units); each later step
evaluates ``per_bracket`` coefficients inside every open bracket, until each is narrower than the
ratio ``tolerance`` or ``steps`` refinements ran. Every candidate of a step — every layer and
direction, the vector and its K controls — runs as rows of ONE :func:`~steerlab.evaluate.margin.condition_margins`
call (the unsteered margins join step 0), and with a judge one generation call; a step is one
checkpoint of the run (a killed calibration resumes at the first unfinished step). The recommended
layer follows the one layer rule (:func:`steerlab.evaluate.selection.choose_layer`) on each usable
track's point at c_max: the largest effect there.

``calibration.json`` (:class:`~steerlab.pipelines.calibration_records.CalibrationDoc`) records the
model, the vector's SHA-256, every point with its evidence, each bound in raw, unit and relative
units, and the recommendation.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engines.base import Engine
from ..engines.hf import as_engine
from ..errors import SteerlabError
from ..evaluate.controls import ALPHA, min_controls
from ..evaluate.evidence import EVIDENCE_FORMAT
from ..formats.pairs import Pair
from ..judge import Judge
from ..model.chat import Prompt
from ..model.layers import parse_layers
from ..model.loading import LoadedModel
from ..steering.operators import POSITIONS, SCALES
from ..vectors.vector import SteeringVector
from ..version import __version__
from .artifacts import CALIBRATION
from .calibration_doc import document
from .calibration_records import CalibrationDoc, CalibrationTrack, Recommended
from .calibration_search import DEFAULT_RANGE, Search
from .runs import RunDir
from .study import default_layers

DIRECTIONS = ("add", "subtract", "both")


@dataclass
class CalibrationConfig:
    """What a calibration searches (each default written here once; the CLI reads them).

    ``layers``: candidate layers (layer grammar; None: five spread over 20-80% of the depth);
    ``scale``: the units of the search and of ``search_range`` (raw, unit, relative); ``direction``:
    add, subtract or both; ``positions``: where steering acts (``response``: the last prompt token and
    every answer token, the studies' default; prompts are then shared by every row); ``controls``: K
    random directions per candidate (19: the fewest for p <= 0.05); ``alpha``: the test's level;
    ``min_effect`` (nats/token): the smallest margin change, the intended way, that counts as an effect;
    ``max_fluency_drop`` (nats/token) and ``min_coherence`` (0-100, with a judge): the fluency bound;
    ``search_range``: [lo, hi] coefficient magnitudes in ``scale`` units (None: 0.005-5 relative at each
    layer); ``grid``: step 0's candidates; ``steps``: refinement steps; ``per_bracket``: candidates per
    open bracket and step; ``tolerance``: a bracket hi/lo at most this is closed; ``judge_questions``,
    ``max_new_tokens``: the judged answers per candidate; ``seed``: controls and bootstrap;
    ``n_bootstrap``: resamples; ``batch_size``: sequences per forward.

    Raises SteerlabError for values out of range, naming the flag.
    """

    layers: str | list[int] | None = None
    scale: str = "raw"
    direction: str = "add"
    positions: str = "response"
    controls: int = field(default_factory=min_controls)
    alpha: float = ALPHA
    min_effect: float = 0.05
    max_fluency_drop: float = 1.0
    min_coherence: float = 75.0
    search_range: list[float] | None = None
    grid: int = 7
    steps: int = 3
    per_bracket: int = 2
    tolerance: float = 1.1
    judge_questions: int = 8
    max_new_tokens: int = 32
    seed: int = 0
    n_bootstrap: int = 1000
    batch_size: int = 16

    def __post_init__(self) -> None:
        checks = [
            (self.scale in SCALES, f"--scale {self.scale!r}: expected one of {', '.join(SCALES)}"),
            (self.direction in DIRECTIONS, f"--direction {self.direction!r}: expected one of {', '.join(DIRECTIONS)}"),
            (self.positions in POSITIONS, f"--positions {self.positions!r}: expected one of {', '.join(POSITIONS)}"),
            (
                self.controls >= 1,
                f"--controls {self.controls}: calibration tests every candidate against random directions; "
                f"give at least 1 ({min_controls(self.alpha)} for p <= {self.alpha:g})",
            ),
            (0 < self.alpha < 1, f"alpha {self.alpha}: expected a level between 0 and 1"),
            (self.min_effect >= 0, f"--min-effect {self.min_effect}: expected >= 0 nats/token"),
            (self.max_fluency_drop >= 0, f"--max-fluency-drop {self.max_fluency_drop}: expected >= 0 nats/token"),
            (0 <= self.min_coherence <= 100, f"--min-coherence {self.min_coherence}: expected 0-100"),
            (self.grid >= 2, f"--grid {self.grid}: expected at least 2 candidates"),
            (self.steps >= 0, f"--steps {self.steps}: expected 0 or more refinement steps"),
            (self.per_bracket >= 1, f"--per-bracket {self.per_bracket}: expected at least 1"),
            (self.tolerance > 1, f"--tolerance {self.tolerance}: expected a ratio above 1 (e.g. 1.1)"),
            (self.judge_questions >= 1, f"--judge-questions {self.judge_questions}: expected at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise SteerlabError(message)
        if self.search_range is not None:
            values = [float(x) for x in self.search_range]
            if len(values) != 2 or not 0 < values[0] < values[1]:
                raise SteerlabError(f"--range {self.search_range}: expected LO,HI magnitudes with 0 < LO < HI")

    @property
    def p_max(self) -> float:
        """The largest p an effective coefficient may have: ``alpha``, or 1/(K+1) when K controls
        cannot reach it (then "outside all K random directions")."""
        return max(self.alpha, 1.0 / (self.controls + 1))


@dataclass
class CalibrationResult:
    """A calibration: ``doc`` (``calibration.json``), its ``path`` and whether it was ``reused`` from an
    earlier run."""

    doc: CalibrationDoc
    path: Path
    reused: bool = False

    @property
    def recommended(self) -> Recommended | None:
        """The recommended layer and range (None when no layer has a usable range)."""
        return self.doc["recommended"]

    @property
    def tracks(self) -> list[CalibrationTrack]:
        """One entry per layer and direction."""
        return self.doc["tracks"]

    @property
    def reading(self) -> list[str]:
        """One sentence per layer and direction, the recommendation first."""
        return self.doc["reading"]


def vector_sha256(vector: SteeringVector) -> str:
    """SHA-256 of a vector's float32 values: what ``calibration.json`` records and ``--coeff auto`` checks."""
    return hashlib.sha256(vector.data.detach().float().contiguous().numpy().tobytes()).hexdigest()


def pair_prompt(pair: Pair) -> Prompt:
    """A pair's question as a prompt (with its system prompt, when it has one)."""
    if pair.system:
        return [{"role": "system", "content": pair.system}, {"role": "user", "content": pair.question}]
    return pair.question


def run_calibration(
    lm: Engine | LoadedModel,
    vector: SteeringVector,
    pairs: Sequence[Pair],
    out_dir: str | Path,
    config: CalibrationConfig | None = None,
    *,
    judge: Judge | None = None,
    judge_name: str | None = None,
    pairs_source: str | None = None,
    vector_file: str | None = None,
) -> CalibrationResult:
    """Calibrate ``vector`` (``[n_layers, d_model]``, row L at layer L) on held-out ``pairs`` into
    ``out_dir/calibration.json`` (resumable; see the module docstring).

    ``lm``: the engine that scores and generates (or a loaded model, run on the ``hf`` engine);
    ``judge``: also bound the judged coherence of steered answers to the pairs' questions;
    ``pairs_source``, ``vector_file``: recorded. Returns a :class:`CalibrationResult`.

    Raises:
        SteerlabError: no pairs, layers out of range, a vector that does not fit the model or is zero
            at a candidate layer.
    """
    config = config or CalibrationConfig()
    lm = as_engine(lm)
    if not pairs:
        raise SteerlabError("calibrate: no pairs to calibrate on (--pairs FILE or --trait NAME)")
    layers = parse_layers(config.layers, lm.n_layers, "--layers") if config.layers is not None else None
    layers = layers or default_layers(lm.n_layers)
    vector.check_compatible(lm.n_layers, lm.d_model, lm.name, layers)
    v_norms = vector.norms()
    zero = [layer for layer in layers if float(v_norms[layer]) == 0.0]
    if zero:
        raise SteerlabError(f"--vector: zero at layers {zero}: nothing to calibrate there (choose --layers)")
    started = time.perf_counter()
    prompts = [pair_prompt(p) for p in pairs]
    h_norms = lm.mean_residual_norms(prompts, config.batch_size)
    vhash = vector_sha256(vector)
    judged = judge is not None
    inputs = {
        "model": lm.name,
        **lm.fingerprint(),
        "vector": vhash,
        "layers": layers,
        "pairs": [[p.question, p.positive, p.negative, p.system] for p in pairs],
        "evidence": EVIDENCE_FORMAT,
        "judge": (judge_name or getattr(judge, "name", type(judge).__name__)) if judged else None,
    }
    norms = {layer: (float(v_norms[layer]), float(h_norms[layer])) for layer in layers}
    meta = {
        "steerlab_version": __version__,
        "model": lm.name,
        "engine": lm.kind,
        "vector": {"sha256": vhash, "file": vector_file, "metadata": dict(vector.metadata)},
        "pairs": {"n": len(pairs), "source": pairs_source},
        "judge": inputs["judge"],
    }

    def compute(stage: Any) -> CalibrationDoc:
        search = Search(lm, vector, pairs, prompts, layers, norms, h_norms, config, judge)
        measured, unsteered, plan = search.run(stage)
        doc = document(meta, config, layers, norms, search.tracks, measured, unsteered, plan)
        doc["timings"] = {"calibration_s": round(time.perf_counter() - started, 1)}
        return doc

    ignore = ["layers", "batch_size"] + ([] if judged else ["min_coherence", "judge_questions", "max_new_tokens"])
    cached = RunDir(out_dir).cached("calibration", CALIBRATION, inputs, compute, settings=config, ignore=ignore)
    return CalibrationResult(cached.value, cached.path, cached.reused)


__all__ = ["DEFAULT_RANGE", "CalibrationConfig", "CalibrationResult", "pair_prompt", "run_calibration", "vector_sha256"]
