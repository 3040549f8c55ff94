"""Model inputs built from pairs (docs/design.md §3): the question with its positive and with its negative answer."""

from __future__ import annotations

from collections.abc import Sequence

from ..formats.pairs import Pair
from .capture import ChatSample


def pair_samples(pairs: Sequence[Pair]) -> tuple[list[ChatSample], list[ChatSample]]:
    """``(positive samples, negative samples)``: each pair's question (and system prompt) followed
    by its positive answer, and by its negative answer, in pair order."""
    pos = [ChatSample(p.question, p.positive, p.system) for p in pairs]
    neg = [ChatSample(p.question, p.negative, p.system) for p in pairs]
    return pos, neg
