"""The fine-tuning settings: one dataclass, the single source of their defaults (API and CLI)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import SteerlabError

OBJECTIVES = ("sft", "dpo")


@dataclass
class FinetuneConfig:
    """Settings of a LoRA fine-tune (:func:`steerlab.finetune.training.run_finetune`, ``run_finetune_pairs``).

    Attributes:
        objective: ``"sft"`` -- next-token cross-entropy on the assistant tokens of chat data;
            ``"dpo"`` -- Direct Preference Optimization on pairs (chosen vs rejected answer to the
            same prompt, the base model as the reference; :mod:`steerlab.finetune.loss`).
        beta: DPO's beta, the strength of the implicit KL penalty towards the reference (0.1, the
            default of Rafailov et al. 2023, appendix B); recorded and hashed for DPO only.
        rank, alpha, dropout: LoRA ``r``, ``lora_alpha`` (update scale = alpha / rank) and
            ``lora_dropout`` (Hu et al. 2021, arXiv:2106.09685).
        target_modules: module names (a list or comma-separated), ``"all-linear"``, or None for every
            linear layer inside the decoder blocks (q/k/v/o/gate/up/down for Llama-style models).
        layers: only adapt these decoder blocks (peft ``layers_to_transform``); None = all.
        epochs: passes over the data.
        lr: AdamW learning rate, constant (no warm-up, no decay).
        batch_size: conversations per optimizer step.
        seed: fixes the LoRA initialisation, the data order and dropout (the caller's RNG state is
            left untouched).
        max_length: tokens per conversation; longer ones are cut on the right.
        weight_decay: AdamW weight decay.
        max_grad_norm: gradient-norm clipping threshold (0 = no clipping).

    Raises:
        SteerlabError: a setting out of range (naming its CLI flag), at construction and again when
            a run starts.
    """

    objective: str = "sft"
    beta: float = 0.1
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str | Sequence[str] | None = None
    layers: Sequence[int] | None = None
    epochs: int = 1
    lr: float = 2e-4
    batch_size: int = 8
    seed: int = 0
    max_length: int = 256
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every numeric setting's range.

        Raises:
            SteerlabError: ``--objective X``: not sft or dpo; ``--FLAG VALUE: out of range`` for the
                first setting out of range.
        """
        if self.objective not in OBJECTIVES:
            raise SteerlabError(f"--objective {self.objective!r}: expected one of {', '.join(OBJECTIVES)}")
        for flag, value, ok in (
            ("--beta", self.beta, self.beta > 0 and math.isfinite(self.beta)),
            ("--rank", self.rank, self.rank >= 1),
            ("--alpha", self.alpha, self.alpha > 0),
            ("--dropout", self.dropout, 0 <= self.dropout < 1),
            ("--epochs", self.epochs, self.epochs >= 1),
            ("--lr", self.lr, self.lr > 0 and math.isfinite(self.lr)),
            ("--batch-size", self.batch_size, self.batch_size >= 1),
            ("--max-length", self.max_length, self.max_length >= 2),
            ("--weight-decay", self.weight_decay, self.weight_decay >= 0),
            ("--max-grad-norm", self.max_grad_norm, self.max_grad_norm >= 0),
        ):
            if not ok:
                raise SteerlabError(f"{flag} {value}: out of range")
