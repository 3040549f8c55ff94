"""The one training loop of every objective: LoRA attached, AdamW over shuffled batches, logged.

An objective (:class:`Objective`: SFT in :mod:`steerlab.finetune.training`, DPO in
:mod:`steerlab.finetune.preference`) says how long each example is and what one batch's loss is;
:func:`train_adapter` does the rest -- the LoRA layers, the optimizer, the epochs, the batching,
gradient clipping, the per-step log, the per-epoch means and saving the adapter -- the same way for
all of them.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import SteerlabError
from ..model.loading import LoadedModel
from ..progress import progress_bar
from .config import FinetuneConfig

log = logging.getLogger("steerlab")

LOG_FILE = "train_log.jsonl"


@dataclass
class Step:
    """One batch's result: ``loss`` (a scalar tensor to minimise), ``weight`` (how much the batch
    counts in its epoch's means: tokens for SFT, pairs for DPO), ``metrics`` (floats, each a mean
    over the batch with the same weight, averaged per epoch like the loss) and ``counts`` (integers
    written to the step's log line only)."""

    loss: torch.Tensor
    weight: int
    metrics: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


class Objective(Protocol):
    """What a training objective gives the loop."""

    lengths: list[int]
    """Tokens per example (the longest sequence it contributes); batches group similar lengths."""
    shown: tuple[str, ...]
    """Names of ``metrics`` shown beside the loss on the progress bar."""

    def step(self, model: nn.Module, indices: list[int]) -> Step:
        """The loss of the examples at ``indices`` under ``model`` (the model with LoRA attached)."""
        ...


@dataclass
class TrainStats:
    """What :func:`train_adapter` measured: the loss of each optimizer step, one record per epoch
    (``epoch``, ``loss`` and each metric: means weighted by :attr:`Step.weight`) and seconds."""

    losses: list[float]
    epochs: list[dict[str, float]]
    train_time_s: float


def batch_order(lengths: list[int], batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """Shuffled batches of example indices; within windows of 8 batches, examples are grouped by
    length (less padding). The order depends only on ``lengths``, ``batch_size`` and ``gen``."""
    perm = torch.randperm(len(lengths), generator=gen).tolist()
    window = batch_size * 8
    batches = []
    for start in range(0, len(perm), window):
        chunk = sorted(perm[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in order]


def train_adapter(lm: LoadedModel, objective: Objective, config: FinetuneConfig, lora: Any, out: Path) -> TrainStats:
    """Attach ``lora`` to ``lm``, run AdamW (``config``'s lr and weight decay, constant schedule,
    gradient-norm clipping at ``config.max_grad_norm``) over shuffled batches of ``config.batch_size``
    examples for ``config.epochs`` epochs, log each step to ``out/train_log.jsonl``, save the adapter
    into ``out``, then detach it again and restore ``lm``'s ``requires_grad`` flags and train/eval
    mode (also on errors). ``config.seed`` fixes the LoRA initialisation, the data order and dropout;
    the caller's RNG state is left as it was.

    Raises:
        SteerlabError: the loss is not finite (naming the step).
    """
    from peft import get_peft_model

    grad_flags = {name: p.requires_grad for name, p in lm.model.named_parameters()}
    was_training = lm.model.training
    n_steps = config.epochs * math.ceil(len(objective.lengths) / config.batch_size)
    fork = [lm.device] if lm.device.type == "cuda" else []
    losses: list[float] = []
    epochs: list[dict[str, float]] = []
    peft_model = None
    with torch.random.fork_rng(devices=fork):
        try:
            torch.manual_seed(config.seed)
            with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
                warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
                peft_model = get_peft_model(lm.model, lora)
            params = [p for p in peft_model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
            gen = torch.Generator().manual_seed(config.seed)
            peft_model.train()
            start = time.perf_counter()
            shown = {name: "-" for name in objective.shown}
            with (
                (out / LOG_FILE).open("w", encoding="utf-8") as log_fh,
                progress_bar("fine-tuning", n_steps, loss="-", **shown) as advance,
            ):
                for epoch in range(config.epochs):
                    sums: dict[str, float] = {}
                    weight = 0
                    for idx in batch_order(objective.lengths, config.batch_size, gen):
                        step = objective.step(peft_model, idx)
                        optimizer.zero_grad(set_to_none=True)
                        step.loss.backward()
                        if config.max_grad_norm > 0:
                            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                        optimizer.step()
                        value = float(step.loss.detach())
                        if not math.isfinite(value):
                            raise SteerlabError(
                                f"fine-tuning diverged at step {len(losses) + 1} (loss {value}); lower --lr"
                            )
                        losses.append(value)
                        values = {"loss": value, **step.metrics}
                        for name, v in values.items():
                            sums[name] = sums.get(name, 0.0) + v * step.weight
                        weight += step.weight
                        record = {"step": len(losses), "epoch": epoch}
                        record |= {name: round(v, 6) for name, v in values.items()}
                        record |= step.counts
                        record |= {"lr": config.lr, "elapsed_s": round(time.perf_counter() - start, 3)}
                        log_fh.write(json.dumps(record) + "\n")
                        log_fh.flush()
                        advance(1, loss=f"{value:.4f}", **{n: f"{step.metrics[n]:.4f}" for n in objective.shown})
                    means = {name: s / max(weight, 1) for name, s in sums.items()}
                    epochs.append({"epoch": epoch, **means})
                    log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k} {v:.4f}" for k, v in means.items()))
            train_time = time.perf_counter() - start
            peft_model.eval()
            peft_model.save_pretrained(str(out))
        finally:
            if peft_model is not None:
                peft_model.unload()  # the base model gets its own modules back
            for name, p in lm.model.named_parameters():
                p.requires_grad_(grad_flags.get(name, p.requires_grad))
            lm.model.train(was_training)
    return TrainStats(losses, epochs, train_time)
