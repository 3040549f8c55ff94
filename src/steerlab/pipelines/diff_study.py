"""The research question end to end, as resumable stages in a run directory (SPEC §7):

``finetune``  LoRA fine-tune of the base on the behaviour answers of the train pairs -> ``adapter/``
``vectors``   contrastive vector (base model, train pairs) and model-diff vector (fine-tuned − base on
              the same train questions with both answers), both with reduction ``response_avg``;
              per-sample differences give split-half reliabilities -> ``vectors/*.safetensors``
``compare``   cosine per layer between the two, with the random baseline, norms, distances and
              reliabilities -> ``compare.json``
``study``     the steering study of :mod:`steerlab.study` on the held-out pairs -> ``study.json``,
              ``study_margins.csv``, ``samples.jsonl``
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..activations.capture import capture
from ..evaluate.geometry import compare_vectors, split_half_reliability
from ..extract.mean_difference import MeanDifference, vector_metadata
from ..extract.model_diff import attached_adapter, pair_diff_samples
from ..finetune.config import FinetuneConfig
from ..finetune.training import run_finetune
from ..formats.conversations import pairs_to_chat
from ..formats.pairs import Pair
from ..io.atomic import write_jsonl
from ..model.loading import LoadedModel
from ..vectors.vector import SteeringVector
from .runs import RunDir
from .study import StudyConfig, run_study
from .sweep import write_csv

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
    study: StudyConfig = field(default_factory=StudyConfig)


@dataclass
class DiffStudyResult:
    """What :func:`run_diff_study` made: the run directory, the adapter used, the two vectors' files,
    the comparison (``compare.json``), the steering study (``study.json``) and per-stage seconds."""

    run_dir: Path
    adapter: Path
    vectors: dict[str, Path]
    comparison: dict[str, Any]
    study: dict[str, Any]
    timings: dict[str, float]


def _pairs_key(pairs: Sequence[Pair]) -> list[list[str]]:
    return [[p.question, p.positive, p.negative] for p in pairs]


def run_diff_study(
    base: LoadedModel,
    train: Sequence[Pair],
    heldout: Sequence[Pair],
    out_dir: str | Path,
    config: DiffStudyConfig | None = None,
    adapter_dir: str | Path | None = None,
) -> DiffStudyResult:
    """Run (or resume) the stages into ``out_dir``; with ``adapter_dir`` the fine-tune is skipped."""
    config = config or DiffStudyConfig()
    run = RunDir(out_dir)
    data = {"model": base.name, "train": _pairs_key(train), "heldout": _pairs_key(heldout)}

    finetune_hash = None  # an adapter passed in is identified by its path alone
    if adapter_dir is None:
        # The fine-tune is its own stage (steerlab.finetune.training): kept when config, data and base match.
        adapter_dir = run.path / "adapter"
        started = time.perf_counter()
        ft_config = FinetuneConfig(rank=config.rank, alpha=config.alpha, epochs=config.epochs, lr=config.lr,
                                   batch_size=config.train_batch_size, seed=config.seed)
        result = run_finetune(base, pairs_to_chat(train, "positive"), adapter_dir, ft_config)
        finetune_hash = result.config_hash  # a retrained adapter makes the vectors stale
        if not result.reused:
            run.timings["finetune"] = round(time.perf_counter() - started, 3)
    adapter_dir = Path(adapter_dir)

    vec_stage = run.stage("vectors", "vectors/manifest.json", {**data, "adapter": str(adapter_dir),
                                                              "finetune": finetune_hash,
                                                              "n_splits": config.n_splits, "seed": config.seed})
    paths = {name: run.path / "vectors" / f"{name}.safetensors" for name in ("contrastive", "model_diff")}
    if vec_stage.done():
        manifest = vec_stage.load_json()
    else:
        # One base pass serves both vectors: samples are (question + positive, question + negative) per pair.
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
            "model_diff": model_diff.vectors(len(samples), vector_metadata(
                base, "model_diff", len(samples), adapter=str(adapter_dir)))[REDUCTION],
        }
        for name, vec in vectors.items():
            vec.save(paths[name])
        manifest = {
            "vectors": {name: path.name for name, path in paths.items()},
            "reliability": {
                "contrastive": split_half_reliability(contrast, config.n_splits, config.seed).to_dict(),
                "model_diff": split_half_reliability(diffs, config.n_splits, config.seed).to_dict(),
            },
        }
        vec_stage.save_json(manifest)
    vectors = {name: SteeringVector.load(path) for name, path in paths.items()}

    cmp_stage = run.stage("compare", "compare.json", {"vectors": vec_stage.hash})
    if cmp_stage.done():
        comparison = cmp_stage.load_json()
    else:
        comparison = compare_vectors(vectors).to_dict()
        comparison["reliability"] = manifest["reliability"]
        cmp_stage.save_json(comparison)

    study_cfg = asdict(config.study)
    study_stage = run.stage("study", "study.json", {"vectors": vec_stage.hash, "heldout": data["heldout"],
                                                    "study": study_cfg})
    if study_stage.done():
        study = study_stage.load_json()
    else:
        study = run_study(base, adapter_dir, vectors, heldout, config.study)
        write_csv(run.path / "study_margins.csv", study["rows"])
        write_jsonl(run.path / "samples.jsonl", study["samples"])
        study_stage.save_json(study)
    return DiffStudyResult(run.path, adapter_dir, paths, comparison, study, run.timings)
