"""The research question end to end, as resumable stages in a run directory (docs/design.md §9):

``finetune``  LoRA fine-tune of the base on the behaviour answers of the train pairs -> ``adapter/``
              (with ``objectives`` sft,dpo also a DPO fine-tune on the same pairs -> ``adapter_dpo/``)
``vectors``   contrastive vector (base model, train pairs) and model-diff vector (fine-tuned − base on
              the same train questions with both answers), both with reduction ``response_avg``;
              per-sample differences give split-half reliabilities -> ``vectors/*.safetensors``
              (DPO: ``vectors_dpo`` -> ``vectors/model_diff_dpo.safetensors``)
``compare``   cosine per layer between every two directions (the two above, the DPO model diff, any
              extra :class:`~steerlab.pipelines.diff_vectors.Direction` such as a trait's persona
              vector), with the random baseline, norms, distances, reliabilities and resampling
              intervals -> ``directions.json`` (:class:`~steerlab.pipelines.records.DirectionsDoc`;
              ``compare.json`` in runs made before it was renamed, still read by the report)
``positions`` the position-resolved model diff -> ``positions.json``, ``vectors/model_diff_pos*``
``study``     the steering study of :mod:`steerlab.pipelines.study` on the held-out pairs ->
              ``study.json`` (:class:`~steerlab.pipelines.records.StudyDoc`), ``study_margins.csv``,
              ``samples.jsonl``; with blends (``study.blend_alphas``) their rows too. DPO: the same
              study of the DPO fine-tune with its own model diff (rows ``model_diff_dpo``) ->
              ``study_dpo.json``, ``study_margins_dpo.csv``, ``samples_dpo.jsonl``

and ``summary.json`` (:class:`~steerlab.pipelines.study_records.DiffSummary`, rewritten on every run:
headline numbers, ``blends``, ``objectives`` and, for a trait study, ``trait``).

Each stage is one :meth:`~steerlab.io.runs.RunDir.cached` call that hashes its inputs and every field
of :class:`DiffStudyConfig` except those it declares irrelevant (``_FINETUNE``: covered by the
adapter's own hash; the study's fields only matter to the study). ``objectives``, ``beta`` and the
blend weights are never hashed as settings: they are inputs of the stages they change, only when
they are used, so a study of the SFT fine-tune alone keeps the hashes it had before they existed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from ..engines.base import Engine
from ..evaluate.evidence import EVIDENCE_FORMAT
from ..evaluate.geometry import split_half_reliability
from ..extract.positions import DEFAULT_POSITIONS
from ..formats.pairs import Pair
from ..io.atomic import write_json, write_jsonl
from ..io.runs import Codec, Stage
from ..io.tables import write_csv
from ..model.loading import LoadedModel
from ..vectors.vector import SteeringVector
from .artifacts import DIRECTIONS, POSITIONS, SAMPLES, STUDY, STUDY_MARGINS, SUMMARY
from .diff_objectives import NAMES, check_objectives, finetune_info, objective_finetunes
from .diff_summary import diff_summary
from .diff_vectors import Direction, contrastive_and_model_diff, directions_doc, model_diff_only, positions_doc
from .records import DirectionsDoc, PositionsDoc
from .runs import RunDir
from .study import StudyConfig, StudyResult, check_all_layers_coeffs, check_all_layers_models, run_study
from .study_records import DiffSummary
from .study_vectors import check_alphas

REDUCTION = "response_avg"


@dataclass
class DiffStudyConfig:
    """Settings of the diff study (each default written once here): LoRA ``rank``/``alpha``, fine-tune
    ``epochs``, learning rate ``lr`` and ``train_batch_size``, ``seed``, the forward ``batch_size``, the
    number of random ``n_splits`` for split-half reliabilities, the steering ``study``, the fine-tuning
    ``objectives`` (``sft`` first, the reference fine-tune; ``dpo`` adds a DPO fine-tune on the same
    pairs, with ``beta``)."""

    rank: int = 8
    alpha: float = 16
    epochs: int = 2
    lr: float = 1e-3
    train_batch_size: int = 16
    seed: int = 0
    batch_size: int = 32
    n_splits: int = 20
    positions: int = DEFAULT_POSITIONS  # position-resolved model diff at tokens 0..positions-1 (0: off)
    study: StudyConfig = field(default_factory=StudyConfig)
    objectives: list[str] = field(default_factory=lambda: ["sft"])
    beta: float = 0.1  # DPO's beta (Rafailov et al. 2023), with "dpo" among the objectives


# Fields of DiffStudyConfig that stages do not read, named here and used in each stage's one call (a
# field named nowhere is hashed by every stage: a new setting recomputes until declared irrelevant).
_FINETUNE = ("rank", "alpha", "epochs", "lr", "train_batch_size")  # the adapter's own hash covers them
_INPUTS = ("objectives", "beta")  # inputs of the stages they change, where used (as study.blend_alphas)
_STUDY_INPUTS = ("study.batch_size", "study.blend_alphas")  # rounding only; an input where used
_STEERING = (  # the study's fields other than n_bootstrap (read by the comparisons' intervals)
    "study.layers",
    "study.coeffs",
    "study.batch_size",
    "study.max_fluency_drop",
    "study.n_samples",
    "study.max_new_tokens",
    "study.controls",
    "study.seed",
    "study.prompts",
    "study.positions",
    "study.blend_alphas",
    "study.all_layers_coeffs",
    "study.all_layers_models",
)


@dataclass
class DiffStudyResult:
    """What :func:`run_diff_study` made: the run directory, the adapter used, the vectors' files, the
    comparison of the directions (``directions.json``), the steering study (``study.json``),
    per-stage seconds, the position-resolved model diff (``positions.json``, None when off), every
    objective's adapter and study (``sft`` is ``adapter`` and ``study``) and ``summary.json``."""

    run_dir: Path
    adapter: Path
    vectors: dict[str, Path]
    comparison: DirectionsDoc
    study: StudyResult
    timings: dict[str, float]
    positions: PositionsDoc | None = None
    adapters: dict[str, Path] = field(default_factory=dict)
    studies: dict[str, StudyResult] = field(default_factory=dict)
    summary: DiffSummary | None = None


def _pairs_key(pairs: Sequence[Pair]) -> list[list[str]]:
    return [[p.question, p.positive, p.negative] for p in pairs]


def run_diff_study(
    base: LoadedModel,
    train: Sequence[Pair],
    heldout: Sequence[Pair],
    out_dir: str | Path,
    config: DiffStudyConfig | None = None,
    adapter_dir: str | Path | None = None,
    engine: Engine | None = None,
    extra: Sequence[Direction] = (),
) -> DiffStudyResult:
    """Run (or resume) the stages into ``out_dir``; with ``adapter_dir`` the SFT fine-tune is skipped
    (that adapter takes its place; a DPO fine-tune is still trained when asked for).

    ``base`` (transformers) fine-tunes and captures the vectors; ``engine`` (default: the ``hf``
    engine of ``base``) scores and generates in the steering study (:mod:`steerlab.engines`).
    ``extra``: directions compared with the others (``directions.json``) and steered with in the
    study (raw and at the model-diff norms), e.g. a trait's persona vector. Raises SteerlabError for
    bad objectives, blend weights or all-layers settings (before any model work) and what the stages raise.
    """
    config = config or DiffStudyConfig()
    objectives = check_objectives(config.objectives)
    check_alphas(config.study.blend_alphas)
    check_all_layers_coeffs(config.study.all_layers_coeffs)
    check_all_layers_models(config.study.all_layers_models)
    run = RunDir(out_dir)
    data = {"model": base.name, "train": _pairs_key(train), "heldout": _pairs_key(heldout)}
    adapters, finetune_hashes = objective_finetunes(base, train, run, objectives, config, adapter_dir)
    adapter = adapters["sft"]

    paths = {name: run.path / "vectors" / f"{name}.safetensors" for name in ("contrastive", "model_diff")}
    samples_path = run.path / "vectors" / "per_sample.safetensors"  # per-pair / per-sample differences
    vec_stage = run.cached(
        "vectors",
        "vectors/manifest.json",
        {**data, "adapter": run.input_path(adapter), "finetune": finetune_hashes["sft"]},
        lambda _: contrastive_and_model_diff(
            base, train, adapter, paths, samples_path, config.batch_size, config.n_splits, config.seed
        ),
        settings=config,
        ignore=(*_FINETUNE, *_INPUTS, "batch_size", "positions", "study"),
        beside=[*paths.values(), samples_path],  # runs from before per-sample differences recompute
    )
    reliability = dict(vec_stage.value["reliability"])
    samples_paths = {"contrastive": samples_path, "model_diff": samples_path}
    vector_hashes = {"vectors": vec_stage.hash}
    for objective in objectives[1:]:
        _, name, suffix = NAMES[objective]
        paths[name] = run.path / "vectors" / f"{name}.safetensors"
        samples_paths[name] = run.path / "vectors" / f"per_sample{suffix}.safetensors"
        stage = run.cached(
            f"vectors{suffix}",
            f"vectors/manifest{suffix}.json",
            {**data, "adapter": run.input_path(adapters[objective]), "finetune": finetune_hashes[objective]},
            lambda _, o=objective, n=name: model_diff_only(
                base, train, adapters[o], n, paths[n], samples_paths[n], config.batch_size, config.n_splits, config.seed
            ),
            settings=config,
            ignore=(*_FINETUNE, *_INPUTS, "batch_size", "positions", "study"),
            beside=[paths[name], samples_paths[name]],
        )
        reliability.update(stage.value["reliability"])
        vector_hashes[f"vectors{suffix}"] = stage.hash
    vectors = {name: SteeringVector.load(path) for name, path in paths.items()}
    extras = {d.name: d for d in extra}
    extra_hashes = {"extra": {d.name: d.hash for d in extra}} if extra else {}

    def directions(_: Stage) -> DirectionsDoc:
        per_sample = {name: load_file(str(p))[name] for name, p in samples_paths.items()}
        rel = dict(reliability)
        for d in extra:
            per_sample[d.name] = d.per_sample
            rel[d.name] = split_half_reliability(d.per_sample, config.n_splits, config.seed).to_dict()
        every = {**vectors, **{d.name: d.vector for d in extra}}
        return directions_doc(every, per_sample, rel, config.study.n_bootstrap, config.seed)  # type: ignore[return-value]

    comparison = run.cached(
        "compare",
        DIRECTIONS,
        {**vector_hashes, **extra_hashes},
        directions,
        settings=config,
        ignore=(*_FINETUNE, *_INPUTS, "batch_size", "n_splits", "positions", *_STEERING),
    ).value

    positions = _positions_stage(run, base, adapter, vec_stage.hash, samples_path, comparison, config)
    best_position = positions["best_position"] if positions else None
    studies: dict[str, StudyResult] = {}
    for objective in objectives:
        _, name, suffix = NAMES[objective]
        study_vectors = {"contrastive": vectors["contrastive"], name: vectors[name]}
        inputs: dict[str, Any] = {"vectors": vec_stage.hash}
        if objective == "sft":
            if positions:
                study_vectors[f"model_diff_pos{best_position}"] = SteeringVector.load(
                    run.path / "vectors" / f"model_diff_pos{best_position}.safetensors"
                )
            study_vectors.update({n: d.vector for n, d in extras.items()})
            inputs.update(extra_hashes)
        else:
            inputs[f"vectors{suffix}"] = vector_hashes[f"vectors{suffix}"]
        studies[objective] = _study_stage(
            run,
            engine or base,
            adapters[objective],
            study_vectors,
            heldout,
            config,
            name,
            suffix,
            best_position,
            inputs,
        )
    summary = diff_summary(base, comparison, studies, config, run.timings, finetune_info(adapters))
    write_json(run.path / SUMMARY, summary)
    return DiffStudyResult(
        run.path,
        adapter,
        paths,
        comparison,
        studies["sft"],
        run.timings,
        positions,
        adapters,
        studies,
        summary,
    )


def _study_stage(
    run: RunDir,
    engine: Engine | LoadedModel,
    adapter: Path,
    vectors: dict[str, SteeringVector],
    heldout: Sequence[Pair],
    config: DiffStudyConfig,
    reference: str,
    suffix: str,
    best_position: int | None,
    inputs: dict[str, Any],
) -> StudyResult:
    """One objective's steering study (``study{suffix}.json`` with its margins CSV and samples)."""
    margins_file = STUDY_MARGINS.replace(".csv", f"{suffix}.csv")
    samples_file = SAMPLES.replace(".jsonl", f"{suffix}.jsonl")

    def study(_: Stage) -> StudyResult:
        result = run_study(engine, adapter, vectors, heldout, config.study, reference=reference)
        write_csv(run.path / margins_file, result.rows)
        write_jsonl(run.path / samples_file, result.samples)
        return result

    fingerprint = engine.fingerprint() if isinstance(engine, Engine) else {}
    return run.cached(
        f"study{suffix}",
        STUDY.replace(".json", f"{suffix}.json"),
        {
            **inputs,
            "heldout": _pairs_key(heldout),
            "position_vector": best_position,
            "evidence": EVIDENCE_FORMAT,
            **fingerprint,
            # blends are inputs only when run: a study without them keeps the hash it had before they existed
            **({"blend_alphas": config.study.blend_alphas} if config.study.blend_alphas else {}),
        },
        study,
        codec=Codec(lambda stage: StudyResult.from_dict(stage.load_json()), lambda st, r: st.save_json(r.to_dict())),
        settings=config,
        # the captures' batch size, the fine-tune, the reliabilities and the positions read are the
        # vectors' and position vector's business; the margins' batch size changes float rounding only
        ignore=(*_FINETUNE, *_INPUTS, "seed", "batch_size", "n_splits", "positions", *_STUDY_INPUTS),
        beside=[margins_file, samples_file],
    ).value


def _positions_stage(
    run: RunDir,
    base: LoadedModel,
    adapter_dir: Path,
    vectors_hash: str,
    samples_path: Path,
    comparison: DirectionsDoc,
    config: DiffStudyConfig,
) -> PositionsDoc | None:
    """Position-resolved model diff (Minder et al. 2025; :func:`~steerlab.pipelines.diff_vectors.positions_doc`)
    of the SFT fine-tune: (fine-tuned − base) at tokens 0..k-1 of the built-in generic prompts, each
    position's cosine per layer with the contrastive vector; None when ``positions`` is 0."""
    k = config.positions
    if k < 1:
        return None
    return run.cached(
        "positions",
        POSITIONS,
        {"vectors": vectors_hash},
        lambda _: positions_doc(
            run.path,
            base,
            adapter_dir,
            load_file(str(samples_path))["contrastive"],
            comparison["baseline"]["band"],
            k,
            config.batch_size,
            config.study.n_bootstrap,
            config.seed,
        ),
        settings=config,
        ignore=(*_FINETUNE, *_INPUTS, "batch_size", "n_splits", *_STEERING),
        beside=[f"vectors/model_diff_pos{i}.safetensors" for i in range(k)],
    ).value
