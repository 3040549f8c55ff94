"""The training objectives' formulas: response log-likelihoods, the SFT loss and the DPO loss.

Both objectives score the same tokens: the labelled (assistant) tokens of a :class:`TrainBatch`
(:mod:`steerlab.finetune.examples`), teacher-forced. SFT minimises their cross-entropy; DPO
(Rafailov et al. 2023, "Direct Preference Optimization", arXiv:2305.18290, eq. 7) compares the
summed log-likelihood of a chosen and a rejected answer under the policy and a reference model.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..model.blocks import unwrap_model
from .collate import TrainBatch
from .examples import IGNORE


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(unwrap_model(model).forward).parameters
    except (TypeError, ValueError):
        return False


def sequence_logprobs(model: nn.Module, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced log-likelihood of each row's labelled tokens, summed: ``log p(y | x)``.

    Row i gives ``sum_t log softmax(logits[i, t - 1])[labels[i, t]]`` over the positions t whose label
    is not ``IGNORE`` (the token at t is predicted by the logits at t - 1), in nats, computed in
    float32 whatever the model's dtype. Logits are computed only at the positions that predict a
    labelled token where the model supports ``logits_to_keep`` (the vocabulary projection dominates
    small models' cost).

    Returns ``(log-likelihood [batch] float32, labelled-token count [batch] int64)``; a row without
    labelled tokens has log-likelihood 0. Differentiable with respect to the model's parameters.
    """
    targets = batch.labels[:, 1:]
    cols = (targets != IGNORE).any(0).nonzero().squeeze(-1)
    kwargs: dict[str, Any] = dict(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    )
    if _accepts_logits_to_keep(model):
        logits = model(**kwargs, logits_to_keep=cols).logits
    else:
        logits = model(**kwargs).logits[:, :-1][:, cols]
    targets = targets[:, cols].to(logits.device)
    nll = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(targets.shape)
    return -nll.sum(-1), (targets != IGNORE).sum(-1)


def batch_loss(model: nn.Module, batch: TrainBatch) -> tuple[torch.Tensor, int]:
    """The SFT loss of ``batch``: summed next-token cross-entropy (nats) over its labelled tokens
    (``-sum_i log p(y_i | x_i)`` of :func:`sequence_logprobs`), and the number of those tokens."""
    logp, n_tokens = sequence_logprobs(model, batch)
    return -logp.sum(), int(n_tokens.sum())


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss per pair (Rafailov et al. 2023, arXiv:2305.18290, eq. 7)::

        loss = -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])

    Args:
        policy_chosen, policy_rejected: ``log pi(y_w | x)``, ``log pi(y_l | x)`` under the model being
            trained, each ``[pairs]``: sequence log-likelihoods **summed** over the response tokens
            (:func:`sequence_logprobs`), as in the paper, where ``pi(y | x)`` is the probability of
            the whole response.
        reference_chosen, reference_rejected: the same under the reference model, ``[pairs]``.
        beta: the strength of the implicit KL penalty towards the reference (> 0).

    Returns ``(loss [pairs], chosen reward [pairs], rejected reward [pairs])``, the rewards being the
    implicit ones, ``beta * (log pi(y|x) - log ref(y|x))`` (the paper's section 5); their difference
    is the reward margin, and ``loss = -log sigmoid(margin)`` (``torch.nn.functional.logsigmoid``,
    stable for any margin). Gradients flow through the policy terms; the reference terms are
    detached.
    """
    chosen = beta * (policy_chosen - reference_chosen.detach())
    rejected = beta * (policy_rejected - reference_rejected.detach())
    return -F.logsigmoid(chosen - rejected), chosen, rejected
