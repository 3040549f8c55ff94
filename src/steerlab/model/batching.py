"""Batching token sequences: the one place sequences are padded into a batch.

Sequences of different lengths are **left-padded** (padding first, tokens right-aligned) with an
attention mask and explicit position ids, so that

- the last position of every row is that row's last token (``model.generate`` continues every row
  from the same column, and logits of the last k tokens are the last k columns), and
- each token gets the position it would have without padding: ``position_ids = cumsum(mask) - 1``
  (0 on padding). Together with the attention mask this makes batched results equal per-sample
  results (docs/design.md §3).

:func:`pad_sequences` is the building block (any per-token values, left or right padding, e.g.
token ids, labels, attention groups); :func:`collate` builds a :class:`Batch` of token ids with
prompt lengths, which activation capture, the behaviour margin and steered generation use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from ..errors import SteerlabError

PaddingSide = Literal["left", "right"]


class _Encoded(Protocol):
    """What :func:`collate` reads from an encoded chat (``steerlab.model.chat.EncodedChat``)."""

    ids: Sequence[int]
    prompt_len: int


def pad_sequences(
    rows: Sequence[Sequence[int] | torch.Tensor],
    fill: int,
    side: PaddingSide = "left",
    width: int | None = None,
) -> torch.Tensor:
    """Stack integer sequences into one ``[len(rows), width]`` long tensor, padded with ``fill``.

    ``side="left"`` right-aligns every row (padding first); ``"right"`` left-aligns it. ``width``
    defaults to the longest row. Raises SteerlabError for no rows, an unknown side, or a row longer
    than ``width``.
    """
    if side not in ("left", "right"):
        raise SteerlabError(f"padding side {side!r}: expected left or right")
    if not rows:
        raise SteerlabError("nothing to batch: no sequences given")
    lengths = [len(r) for r in rows]
    width = max(lengths) if width is None else width
    if max(lengths) > width:
        raise SteerlabError(f"a sequence of {max(lengths)} tokens does not fit a batch of width {width}")
    out = torch.full((len(rows), width), int(fill), dtype=torch.long)
    for i, (row, n) in enumerate(zip(rows, lengths, strict=True)):
        if n:
            cols = slice(width - n, width) if side == "left" else slice(0, n)
            out[i, cols] = torch.as_tensor(row, dtype=torch.long)
    return out


def attention_mask(lengths: Sequence[int], width: int | None = None, side: PaddingSide = "left") -> torch.Tensor:
    """``[len(lengths), width]`` long mask: 1 on the ``lengths[i]`` token columns of row i, 0 on padding."""
    return pad_sequences([[1] * n for n in lengths], 0, side, width)


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Position of each token within its own row, ``[b, T]``: ``cumsum(mask) - 1``, 0 on padding.

    Works for left and right padding alike; this is what a model would use for the row unpadded.
    """
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class Batch:
    """Left-padded token ids of ``b`` sequences of width ``T``.

    ``prompt_lens[i]`` tokens of row i are the prompt, the rest (up to ``lengths[i]``) the response;
    row i starts at column ``pads[i] = T - lengths[i]``.
    """

    input_ids: torch.Tensor  # [b, T] long, left-padded
    attention_mask: torch.Tensor  # [b, T] long, 1 on tokens
    prompt_lens: torch.Tensor  # [b] long
    lengths: torch.Tensor  # [b] long

    @property
    def pads(self) -> torch.Tensor:
        """Padding columns before each row's first token, ``[b]``."""
        return self.input_ids.shape[1] - self.lengths

    @property
    def width(self) -> int:
        """``T``: the number of columns."""
        return int(self.input_ids.shape[1])

    def position_ids(self) -> torch.Tensor:
        """``[b, T]`` position ids (see :func:`position_ids`)."""
        return position_ids(self.attention_mask)


def collate(
    sequences: Sequence[_Encoded | Sequence[int]],
    pad_id: int | None,
    device: torch.device | str = "cpu",
    prompt_lens: Sequence[int] | None = None,
) -> Batch:
    """Left-pad token sequences into one :class:`Batch` on ``device``.

    ``sequences`` are token id lists, or encoded chats (objects with ``ids`` and ``prompt_len``,
    as :func:`steerlab.model.chat.encode_chat` returns). ``prompt_lens`` (one per sequence)
    overrides the encoded prompt lengths; for plain id lists it defaults to the whole sequence.
    ``pad_id`` None (a tokenizer without a pad token) pads with 0; padding is masked either way.
    Raises SteerlabError for no sequences or a ``prompt_lens`` of the wrong length.
    """
    ids = [s.ids if hasattr(s, "ids") else s for s in sequences]
    if prompt_lens is None:
        prompt_lens = [getattr(s, "prompt_len", len(i)) for s, i in zip(sequences, ids, strict=True)]
    elif len(prompt_lens) != len(ids):
        raise SteerlabError(f"{len(prompt_lens)} prompt lengths given for {len(ids)} sequences")
    lengths = [len(i) for i in ids]
    input_ids = pad_sequences(ids, pad_id if pad_id is not None else 0)
    mask = attention_mask(lengths, input_ids.shape[1])
    return Batch(
        input_ids.to(device),
        mask.to(device),
        torch.tensor(list(prompt_lens), dtype=torch.long, device=device),
        torch.tensor(lengths, dtype=torch.long, device=device),
    )


__all__ = ["Batch", "PaddingSide", "attention_mask", "collate", "pad_sequences", "position_ids"]
