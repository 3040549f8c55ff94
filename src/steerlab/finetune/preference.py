"""Preference data for DPO: a chosen and a rejected answer to one prompt, and the DPO objective.

A pair (:class:`steerlab.formats.pairs.Pair`) gives two conversations with the same prompt (system
prompt if any, the question) and different assistant answers: the chosen one (the behaviour answer,
``positive``, by default) and the rejected one. Each goes through the chat template and gets its
assistant-only labels exactly as SFT examples do (:func:`steerlab.finetune.examples.build_example`:
spans from template deltas, the answer's tokens and its end-of-turn markup), so both objectives
train on the same tokens.

**The reference model is the base model**, and its log-likelihoods are computed **once, before
training**, by :func:`reference_logprobs` on the model passed in, before any LoRA layer is attached
(in eval mode, without gradients). That makes the reference the base by construction: nothing of
the adapter exists yet, so no adapter bias, dropout or ``modules_to_save`` copy can leak into it,
which a per-step ``disable_adapter()`` pass would have to be trusted with
(:mod:`steerlab.model.adapters` explains where peft's switch is not the base). It also costs one
forward pass over the data instead of one per epoch. The values are kept on the CPU: two floats per
pair.

Why not ``trl``'s ``DPOTrainer``: trl 1.16.0 requires ``datasets``, ``pyarrow`` and ``pandas``,
none of which steerlab's lock holds (pyarrow alone is a large binary), and its Trainer would be a
second training loop beside steerlab's (its own batching, padding, checkpoints and logs), while
SFT and DPO here share one (:mod:`steerlab.finetune.loop`) and differ only in collation and loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..formats.conversations import Conversation
from ..model.loading import LoadedModel
from ..progress import progress_bar
from .collate import TrainBatch, collate_train
from .examples import TrainExample, build_example
from .loop import Step
from .loss import dpo_loss, sequence_logprobs


@dataclass(frozen=True)
class PreferenceExample:
    """The two training examples of one pair: ``chosen`` (y_w) and ``rejected`` (y_l), the same
    prompt followed by each answer, with assistant-only labels."""

    chosen: TrainExample
    rejected: TrainExample

    @property
    def length(self) -> int:
        """Tokens of the longer of the two sequences."""
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))

    @property
    def trainable(self) -> bool:
        """Whether both answers keep at least one labelled token (after cutting to ``max_length``)."""
        return self.chosen.n_trained > 0 and self.rejected.n_trained > 0


def build_preference_example(
    tokenizer: Any, chosen: Conversation, rejected: Conversation, max_length: int | None = None
) -> PreferenceExample:
    """Token ids and labels of a chosen and a rejected conversation (each cut to ``max_length``
    tokens on the right), built as SFT examples are (:func:`steerlab.finetune.examples.build_example`).

    Raises:
        SteerlabError: see :func:`steerlab.finetune.examples.build_example`.
    """
    return PreferenceExample(
        build_example(tokenizer, chosen, max_length), build_example(tokenizer, rejected, max_length)
    )


def collate_preference(
    examples: Sequence[PreferenceExample], pad_id: int, device: torch.device | str = "cpu"
) -> TrainBatch:
    """One left-padded batch of ``2 * len(examples)`` rows: the chosen sequences, then the rejected
    ones in the same order (one forward pass scores both)."""
    return collate_train([e.chosen for e in examples] + [e.rejected for e in examples], pad_id, device)


def pair_logprobs(
    model: nn.Module, examples: Sequence[PreferenceExample], pad_id: int, device: torch.device
) -> torch.Tensor:
    """``[len(examples), 2]``: the summed log-likelihood of the chosen (column 0) and the rejected
    (column 1) answer of each example under ``model`` (:func:`steerlab.finetune.loss.sequence_logprobs`),
    float32, differentiable."""
    logp, _ = sequence_logprobs(model, collate_preference(examples, pad_id, device))
    return logp.view(2, len(examples)).T


def reference_logprobs(lm: LoadedModel, examples: Sequence[PreferenceExample], batch_size: int = 8) -> torch.Tensor:
    """The reference model's log-likelihoods, ``[len(examples), 2]`` float32 on the CPU (chosen,
    rejected; nats, summed over each answer's labelled tokens): ``lm``'s model as it is, in eval
    mode, without gradients, in batches of ``batch_size`` pairs grouped by length. ``lm``'s
    train/eval mode is restored afterwards."""
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(examples)), key=lambda i: examples[i].length)
    out = torch.empty(len(examples), 2)
    was_training = lm.model.training
    lm.model.eval()
    try:
        with torch.no_grad(), progress_bar("reference log-probs", len(order)) as advance:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                out[idx] = pair_logprobs(lm.model, [examples[i] for i in idx], pad_id, lm.device).cpu()
                advance(len(idx))
    finally:
        lm.model.train(was_training)
    return out


class DpoObjective:
    """DPO (Rafailov et al. 2023, arXiv:2305.18290, eq. 7) for :func:`steerlab.finetune.loop.train_adapter`:
    a batch's loss is the mean over its pairs of :func:`steerlab.finetune.loss.dpo_loss`, with the
    policy's log-likelihoods from the model being trained and the reference ones precomputed on the
    base model (``reference``, ``[n, 2]``, from :func:`reference_logprobs`).

    Metrics per step (means over the batch's pairs): ``reward_margin`` (beta times the difference of
    the policy-to-reference log-ratios of chosen and rejected answer), ``reward_accuracy`` (the
    fraction of pairs whose margin is > 0), ``chosen_reward`` and ``rejected_reward``.
    """

    shown = ("reward_margin",)

    def __init__(
        self,
        examples: Sequence[PreferenceExample],
        reference: torch.Tensor,
        beta: float,
        pad_id: int,
        device: torch.device,
    ) -> None:
        self.examples = list(examples)
        self.reference = reference
        self.beta = beta
        self.pad_id = pad_id
        self.device = device
        self.lengths = [e.length for e in self.examples]

    def step(self, model: nn.Module, indices: list[int]) -> Step:
        """The mean DPO loss of the pairs at ``indices`` under ``model``, with its metrics."""
        policy = pair_logprobs(model, [self.examples[i] for i in indices], self.pad_id, self.device)
        ref = self.reference[indices].to(policy.device)
        loss, chosen, rejected = dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], self.beta)
        margin = (chosen - rejected).detach()
        n_tokens = sum(self.examples[i].chosen.n_trained + self.examples[i].rejected.n_trained for i in indices)
        return Step(
            loss.mean(),
            len(indices),
            {
                "reward_margin": float(margin.mean()),
                "reward_accuracy": float((margin > 0).float().mean()),
                "chosen_reward": float(chosen.detach().mean()),
                "rejected_reward": float(rejected.detach().mean()),
            },
            {"pairs": len(indices), "tokens": n_tokens},
        )
