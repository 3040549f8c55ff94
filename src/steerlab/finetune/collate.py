"""Training batches: the project's one left-padding collation plus the labels.

Ids, attention mask and position ids come from :func:`steerlab.activations.capture.collate` (left
padding, explicit positions, so a batched forward pass equals per-example ones); the labels are laid
out on the same mask, with ``IGNORE`` on the padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..activations.capture import collate
from ..model.chat import EncodedChat
from .examples import IGNORE, TrainExample


@dataclass
class TrainBatch:
    """A left-padded training batch: ``input_ids``, ``attention_mask`` (1 on tokens), ``position_ids``
    (0 at each example's first token) and ``labels`` (``IGNORE`` on padding and non-assistant
    tokens), each ``[batch, seq]``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor


def collate_train(examples: Sequence[TrainExample], pad_id: int, device: torch.device | str = "cpu") -> TrainBatch:
    """Left-pad ``examples`` into one :class:`TrainBatch` on ``device`` (seq = the longest example)."""
    batch = collate([EncodedChat(e.input_ids, 0) for e in examples], pad_id, torch.device(device))
    labels = torch.full_like(batch.input_ids, IGNORE)
    # The mask is 1 exactly on each row's tokens, in order: fill them row-major with the labels.
    labels[batch.attention_mask.bool()] = torch.tensor(
        [label for e in examples for label in e.labels], dtype=torch.long, device=labels.device
    )
    return TrainBatch(batch.input_ids, batch.attention_mask, batch.position_ids(), labels)
