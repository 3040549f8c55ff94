"""The diff study's directions (:mod:`steerlab.pipelines.diff_study`): how each is extracted, and their
comparison.

- :func:`contrastive_and_model_diff`: the contrastive vector (base model, train pairs) and the
  model-diff vector of the first fine-tune, from one base pass and one fine-tuned pass;
- :func:`model_diff_only`: the model-diff vector of another fine-tune (e.g. DPO) on the same samples;
- :class:`Direction`: a direction made elsewhere (the persona vector of a trait study) with the
  per-sample differences behind it;
- :func:`directions_doc`: every direction compared per layer (``directions.json``): cosine for every
  pair with the random band, resampling intervals and split-half reliabilities;
- :func:`positions_doc`: the position-resolved model diff (``positions.json``).

All vectors use the reduction ``response_avg`` and have shape ``[n_layers, d_model]`` (layer L = the
output of decoder block L); per-sample differences are ``[n_samples, n_layers, d_model]``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..activations.capture import ChatSample, capture
from ..evaluate.geometry import compare_vectors, pair_key, split_half_reliability
from ..evaluate.statistics import resampled_cosine_ci
from ..extract.mean_difference import MeanDifference, vector_metadata
from ..extract.model_diff import attached_adapter, pair_diff_samples
from ..formats.pairs import Pair
from ..formats.prompts import generic_prompts
from ..model.loading import LoadedModel
from ..vectors.vector import SteeringVector, cosine

REDUCTION = "response_avg"


@dataclass
class Direction:
    """A direction compared and steered with beside the study's own: ``name`` (its rows' ``vector``),
    the ``vector`` ``[n_layers, d_model]``, the per-sample differences it is the mean of
    (``per_sample`` ``[n, n_layers, d_model]``: intervals and reliabilities) and a ``hash`` of what
    made it (for the stages' configs)."""

    name: str
    vector: SteeringVector
    per_sample: torch.Tensor
    hash: str


def _model_diff(base: LoadedModel, samples: list[ChatSample], plain: torch.Tensor, adapter_dir: Path, batch: int):
    """(fine-tuned − base activations per sample ``[n, L, d]``, the model-diff vector)."""
    with attached_adapter(base, adapter_dir) as tuned:
        tuned_acts = capture(tuned, samples, [REDUCTION], batch_size=batch)[REDUCTION]
    aggregate = MeanDifference()
    aggregate.add({REDUCTION: tuned_acts}, 1.0)
    aggregate.add({REDUCTION: plain}, -1.0)
    meta = vector_metadata(base, "model_diff", len(samples), adapter=str(adapter_dir))
    return tuned_acts - plain, aggregate.vectors(len(samples), meta)[REDUCTION]


def contrastive_and_model_diff(
    base: LoadedModel,
    train: Sequence[Pair],
    adapter_dir: Path,
    paths: dict[str, Path],
    samples_path: Path,
    batch_size: int,
    n_splits: int,
    seed: int,
) -> dict[str, Any]:
    """The contrastive and model-diff vectors from one base pass and one fine-tuned pass over the train
    pairs (samples: question + positive, question + negative per pair), saved at ``paths``; their
    per-sample differences (``samples_path``: ``contrastive`` ``[n_pairs, L, d]``, ``model_diff``
    ``[2 n_pairs, L, d]``) and split-half reliabilities; returns the manifest."""
    samples = pair_diff_samples(train, "both")
    plain = capture(base, samples, [REDUCTION], batch_size=batch_size)[REDUCTION]
    contrast = plain[0::2] - plain[1::2]
    contrastive = MeanDifference()
    contrastive.add({REDUCTION: plain[0::2]}, 1.0)
    contrastive.add({REDUCTION: plain[1::2]}, -1.0)
    diffs, model_diff = _model_diff(base, samples, plain, adapter_dir, batch_size)
    vectors = {
        "contrastive": contrastive.vectors(len(train), vector_metadata(base, "contrastive", len(train)))[REDUCTION],
        "model_diff": model_diff,
    }
    for name, vec in vectors.items():
        vec.save(paths[name])
    save_file({"contrastive": contrast.contiguous(), "model_diff": diffs.contiguous()}, str(samples_path))
    return {
        "vectors": {name: path.name for name, path in paths.items()},
        "reliability": {
            "contrastive": split_half_reliability(contrast, n_splits, seed).to_dict(),
            "model_diff": split_half_reliability(diffs, n_splits, seed).to_dict(),
        },
    }


def model_diff_only(
    base: LoadedModel,
    train: Sequence[Pair],
    adapter_dir: Path,
    name: str,
    path: Path,
    samples_path: Path,
    batch_size: int,
    n_splits: int,
    seed: int,
) -> dict[str, Any]:
    """The model-diff vector of another fine-tune (``adapter_dir``) on the same samples as
    :func:`contrastive_and_model_diff`, saved at ``path`` as ``name``; its per-sample differences
    (``samples_path``: ``{name: [2 n_pairs, L, d]}``) and split-half reliability (the manifest)."""
    samples = pair_diff_samples(train, "both")
    plain = capture(base, samples, [REDUCTION], batch_size=batch_size)[REDUCTION]
    diffs, vector = _model_diff(base, samples, plain, adapter_dir, batch_size)
    vector.save(path)
    save_file({name: diffs.contiguous()}, str(samples_path))
    return {
        "vectors": {name: path.name},
        "reliability": {name: split_half_reliability(diffs, n_splits, seed).to_dict()},
    }


def directions_doc(
    vectors: Mapping[str, SteeringVector],
    per_sample: Mapping[str, torch.Tensor],
    reliability: Mapping[str, dict[str, Any]],
    n_resamples: int,
    seed: int,
) -> dict[str, Any]:
    """``directions.json`` (:class:`~steerlab.pipelines.records.DirectionsDoc`): every two of ``vectors``
    compared per layer (:func:`~steerlab.evaluate.geometry.compare_vectors`: cosine, norms, distances,
    the random band), ``reliability`` per vector, and ``cosine_ci95`` per pair (``"a|b"``) from
    resampling each vector's ``per_sample`` differences (:func:`~steerlab.evaluate.statistics.resampled_cosine_ci`)."""
    doc: dict[str, Any] = compare_vectors(vectors).to_dict()
    doc["reliability"] = dict(reliability)
    doc["cosine_ci95"] = {
        pair_key(a, b): [
            [float(lo), float(hi)] for lo, hi in resampled_cosine_ci(per_sample[a], per_sample[b], n_resamples, seed)
        ]
        for a, b in itertools.combinations(vectors, 2)
    }
    return doc


def positions_doc(
    run_path: Path,
    base: LoadedModel,
    adapter_dir: Path,
    contrast: torch.Tensor,
    band: float,
    k: int,
    batch_size: int,
    n_resamples: int,
    seed: int,
) -> dict[str, Any]:
    """The position-resolved model diff (Minder et al. 2025), :class:`~steerlab.pipelines.records.PositionsDoc`:
    (fine-tuned − base) at tokens 0..k-1 of the built-in generic prompts (plain text, unrelated to the
    behaviour), each position's vector saved as ``vectors/model_diff_pos{i}.safetensors`` and its cosine
    per layer with the contrastive vector (the mean of ``contrast`` ``[n_pairs, L, d]``) with resampling
    intervals, read against the random ``band``. Position 0 (the first token, an attention sink) is kept
    apart: the best position, which the study also steers with, is the one among 1..k-1 with the largest
    mean |cosine| with the contrastive vector over layers."""
    prompts = generic_prompts()
    samples = [ChatSample(p, chat=False) for p in prompts]
    names = [f"position:{i}" for i in range(k)]
    plain = capture(base, samples, names, batch_size=batch_size)
    with attached_adapter(base, adapter_dir) as tuned:
        tuned_acts = capture(tuned, samples, names, batch_size=batch_size)
    contrastive = contrast.double().mean(0)
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
        meta = vector_metadata(
            base,
            "model_diff",
            len(samples),
            adapter=str(adapter_dir),
            position=i,
            inputs="plain text",
            prompts="generic",
        )
        vector = aggregate.vectors(len(samples), meta)[name]
        vector.save(run_path / "vectors" / f"model_diff_pos{i}.safetensors")
        cos = cosine(vector.data.double(), contrastive)
        ci = resampled_cosine_ci(tuned_acts[name] - plain[name], contrast, n_resamples, seed)
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
