"""The model-diff direction of each trait in the multi-trait study (``persona extract -t A -t B
--model-diff``; :mod:`steerlab.pipelines.persona_traits`): a LoRA fine-tune of the model on the trait's
persona answers *without* their instructions (SFT on the positive answers of its pairs), then the
per-sample (fine-tuned − base) activations on each question followed by both of its answers
(``response_avg``, as the diff study's model-diff vector). Their mean is the ``model_diff:<trait>``
direction of the trait × trait cosine matrix, where it meets every trait's persona vector (does the
tendency a fine-tune imprints point where prompting for the trait does?).

Each fine-tune is its own resumable stage (:func:`~steerlab.finetune.training.run_finetune_pairs`,
``DIR/<trait>/adapter/``), identified by its config hash.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..activations.capture import capture
from ..extract.model_diff import attached_adapter, pair_diff_samples
from ..finetune.config import FinetuneConfig
from ..finetune.training import run_finetune_pairs
from ..formats.pairs import Pair
from ..model.loading import LoadedModel
from .runs import RunDir

# The diff study's fine-tune defaults (DiffStudyConfig), for --model-diff.
TRAIT_FINETUNE = FinetuneConfig(rank=8, alpha=16, epochs=2, lr=1e-3, batch_size=16)
MODEL_DIFF_PREFIX = "model_diff:"


def trait_finetune(lm: LoadedModel, run: RunDir, pairs: Sequence[dict[str, Any]], config: FinetuneConfig) -> str:
    """Fine-tune (or keep) ``run/adapter`` on the positive answers of persona ``pairs`` (``pairs.json``
    rows; their system prompts are left out); returns the fine-tune's config hash."""
    return run_finetune_pairs(lm, _pairs(pairs), run.path / "adapter", config).config_hash


def trait_model_diffs(
    lm: LoadedModel, run: RunDir, pairs: Sequence[dict[str, Any]], reduction: str, batch_size: int
) -> torch.Tensor:
    """Per-sample (fine-tuned − base) activations ``[2 n_pairs, n_layers, d_model]`` of the adapter in
    ``run/adapter`` on each pair's question followed by its positive, then its negative answer."""
    samples = pair_diff_samples(_pairs(pairs), "both")
    plain = capture(lm, samples, [reduction], batch_size=batch_size)[reduction]
    with attached_adapter(lm, run.path / "adapter") as tuned:
        tuned_acts = capture(tuned, samples, [reduction], batch_size=batch_size)[reduction]
    return tuned_acts - plain


def _pairs(rows: Sequence[dict[str, Any]]) -> list[Pair]:
    return [Pair(question=p["question"], positive=p["positive"], negative=p["negative"]) for p in rows]
