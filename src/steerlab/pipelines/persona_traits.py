"""The multi-trait persona study (the seed's: several traits, one model, one judge), as resumable stages.

For each trait, ``DIR/<trait>/`` holds today's single-trait run (:func:`~steerlab.pipelines.persona.run_persona`:
``responses.jsonl``, ``judged.jsonl``, ``pairs.json``, ``vectors/``) and its steering evidence:

1. ``eval_answers.jsonl``   the model's greedy answers to the trait's held-out eval questions under its first
                            positive and first negative persona prompt: the eval pairs
                            (:mod:`steerlab.pipelines.trait_steering`);
2. ``layer_scan.json``      margins unsteered, with the vector added at each candidate layer at ``scan_coeff``,
                            and under a positive / negative persona system prompt (the prompting baseline);
                            best layer: largest margin increase with a fluency drop <= ``max_fluency_drop``;
3. ``margins.json``         at the best layer, every coefficient for the vector and ``controls`` same-norm random
                            directions, as rows of one batch stream;
4. ``steered_generations.jsonl``, ``steered_judged.jsonl``  (when ``judge_scores`` and the judge scored any of the
                            trait's answers) greedy answers to the eval questions under the same conditions, plus
                            unsteered and prompted, judged 0-100.

Across traits: ``DIR/cosine.json`` (trait x trait cosine per layer, random band, resampling intervals, split-half
reliabilities, :mod:`steerlab.pipelines.trait_cosine`; with ``model_diff`` also each trait's model-diff direction,
``model_diff:<trait>``, from a fine-tune on its persona answers, :mod:`steerlab.pipelines.trait_model_diff`) and
``DIR/traits.json``: ``{trait: entry, ..., "cosine": ...}`` plus ``steerlab_version``, ``model``, ``judge``,
``config`` and ``table`` (one summary row per trait, also ``DIR/traits.csv``). Answers for all traits are
generated as rows of shared batches (extraction answers, eval answers, steered answers); a shared stream's
progress is checkpointed in ``DIR/.partial``. A trait that fails (no effective pairs, no eval pairs) is recorded
(``status: failed``, ``error``) and the others
go on. Every stage is skipped on a rerun with the same config; a killed run resumes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..engines.base import Engine
from ..engines.hf import HfEngine
from ..errors import SteerlabError
from ..evaluate.controls import random_directions
from ..extract.persona import PERSONA_REDUCTIONS
from ..finetune.config import FinetuneConfig
from ..formats.traits import Trait, list_traits, load_trait
from ..io.atomic import write_json
from ..io.tables import write_csv
from ..judge import Judge
from ..model.loading import LoadedModel
from ..steering.operators import POSITIONS
from ..vectors.vector import SteeringVector
from ..version import __version__
from . import trait_steering as ts
from .artifacts import PAIRS
from .persona import (
    NoEffectivePairsError,
    PersonaConfig,
    generate_with_systems,
    generation_chunk,
    response_items,
    response_rows,
    responses_stage,
    run_persona,
)
from .runs import RunDir, Stage
from .shared_batches import shared_generation
from .study import default_layers
from .trait_cosine import pair_differences, trait_cosines
from .trait_model_diff import MODEL_DIFF_PREFIX, trait_finetune, trait_model_diffs
from .trait_records import TraitEntry, TraitFailure, TraitTableRow
from .trait_scores import judged_scores, score_summary

RESERVED = ("cosine", "steerlab_version", "model", "judge", "config", "table")

# Fields of PersonaTraitsConfig that stages do not read, by group; each stage names the groups it
# ignores in its one call. A field in no group is hashed by every stage (recomputed until declared).
_EXTRACTION = ("persona", "reduction", "fallback_unfiltered", "model_diff")  # the vector's hash covers them
_SCAN = ("layers", "scan_coeff", "max_fluency_drop")  # the layer choice: its stage hash covers them
_SWEEP = ("coeffs", "controls")
_EVAL = ("eval_questions", "eval_new_tokens", "prompt_instruction")
_SCORES = ("score_controls", "judge_scores")
_READING = ("n_resamples", "batch_size")  # bootstrap at assembly; forward batch size (float rounding)
TraitLike = str | Path | Trait | tuple[Trait, Trait]


@dataclass
class PersonaTraitsConfig:
    """Settings of :func:`run_persona_traits` (the CLI builds this; each default is written here once).

    ``persona``: extraction settings shared by every trait (:class:`PersonaConfig`); ``reduction``: which
    persona vector steers; ``layers``: candidate layers of the scan (None: five spread over 20-80% of the
    depth); ``scan_coeff``: the scan's coefficient; ``coeffs``: the sweep's coefficients (raw scale, added at
    ``positions``); ``max_fluency_drop`` (nats/token): the scan's coherence limit; ``eval_questions``,
    ``eval_new_tokens``: eval pairs and steered answers; ``prompt_instruction``: which eval instruction the
    prompting baseline uses (not the first, which wrote the eval pairs' answers); ``controls``: K random
    directions (0: off) with ``seed`` (also the bootstrap seed); ``score_controls``: K for the judged answers
    (None: ``controls``); ``n_resamples``: bootstrap resamples; ``judge_scores``: judge steered answers;
    ``fallback_unfiltered``: a trait with no effective pairs averages all its pairs instead (filter ``none``,
    recorded; the CLI asks for ``--no-filter`` instead); ``batch_size``: sequences per teacher-forced forward;
    ``model_diff``: None (off) or the settings of a LoRA fine-tune per trait on its persona answers without
    their instructions, whose model-diff direction joins the cosine matrix as ``model_diff:<trait>``
    (:mod:`steerlab.pipelines.trait_model_diff`; ``--model-diff`` uses the diff study's defaults).
    """

    persona: PersonaConfig = field(default_factory=PersonaConfig)
    reduction: str = "response_avg"
    layers: list[int] | None = None
    scan_coeff: float = 4.0
    coeffs: list[float] = field(default_factory=lambda: [-4.0, 2.0, 4.0, 8.0])
    positions: str = "response"  # where steering acts (docs/design.md §4): the seed's evaluation default
    max_fluency_drop: float = 1.0
    eval_questions: int = 8
    eval_new_tokens: int = 48
    prompt_instruction: int = 1
    controls: int = 8
    score_controls: int | None = None
    seed: int = 0
    n_resamples: int = 1000
    judge_scores: bool = True
    fallback_unfiltered: bool = False
    batch_size: int = 32
    model_diff: FinetuneConfig | None = None


@dataclass
class TraitSpec:
    """One trait of the study: ``extract`` (questions and prompts for the persona vector) and ``eval``
    (held-out questions for steering); ``held_out`` is False when both come from one file."""

    name: str
    extract: Trait
    eval: Trait
    held_out: bool = True


@dataclass
class PersonaTraitsResult:
    """What :func:`run_persona_traits` made: ``traits`` (name -> entry, ``status`` ok or failed),
    ``cosine`` (None with fewer than two traits done), ``failed`` (name -> error message), ``path``
    (``traits.json``), ``table`` (summary rows) and ``timings`` (seconds per stage run now)."""

    run_dir: Path
    traits: dict[str, TraitEntry | TraitFailure]
    cosine: dict[str, Any] | None
    failed: dict[str, str]
    path: Path
    table: list[TraitTableRow]
    timings: dict[str, float]

    @property
    def summary(self) -> dict[str, Any]:
        """``{trait: entry, ..., "cosine": ...}``: what a demo's summary.json embeds as ``traits``."""
        return {**self.traits, "cosine": self.cosine}


def resolve_traits(traits: Sequence[TraitLike]) -> list[TraitSpec]:
    """Traits from names (``all``: every built-in), trait files, :class:`Trait` objects or (extract, eval)
    tuples. A built-in name gets its eval split; a file or Trait is its own eval set (``held_out`` False).

    Raises:
        SteerlabError: no traits, an unknown name or bad file (from :func:`load_trait`), a name used twice,
            or a reserved name (``cosine``, ``config``, ...).
    """
    specs: list[TraitSpec] = []
    for item in traits:
        if isinstance(item, tuple):
            specs.append(TraitSpec(item[0].name, item[0], item[1]))
        elif isinstance(item, Trait):
            specs.append(TraitSpec(item.name, item, item, held_out=False))
        elif str(item) == "all":
            specs += [TraitSpec(n, load_trait(n, "extract"), load_trait(n, "eval")) for n in list_traits()]
        elif str(item) in list_traits():
            specs.append(TraitSpec(str(item), load_trait(item, "extract"), load_trait(item, "eval")))
        else:
            trait = load_trait(item, "extract")
            specs.append(TraitSpec(trait.name, trait, trait, held_out=False))
    if not specs:
        raise SteerlabError("--trait: no traits given (name them, or pass 'all' for every built-in trait)")
    names = [s.name for s in specs]
    for name in names:
        if not name or name in RESERVED or names.count(name) > 1:
            why = "reserved" if name in RESERVED else "empty" if not name else "given twice"
            raise SteerlabError(
                f"--trait {name!r}: trait name {why} (each trait gets DIR/<name>/ and a key in "
                f"traits.json; reserved: {', '.join(RESERVED)})"
            )
    return specs


def _vector_hash(vector: SteeringVector) -> str:
    return hashlib.sha256(vector.data.numpy().tobytes()).hexdigest()[:16]


def run_persona_traits(
    lm: LoadedModel,
    traits: Sequence[TraitLike],
    judge: Judge,
    out_dir: str | Path,
    config: PersonaTraitsConfig | None = None,
    judge_name: str | None = None,
    engine: Engine | None = None,
) -> PersonaTraitsResult:
    """Run (or resume) the multi-trait study into ``out_dir`` (stages in the module docstring).

    ``lm`` (transformers) captures the activations behind the vectors and their cosines; ``engine``
    (default: the ``hf`` engine of ``lm``) generates and scores (:mod:`steerlab.engines`).

    ``traits``: see :func:`resolve_traits`; ``judge``: scores extraction answers (and steered answers);
    ``judge_name`` identifies it in stage configs (default: its class name). A trait that fails is recorded
    and the rest go on; check ``result.failed``. Raises SteerlabError for bad traits or config (before any
    model work).
    """
    config = config or PersonaTraitsConfig()
    engine = engine or HfEngine(lm)
    specs = resolve_traits(traits)
    layers = [lm.check_layer(layer, "--layers") for layer in config.layers or default_layers(lm.n_layers)]
    if config.controls < 0 or (config.score_controls or 0) < 0:
        raise SteerlabError(f"--controls {config.controls}: expected 0 (off) or more random directions")
    if not config.coeffs:
        raise SteerlabError("--coeffs: no coefficients given")
    if config.reduction not in PERSONA_REDUCTIONS:
        raise SteerlabError(f"reduction {config.reduction!r}: expected one of {', '.join(PERSONA_REDUCTIONS)}")
    if config.positions not in POSITIONS:
        raise SteerlabError(f"--positions {config.positions!r}: expected one of {', '.join(POSITIONS)}")
    run = RunDir(out_dir)
    runs = {s.name: RunDir(run.path / s.name) for s in specs}
    judge_id = judge_name or type(judge).__name__
    failed: dict[str, TraitFailure] = {}
    timings: dict[str, float] = {}
    chunk = 4 * generation_chunk(config.persona)

    start = time.perf_counter()
    targets = {
        s.name: (
            responses_stage(runs[s.name], engine, s.extract, config.persona),
            response_items(s.extract, config.persona),
        )
        for s in specs
    }
    shared_generation(
        run,
        "persona_responses",
        targets,
        lambda items: response_rows(
            items, generate_with_systems(engine, items, config.persona, "persona answers (all traits)")
        ),
        chunk,
    )
    timings["responses"] = time.perf_counter() - start

    persona = {}
    for s in specs:
        try:
            persona[s.name] = _extract(lm, engine, s, judge, runs[s.name], config, judge_id)
        except SteerlabError as exc:
            failed[s.name] = {"status": "failed", "error": str(exc), **_counts(exc)}
    ok = [s for s in specs if s.name in persona]

    # eval pairs: every trait's eval answers as rows of shared batches
    start = time.perf_counter()
    eval_targets = {
        s.name: (
            runs[s.name].stage(
                "eval_answers",
                "eval_answers.jsonl",
                {"model": lm.name, **engine.fingerprint(), "eval_trait": s.eval.to_json()},
                settings=config,
                ignore=(*_EXTRACTION, *_SCAN, *_SWEEP, "positions", "prompt_instruction", "seed", *_SCORES, *_READING),
            ),
            ts.eval_items(s.eval, config.eval_questions),
        )
        for s in ok
    }

    def eval_work(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        gens = engine.generate(
            _messages(items),
            max_new_tokens=config.eval_new_tokens,
            batch_size=config.persona.batch_size,
            description="eval answers (all traits)",
        )
        return [{**it, "response": g.text} for it, g in zip(items, gens, strict=True)]

    shared_generation(run, "eval_answers", eval_targets, eval_work, chunk)
    timings["eval_answers"] = time.perf_counter() - start

    entries: dict[str, TraitEntry] = {}
    directions: dict[str, dict[str, Any]] = {}  # name -> {"vector", "layer", "hash", "pairs"}
    for s in ok:
        try:
            entries[s.name], directions[s.name] = _evaluate(
                engine, s, runs[s.name], eval_targets[s.name][0], persona[s.name], config, layers
            )
        except SteerlabError as exc:
            failed[s.name] = {"status": "failed", "error": str(exc)}
    start = time.perf_counter()
    _add_scores(
        engine,
        judge,
        judge_id,
        run,
        {s.name: s for s in ok if s.name in entries},
        runs,
        entries,
        directions,
        persona,
        config,
        chunk,
    )
    timings["steered_scores"] = time.perf_counter() - start

    start = time.perf_counter()
    cosine = None
    if len(entries) >= 2:
        # with model_diff, each trait's fine-tune (its own stage) is an input of the cosines
        tuned = (
            {n: trait_finetune(lm, runs[n], d["pairs"], config.model_diff) for n, d in directions.items()}
            if config.model_diff is not None
            else {}
        )
        if tuned:
            timings["model_diff_finetunes"] = time.perf_counter() - start

        def cosines(_: Stage) -> dict[str, Any]:
            diffs = {
                n: pair_differences(lm, d["pairs"], config.reduction, config.batch_size) for n, d in directions.items()
            }
            for n in tuned:
                diffs[f"{MODEL_DIFF_PREFIX}{n}"] = trait_model_diffs(
                    lm, runs[n], directions[n]["pairs"], config.reduction, config.batch_size
                )
            return trait_cosines(diffs, config.n_resamples, config.seed)

        cosine = run.cached(
            "cosine",
            "cosine.json",
            {"vectors": {n: d["hash"] for n, d in directions.items()}, **({"model_diff": tuned} if tuned else {})},
            cosines,
            settings=config,
            ignore=(
                "persona",
                "fallback_unfiltered",
                "model_diff",
                *_SCAN,
                *_SWEEP,
                "positions",
                *_EVAL,
                *_SCORES,
                "batch_size",
            ),
        ).value
        cosine["best_layers"] = {n: e["best_layer"] for n, e in entries.items()}
    timings["cosine"] = time.perf_counter() - start

    traits_doc = {s.name: entries.get(s.name) or failed[s.name] for s in specs}
    table = [ts.table_row(name, entry, config.max_fluency_drop) for name, entry in traits_doc.items()]
    path = run.path / "traits.json"
    write_json(
        path,
        {
            **traits_doc,
            "cosine": cosine,
            "steerlab_version": __version__,
            "model": lm.name,
            "judge": judge_id,
            "config": asdict(config),
            "table": table,
        },
    )
    write_csv(run.path / "traits.csv", table)
    for name, r in runs.items():
        timings.update(
            {f"{name}.{k}": v for k, v in {**(persona[name].timings if name in persona else {}), **r.timings}.items()}
        )
    return PersonaTraitsResult(
        run.path,
        traits_doc,
        cosine,
        {n: f["error"] for n, f in failed.items()},
        path,
        table,
        {k: round(v, 3) for k, v in timings.items()},
    )


def _messages(items: list[dict[str, Any]]) -> list[Any]:
    return [
        ([{"role": "system", "content": it["system"]}] if it.get("system") else [])
        + [{"role": "user", "content": it["question"]}]
        for it in items
    ]


def _counts(exc: SteerlabError) -> dict[str, Any]:
    if isinstance(exc, NoEffectivePairsError):
        return {"counts": exc.counts, "answer_counts": exc.answer_counts}
    return {}


def _extract(
    lm: LoadedModel,
    engine: Engine,
    spec: TraitSpec,
    judge: Judge,
    run: RunDir,
    config: PersonaTraitsConfig,
    judge_id: str,
):
    """run_persona for one trait; with ``fallback_unfiltered``, unfiltered when no pair is effective."""
    return run_persona(
        lm,
        spec.extract,
        judge,
        run.path,
        config.persona,
        judge_name=judge_id,
        engine=engine,
        fallback_unfiltered=config.fallback_unfiltered,
    )


def _evaluate(
    lm: Engine,
    spec: TraitSpec,
    run: RunDir,
    eval_stage: Stage,
    persona: Any,
    config: PersonaTraitsConfig,
    layers: list[int],
) -> tuple[TraitEntry, dict[str, Any]]:
    """Layer scan and margin sweep with controls for one trait: (its traits.json entry, its directions)."""
    pairs = ts.eval_pairs(eval_stage.load_rows())
    if not pairs:
        raise SteerlabError(
            f"{spec.name}: no eval pairs: the model's answers to the {config.eval_questions} eval "
            f"questions were blank under the persona prompts (see {eval_stage.path})"
        )
    vector = SteeringVector.load(persona.vectors[config.reduction])
    vhash = _vector_hash(vector)
    systems = ts.prompting_systems(spec.eval, config.prompt_instruction)
    scan_stage = run.cached(
        "layer_scan",
        "layer_scan.json",
        {
            "eval_answers": eval_stage.hash,
            **lm.fingerprint(),
            "vector": vhash,
            "resolved_layers": layers,
            "systems": systems,
        },
        lambda _: ts.layer_scan(
            lm, pairs, vector.data, layers, config.scan_coeff, config.positions, systems, config.batch_size
        ),
        settings=config,
        ignore=(*_EXTRACTION, "layers", "max_fluency_drop", *_SWEEP, *_EVAL, "seed", *_SCORES, *_READING),
    )
    scan = scan_stage.value
    best, scan_rows = ts.read_layer_scan(scan, config.max_fluency_drop)
    controls = random_directions(vector, config.controls, config.seed)
    sweep = run.cached(
        "margins",
        "margins.json",
        {"layer_scan": scan_stage.hash, "layer": best},
        lambda _: ts.sweep_margins(
            lm, pairs, vector.data, controls, best, config.coeffs, config.positions, config.batch_size
        ),
        settings=config,
        ignore=(*_EXTRACTION, *_SCAN, *_EVAL, *_SCORES, *_READING),
    ).value
    refs = ts.reference_summary(scan, config.n_resamples, config.seed)
    entry = {
        "status": "ok",
        "effective_pairs": persona.n_effective,
        "pairs_averaged": persona.n_pairs,
        "filter": persona.filter,
        "counts": persona.counts,
        "answer_counts": persona.answer_counts,
        "held_out": spec.held_out,
        "vector": str(persona.vectors[config.reduction].relative_to(run.path.parent)),
        "reduction": config.reduction,
        "n_eval_pairs": len(pairs),
        "best_layer": best,
        "layer_scan": {
            "coeff": config.scan_coeff,
            "max_fluency_drop": config.max_fluency_drop,
            "rows": scan_rows,
            "coherent": any(r["coherent"] for r in scan_rows),
        },
        "controls": {"k": config.controls, "seed": config.seed},
        **refs,
        "rows": ts.margin_rows(scan, sweep, config.n_resamples, config.seed),
        "scores": None,
    }
    direction = {
        "vector": vector.data,
        "layer": best,
        "hash": vhash,
        "pairs": json.loads((run.path / PAIRS).read_text(encoding="utf-8"))["pairs"],
    }
    return entry, direction


def _add_scores(
    lm: Engine,
    judge: Judge,
    judge_id: str,
    run: RunDir,
    specs: dict[str, TraitSpec],
    runs: dict[str, RunDir],
    entries: dict[str, TraitEntry],
    directions: dict[str, dict[str, Any]],
    persona: dict[str, Any],
    config: PersonaTraitsConfig,
    chunk: int,
) -> None:
    """Judged steered answers (:mod:`steerlab.pipelines.trait_scores`) for the traits whose extraction
    answers the judge could score; their scores fill each entry's rows (``score_*``) and ``scores``."""
    k = config.controls if config.score_controls is None else config.score_controls
    scorable = {}
    for name in specs:
        counts = persona[name].answer_counts
        if not config.judge_scores:
            entries[name]["scores"] = {"skipped": "judge_scores is off"}
        elif counts["unscored"] >= counts["answers"]:
            entries[name]["scores"] = {
                "skipped": f"the judge could not score any of the {counts['answers']} extraction answers"
            }
        else:
            scorable[name] = {"run": runs[name], "eval": specs[name].eval}
    if not scorable:
        return
    controls = {n: random_directions(directions[n]["vector"], k, config.seed) for n in scorable}
    judged = judged_scores(lm, judge, judge_id, run, scorable, directions, controls, config, chunk)
    for name, rows in judged.items():
        scores = score_summary(rows, config.coeffs, config.n_resamples, config.seed)
        entry = entries[name]
        entry["scores"] = {"unsteered": scores["unsteered"], "prompting": scores["prompting"], "controls": k}
        for row, srow in zip(entry["rows"], scores["rows"], strict=True):
            row.update({key: value for key, value in srow.items() if key != "coeff"})
