"""Choosing the layer to steer at: one rule for every study (the diff study's layer scan, each trait's
layer scan in the multi-trait study).

A layer scan steers at each candidate layer with one coefficient and measures the effect (the
fraction of the fine-tuning gap undone, the change in behaviour margin) and the fluency drop (the
fall in mean log-likelihood per token of both answers, a judge-free incoherence signal). The chosen
layer has the largest effect among the *coherent* layers (fluency drop <= ``max_drop`` nats/token);
when no layer is coherent, the one whose fluency drops least — never the layer that moves the
behaviour most by breaking the model. Ties go to the first candidate in scan order.

The layer is chosen on the pairs the study then measures at it, so the intervals read there do not
account for the choice (a mild winner's curse among the few candidates); the random controls run at
the chosen layer too, so their band carries no such bias against the real vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import SteerlabError


@dataclass(frozen=True)
class ScanPoint:
    """One candidate of a layer scan: ``layer``, its ``effect`` (larger is better; None when
    undefined, e.g. a zero gap) and ``fluency_drop`` (nats/token, unsteered minus steered)."""

    layer: int
    effect: float | None
    fluency_drop: float


def choose_layer(points: Sequence[ScanPoint], max_drop: float) -> int:
    """The chosen layer of a scan (see the module docstring): the largest ``effect`` among points
    with ``fluency_drop <= max_drop``; when none is, the smallest fluency drop.

    Raises:
        SteerlabError: no candidates.
    """
    if not points:
        raise SteerlabError("choose_layer: the layer scan has no candidate layers")
    coherent = [p for p in points if p.fluency_drop <= max_drop]
    if not coherent:
        return int(min(points, key=lambda p: p.fluency_drop).layer)
    return int(max(coherent, key=lambda p: float("-inf") if p.effect is None else p.effect).layer)


__all__ = ["ScanPoint", "choose_layer"]
