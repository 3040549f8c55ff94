"""The research question end to end, as resumable stages in a run directory (SPEC §7):

``finetune``  LoRA fine-tune of the base on the behaviour answers of the train pairs -> ``adapter/``
``vectors``   contrastive vector (base model, train pairs) and model-diff vector (fine-tuned − base on
              the same train questions with both answers), both with reduction ``response_avg``;
              per-sample differences give split-half reliabilities -> ``vectors/*.safetensors``
``compare``   cosine per layer between the two, with the random baseline, norms, distances,
              reliabilities and resampling intervals -> ``directions.json``
              (:class:`~steerlab.pipelines.records.DirectionsDoc`; ``compare.json`` in runs made
              before it was renamed, still read by the report)
``positions`` the position-resolved model diff -> ``positions.json``, ``vectors/model_diff_pos*``
``study``     the steering study of :mod:`steerlab.pipelines.study` on the held-out pairs ->
              ``study.json`` (:class:`~steerlab.pipelines.records.StudyDoc`), ``study_margins.csv``,
              ``samples.jsonl``

Each stage is one :meth:`~steerlab.io.runs.RunDir.cached` call that hashes its inputs and every field
of :class:`DiffStudyConfig` except those it declares irrelevant (``_FINETUNE``: covered by the
adapter's own hash; the study's fields only matter to the study).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from ..activations.capture import ChatSample, capture
from ..engines.base import Engine
from ..evaluate.evidence import EVIDENCE_FORMAT
from ..evaluate.geometry import compare_vectors, split_half_reliability
from ..evaluate.statistics import resampled_cosine_ci
from ..extract.mean_difference import MeanDifference, vector_metadata
from ..extract.model_diff import attached_adapter, pair_diff_samples
from ..extract.positions import DEFAULT_POSITIONS
from ..finetune.config import FinetuneConfig
from ..finetune.training import run_finetune
from ..formats.conversations import pairs_to_chat
from ..formats.pairs import Pair
from ..formats.prompts import generic_prompts
from ..io.atomic import write_jsonl
from ..io.runs import Codec, Stage
from ..io.tables import write_csv
from ..model.loading import LoadedModel
from ..vectors.vector import SteeringVector, cosine
from .artifacts import DIRECTIONS, POSITIONS, SAMPLES, STUDY, STUDY_MARGINS
from .records import DirectionsDoc, PositionsDoc
from .runs import RunDir
from .study import StudyConfig, StudyResult, run_study

REDUCTION = "response_avg"


@dataclass
class DiffStudyConfig:
    """Settings of the diff study (each default written once here): LoRA ``rank``/``alpha``, fine-tune
    ``epochs``, learning rate ``lr`` and ``train_batch_size``, ``seed``, the forward ``batch_size``, the
    number of random ``n_splits`` for split-half reliabilities, and the steering ``study``."""

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


# Fields of DiffStudyConfig that stages do not read, named here and used in each stage's one call (a
# field named nowhere is hashed by every stage: a new setting recomputes until declared irrelevant).
_FINETUNE = ("rank", "alpha", "epochs", "lr", "train_batch_size")  # the adapter's own hash covers them
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
)


@dataclass
class DiffStudyResult:
    """What :func:`run_diff_study` made: the run directory, the adapter used, the two vectors' files,
    the comparison of the two directions (``directions.json``), the steering study (``study.json``),
    per-stage seconds and the position-resolved model diff (``positions.json``, None when off)."""

    run_dir: Path
    adapter: Path
    vectors: dict[str, Path]
    comparison: DirectionsDoc
    study: StudyResult
    timings: dict[str, float]
    positions: PositionsDoc | None = None


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
) -> DiffStudyResult:
    """Run (or resume) the stages into ``out_dir``; with ``adapter_dir`` the fine-tune is skipped.

    ``base`` (transformers) fine-tunes and captures the vectors; ``engine`` (default: the ``hf``
    engine of ``base``) scores and generates in the steering study (:mod:`steerlab.engines`).
    """
    config = config or DiffStudyConfig()
    run = RunDir(out_dir)
    data = {"model": base.name, "train": _pairs_key(train), "heldout": _pairs_key(heldout)}

    finetune_hash = None  # an adapter passed in is identified by its path alone
    if adapter_dir is None:
        # The fine-tune is its own stage (steerlab.finetune.training): kept when config, data and base match.
        adapter_dir = run.path / "adapter"
        started = time.perf_counter()
        ft_config = FinetuneConfig(
            rank=config.rank,
            alpha=config.alpha,
            epochs=config.epochs,
            lr=config.lr,
            batch_size=config.train_batch_size,
            seed=config.seed,
        )
        result = run_finetune(base, pairs_to_chat(train, "positive"), adapter_dir, ft_config)
        finetune_hash = result.config_hash  # a retrained adapter makes the vectors stale
        if not result.reused:
            run.timings["finetune"] = round(time.perf_counter() - started, 3)
    adapter_dir = Path(adapter_dir)

    paths = {name: run.path / "vectors" / f"{name}.safetensors" for name in ("contrastive", "model_diff")}
    samples_path = run.path / "vectors" / "per_sample.safetensors"  # per-pair / per-sample differences
    vec_stage = run.cached(
        "vectors",
        "vectors/manifest.json",
        {**data, "adapter": str(adapter_dir), "finetune": finetune_hash},
        lambda _: _vectors(base, train, adapter_dir, paths, samples_path, config),
        settings=config,
        ignore=(*_FINETUNE, "batch_size", "positions", "study"),
        beside=[*paths.values(), samples_path],  # runs from before per-sample differences recompute
    )
    manifest = vec_stage.value
    vectors = {name: SteeringVector.load(path) for name, path in paths.items()}

    def directions(_: Stage) -> DirectionsDoc:
        doc: dict[str, Any] = compare_vectors(vectors).to_dict()
        doc["reliability"] = manifest["reliability"]
        per_sample = load_file(str(samples_path))
        ci = resampled_cosine_ci(
            per_sample["contrastive"], per_sample["model_diff"], config.study.n_bootstrap, config.seed
        )
        doc["cosine_ci95"] = {"contrastive|model_diff": [[float(lo), float(hi)] for lo, hi in ci]}
        return doc  # type: ignore[return-value]

    comparison = run.cached(
        "compare",
        DIRECTIONS,
        {"vectors": vec_stage.hash},
        directions,
        settings=config,
        ignore=(*_FINETUNE, "batch_size", "n_splits", "positions", *_STEERING),
    ).value

    positions = _positions_stage(run, base, adapter_dir, vec_stage.hash, samples_path, comparison, config)
    study_vectors = dict(vectors)
    best_position = positions["best_position"] if positions else None
    if positions:
        study_vectors[f"model_diff_pos{best_position}"] = SteeringVector.load(
            run.path / "vectors" / f"model_diff_pos{best_position}.safetensors"
        )

    def study(_: Stage) -> StudyResult:
        result = run_study(engine or base, adapter_dir, study_vectors, heldout, config.study)
        write_csv(run.path / STUDY_MARGINS, result.rows)
        write_jsonl(run.path / SAMPLES, result.samples)
        return result

    study_doc = run.cached(
        "study",
        STUDY,
        {
            "vectors": vec_stage.hash,
            "heldout": data["heldout"],
            "position_vector": best_position,
            "evidence": EVIDENCE_FORMAT,
            **(engine.fingerprint() if engine is not None else {}),
            # blends are inputs only when run: a study without them keeps the hash it had before they existed
            **({"blend_alphas": config.study.blend_alphas} if config.study.blend_alphas else {}),
        },
        study,
        codec=Codec(lambda stage: StudyResult.from_dict(stage.load_json()), lambda st, r: st.save_json(r.to_dict())),
        settings=config,
        # the captures' batch size, the fine-tune, the reliabilities and the positions read are the
        # vectors' and position vector's business; the margins' batch size changes float rounding only
        ignore=(*_FINETUNE, "seed", "batch_size", "n_splits", "positions", "study.batch_size", "study.blend_alphas"),
        beside=[STUDY_MARGINS, SAMPLES],
    ).value
    return DiffStudyResult(run.path, adapter_dir, paths, comparison, study_doc, run.timings, positions)


def _vectors(
    base: LoadedModel,
    train: Sequence[Pair],
    adapter_dir: Path,
    paths: dict[str, Path],
    samples_path: Path,
    config: DiffStudyConfig,
) -> dict[str, Any]:
    """The contrastive and model-diff vectors from one base pass and one fine-tuned pass over the
    train pairs (samples: question + positive, question + negative per pair), their per-sample
    differences (``per_sample.safetensors``) and split-half reliabilities; returns the manifest."""
    samples = pair_diff_samples(train, "both")
    plain = capture(base, samples, [REDUCTION], batch_size=config.batch_size)[REDUCTION]
    contrast = plain[0::2] - plain[1::2]
    with attached_adapter(base, adapter_dir) as tuned:
        tuned_acts = capture(tuned, samples, [REDUCTION], batch_size=config.batch_size)[REDUCTION]
    diffs = tuned_acts - plain
    contrastive, model_diff = MeanDifference(), MeanDifference()
    contrastive.add({REDUCTION: plain[0::2]}, 1.0)
    contrastive.add({REDUCTION: plain[1::2]}, -1.0)
    model_diff.add({REDUCTION: tuned_acts}, 1.0)
    model_diff.add({REDUCTION: plain}, -1.0)
    vectors = {
        "contrastive": contrastive.vectors(len(train), vector_metadata(base, "contrastive", len(train)))[REDUCTION],
        "model_diff": model_diff.vectors(
            len(samples), vector_metadata(base, "model_diff", len(samples), adapter=str(adapter_dir))
        )[REDUCTION],
    }
    for name, vec in vectors.items():
        vec.save(paths[name])
    save_file({"contrastive": contrast.contiguous(), "model_diff": diffs.contiguous()}, str(samples_path))
    return {
        "vectors": {name: path.name for name, path in paths.items()},
        "reliability": {
            "contrastive": split_half_reliability(contrast, config.n_splits, config.seed).to_dict(),
            "model_diff": split_half_reliability(diffs, config.n_splits, config.seed).to_dict(),
        },
    }


def _positions_stage(
    run: RunDir,
    base: LoadedModel,
    adapter_dir: Path,
    vectors_hash: str,
    samples_path: Path,
    comparison: DirectionsDoc,
    config: DiffStudyConfig,
) -> PositionsDoc | None:
    """Position-resolved model diff (Minder et al. 2025): (fine-tuned − base) at tokens 0..k-1 of the
    built-in generic prompts (plain text, unrelated to the behaviour), each position's cosine per
    layer with the contrastive vector, with resampling intervals and the random band. Position 0
    (the first token, an attention sink) is kept apart: the best position, which the study also
    steers with, is the one among 1..k-1 with the largest mean |cosine| with the contrastive vector
    over layers."""
    k = config.positions
    if k < 1:
        return None
    return run.cached(
        "positions",
        POSITIONS,
        {"vectors": vectors_hash},
        lambda _: _positions(run, base, adapter_dir, samples_path, comparison, config),
        settings=config,
        ignore=(*_FINETUNE, "batch_size", "n_splits", *_STEERING),
        beside=[f"vectors/model_diff_pos{i}.safetensors" for i in range(k)],
    ).value


def _positions(
    run: RunDir,
    base: LoadedModel,
    adapter_dir: Path,
    samples_path: Path,
    comparison: DirectionsDoc,
    config: DiffStudyConfig,
) -> dict[str, Any]:
    """The position-resolved model diff's document, :class:`~steerlab.pipelines.records.PositionsDoc`
    (see :func:`_positions_stage`)."""
    k = config.positions
    prompts = generic_prompts()
    samples = [ChatSample(p, chat=False) for p in prompts]
    names = [f"position:{i}" for i in range(k)]
    plain = capture(base, samples, names, batch_size=config.batch_size)
    with attached_adapter(base, adapter_dir) as tuned:
        tuned_acts = capture(tuned, samples, names, batch_size=config.batch_size)
    contrast = load_file(str(samples_path))["contrastive"]
    contrastive = contrast.double().mean(0)
    band = comparison["baseline"]["band"]
    doc: dict[str, Any] = {
        "k": k,
        "n_prompts": len(prompts),
        "inputs": "plain text (no chat template)",
        "random_band": band,
        "positions": {},
    }
    for i, name in enumerate(names):
        aggregate = MeanDifference()
        aggregate.add({name: tuned_acts[name]}, 1.0)
        aggregate.add({name: plain[name]}, -1.0)
        vector = aggregate.vectors(
            len(samples),
            vector_metadata(
                base,
                "model_diff",
                len(samples),
                adapter=str(adapter_dir),
                position=i,
                inputs="plain text",
                prompts="generic",
            ),
        )[name]
        vector.save(run.path / "vectors" / f"model_diff_pos{i}.safetensors")
        cos = cosine(vector.data.double(), contrastive)
        ci = resampled_cosine_ci(tuned_acts[name] - plain[name], contrast, config.study.n_bootstrap, config.seed)
        doc["positions"][str(i)] = {
            "cosine_with_contrastive": [float(c) for c in cos],
            "ci95": [[float(lo), float(hi)] for lo, hi in ci],
            "norms": [float(n) for n in vector.norms()],
        }

    def mean_abs_cosine(i: int) -> float:
        values = doc["positions"][str(i)]["cosine_with_contrastive"]
        return sum(abs(c) for c in values) / len(values)

    doc["best_position"] = max(list(range(1, k)) or [0], key=mean_abs_cosine)
    return doc
