"""The evidence behind one steering effect (docs/design.md §7): one function,
:func:`steering_evidence`, and one record, :class:`Evidence`. Every steering row steerlab reports —
the diff study's, the multi-trait study's, a sweep's margins and judged scores — is made here.

Given per-sample values (one per held-out pair or question: a behaviour margin in nats/token, or a
judge score 0-100) under steering, unsteered (the *origin*), under K random-direction controls
(same norm, same condition) and under a prompting baseline, the record holds

- the effect: the mean change from the origin (or the mean level when there is no origin), with a
  seeded bootstrap 95% interval over samples (paired: :func:`~steerlab.evaluate.statistics.bootstrap_ci`
  of the per-sample changes);
- the mean steered value (``level``: the margin, the score) and its interval, and the per-sample values;
- the random controls' band (2.5-97.5%, :func:`~steerlab.evaluate.controls.null_band`) and the
  empirical p of the effect among them (Phipson & Smyth 2010), with its sidedness (``alternative``);
- the per-sample spread: steerable / anti-steerable fractions (Tan et al. 2024);
- the effect as a fraction of the prompting effect, with its interval (AxBench, Wu et al. 2025,
  compare steering with prompting on the same metric);
- a verdict derived from these (:func:`~steerlab.evaluate.controls.control_verdict`), which knows the
  resolution of K controls (the smallest p is 1/(K+1)).

**Sidedness, chosen once.** A steering effect has an intended direction (a positive coefficient
should raise the behaviour, a negative one lower it; subtracting a fine-tuning direction should undo
the fine-tune), and the claim tested is "it moves the behaviour the intended way further than random
directions of its norm do". The p of every such effect is therefore one-sided in the intended
direction (:func:`alternative_for`: ``"greater"`` or ``"less"`` on the recorded effect); a random
direction that moves the behaviour far the *wrong* way is not evidence that the vector steers, and
an effect beyond the band the wrong way gets its own verdict. Only an effect with no intended
direction (coefficient 0) is tested two-sided. Every record writes its ``alternative``, and readers
name it next to p. Source of the controls: Soligo et al. 2025 report random same-norm directions
moving a behaviour by < 10% where the real direction moves it by 78-90%.

**Gap fractions are a transform.** The diff study reads an effect as a fraction of the base →
fine-tuned gap (*undone* on the fine-tuned model, *induced* on the base): :meth:`Evidence.gap_fraction`
divides the effect, its controls and band by the gap (oriented so that positive is towards the
target) and draws the fraction's interval by resampling pairs jointly
(:func:`~steerlab.evaluate.statistics.gap_fraction_ci`); nothing is computed twice.

Reuse (a new study kind, a calibration command): build the per-sample tensors of a condition, call
:func:`steering_evidence`, write ``record.to_dict()`` into the artifact (or the fields your format
needs) and print ``record.verdict``. Intervals are ``None`` when fewer than 2 samples allow none and
``[None, None]`` when unbounded (a ratio whose denominator's interval holds 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TypedDict

import torch

from ..errors import SteerlabError
from .controls import Alternative, control_summary, control_verdict
from .statistics import DEFAULT_RESAMPLES, bootstrap_ci, ratio_of_means_ci, steerable_fractions

Interval = list[float | None] | None  # None: no interval (n < 2); [lo, hi], an end None where unbounded
Samples = torch.Tensor | Sequence[float]
NO_CONTROLS = "no random-direction controls run"
# The version of the rules behind a record (sidedness, verdicts, fields). Stages whose artifacts hold
# evidence rows hash it, so rows computed under older rules are recomputed, never mixed with new ones.
EVIDENCE_FORMAT = 2


class RandomDoc(TypedDict):
    """The ``random`` field of a steering row: the K controls' band (units of the effect), the
    empirical p of the effect among them and its sidedness."""

    mean: float
    lo: float
    hi: float
    p: float
    k: int
    alternative: Alternative


class EvidenceDoc(TypedDict):
    """:meth:`Evidence.to_dict` with the level named ``margin`` (nats/token)."""

    effect: float | None
    ci95: Interval
    margin: float
    margin_ci95: Interval
    per_pair: list[float]
    steerable_fraction: float | None
    anti_steerable_fraction: float | None
    random: RandomDoc | None
    random_effects: list[float]
    alternative: Alternative
    verdict: str | None
    vs_prompting: float | None
    vs_prompting_ci95: Interval


def alternative_for(intended: float) -> Alternative:
    """The sidedness of the empirical p for an effect whose intended direction has sign ``intended``
    (+1: steering should raise the value, -1: lower it, 0: no intended direction). The one place it
    is chosen; see the module docstring for why steering effects are one-sided."""
    return "greater" if intended > 0 else "less" if intended < 0 else "two-sided"


def finite(x: Any) -> float | None:
    """``x`` as a float, or None when it is missing, NaN or infinite (JSON has no inf)."""
    return float(x) if x is not None and math.isfinite(float(x)) else None


def interval(lo: Any, hi: Any) -> list[float | None]:
    """``[lo, hi]`` for JSON: an unbounded end (inf, NaN) becomes ``None``."""
    return [finite(lo), finite(hi)]


def _values(x: Samples, what: str) -> torch.Tensor:
    """``x`` as float64 ``[n]`` (a list of floats keeps its precision), n >= 1, finite."""
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(list(x), dtype=torch.float64)
    t = t.to(torch.float64).reshape(-1)
    if t.numel() == 0:
        raise SteerlabError(f"steering_evidence: {what}: no samples")
    if not torch.isfinite(t).all():
        raise SteerlabError(f"steering_evidence: {what}: NaN or inf values")
    return t


def _mean(control: Samples | float, n: int | None) -> float:
    """A control's mean value: of its per-sample values (``n`` of them when given), or the mean
    itself when only that was kept (a number)."""
    if isinstance(control, int | float) or (isinstance(control, torch.Tensor) and control.ndim == 0):
        value = float(control)
        if not math.isfinite(value):
            raise SteerlabError("steering_evidence: control: NaN or inf values")
        return value
    values = _values(control, "control")
    if n is not None and len(values) != n:
        raise SteerlabError(f"steering_evidence: every control must hold the {n} samples of the condition")
    return float(values.mean())


def _ci(values: torch.Tensor, n_resamples: int, seed: int) -> Interval:
    return interval(*bootstrap_ci(values, n_resamples, seed)) if values.numel() >= 2 else None


@dataclass(frozen=True)
class Evidence:
    """One steering effect with everything docs/design.md §7 asks of it (see the module docstring).

    Attributes:
        effect: mean change from the origin (steered - origin, in the samples' units), or the mean
            level when there is no origin; a gap fraction after :meth:`gap_fraction`. None when
            undefined (a zero gap).
        ci95: its bootstrap 95% interval.
        level, level_ci95: mean steered value (a margin in nats/token, a score 0-100) and its interval.
        per_sample: the steered values ``[n]``.
        intended: +1 / -1 / 0, the direction the effect is meant to go (in the units of ``effect``).
        alternative: the sidedness of ``random.p`` (:func:`alternative_for` of ``intended``).
        steerable_fraction, anti_steerable_fraction: samples moved the intended / the other way
            (None without an origin or an intended direction).
        random: the controls' band and p (None without controls), as a :class:`RandomDoc`.
        control_effects: each control's effect, in the units of ``effect``.
        verdict: :func:`~steerlab.evaluate.controls.control_verdict`, or ``NO_CONTROLS``.
        vs_prompting, vs_prompting_ci95: the change as a fraction of the prompting baseline's change
            (same samples; interval from resampling them jointly, ``[None, None]`` when prompting's
            own interval holds 0).
    """

    effect: float | None
    ci95: Interval
    level: float
    level_ci95: Interval
    per_sample: tuple[float, ...]
    intended: int
    alternative: Alternative
    steerable_fraction: float | None
    anti_steerable_fraction: float | None
    random: RandomDoc | None
    control_effects: tuple[float, ...]
    verdict: str | None
    vs_prompting: float | None
    vs_prompting_ci95: Interval

    @property
    def n(self) -> int:
        """Samples behind the effect."""
        return len(self.per_sample)

    def to_dict(self, level: str = "margin", digits: int | None = None) -> dict[str, Any]:
        """The record as a steering row's fields (:class:`EvidenceDoc` for ``level="margin"``):
        ``effect``, ``ci95``, ``<level>``, ``<level>_ci95``, ``per_pair`` (rounded to ``digits``
        decimals when given), the fractions, ``random``, ``random_effects``, ``alternative``,
        ``verdict``, ``vs_prompting``, ``vs_prompting_ci95``."""
        per = [round(v, digits) if digits is not None else v for v in self.per_sample]
        return {
            "effect": self.effect,
            "ci95": self.ci95,
            level: self.level,
            f"{level}_ci95": self.level_ci95,
            "per_pair": per,
            "steerable_fraction": self.steerable_fraction,
            "anti_steerable_fraction": self.anti_steerable_fraction,
            "random": None if self.random is None else dict(self.random),
            "random_effects": list(self.control_effects),
            "alternative": self.alternative,
            "verdict": self.verdict,
            "vs_prompting": self.vs_prompting,
            "vs_prompting_ci95": self.vs_prompting_ci95,
        }

    def gap_fraction(
        self, origin: Samples, target: Samples, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
    ) -> Evidence:
        """The same evidence as a fraction of the gap from ``origin`` to ``target`` (per-sample
        ``[n]``, the samples of this record; e.g. the diff study's fine-tuned and base margins):
        effect, controls and band divided by ``mean(target) - mean(origin)``, so 1 is the whole gap
        and positive is towards the target; the interval of the fraction from resampling the
        samples jointly (``[None, None]`` when the gap's own interval holds 0); p one-sided
        (``"greater"``); level, per-sample values, fractions and the prompting comparison are
        unchanged. A zero gap gives effect, band and verdict None.

        Raises:
            SteerlabError: ``origin``/``target`` are not the record's samples.
        """
        o, t = _values(origin, "origin"), _values(target, "target")
        s = torch.tensor(self.per_sample, dtype=torch.float64)
        if not o.shape == t.shape == s.shape:
            raise SteerlabError(
                f"gap_fraction: origin, target and steered must hold the same samples, got {len(o)}, {len(t)}, {len(s)}"
            )
        gap = float(t.mean() - o.mean())
        if gap == 0.0:
            return replace(self, effect=None, ci95=None, random=None, control_effects=(), verdict=None, intended=1)
        fraction = float(s.mean() - o.mean()) / gap
        ci = interval(*ratio_of_means_ci(s - o, t - o, n_resamples, seed)) if len(s) >= 2 else None
        controls = tuple(c / gap for c in self.control_effects)
        random, verdict = _controls(fraction, controls, "greater")
        return replace(
            self,
            effect=fraction,
            ci95=ci,
            intended=1,
            alternative="greater",
            random=random,
            control_effects=controls,
            verdict=verdict,
        )


def _controls(effect: float, control_effects: Sequence[float], alternative: Alternative):
    """The controls' band with p, and the verdict (``NO_CONTROLS`` without controls)."""
    if not control_effects:
        return None, NO_CONTROLS
    band = control_summary(effect, list(control_effects), alternative=alternative)
    random: RandomDoc = {
        "mean": float(band["mean"]),
        "lo": float(band["lo"]),
        "hi": float(band["hi"]),
        "p": float(band["p"]),
        "k": int(band["k"]),
        "alternative": alternative,
    }
    return random, control_verdict(effect, random)


def steering_evidence(
    steered: Samples,
    origin: Samples | None = None,
    controls: Sequence[Samples | float] = (),
    *,
    intended: float = 1.0,
    prompted: Samples | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Evidence:
    """The evidence for one steering condition (see the module docstring).

    Args:
        steered: per-sample values under steering ``[n]`` (margins in nats/token, scores 0-100).
        origin: the same samples unsteered ``[n]``: the effect is the mean change, its interval
            paired. None: the effect is the mean level and the controls are compared as levels (a
            grid without an unsteered cell; a common origin shifts every level alike, so p and the
            verdict are the same either way).
        controls: each random-direction control's per-sample values (same condition), ``K × [n]``
            (without an origin a control may hold its own number of samples, e.g. judge scores with
            some None left out), or each control's mean where only that was kept.
        intended: the sign of the intended change: +1 (raise), -1 (lower), 0 (none: coefficient 0).
        prompted: the same samples under the prompting baseline ``[n]`` (needs ``origin``): the
            change as a fraction of prompting's change, with its interval.
        n_resamples, seed: the seeded bootstrap (every interval uses the same resample indices).

    Raises:
        SteerlabError: no samples, NaN/inf values, samples that do not line up, ``prompted``
            without ``origin``.
    """
    s = _values(steered, "steered")
    sign = 1 if intended > 0 else -1 if intended < 0 else 0
    alternative = alternative_for(sign)
    if origin is None:
        if prompted is not None:
            raise SteerlabError("steering_evidence: a prompting comparison needs the unsteered origin")
        effect, ci = float(s.mean()), _ci(s, n_resamples, seed)
        control_effects = tuple(_mean(c, None) for c in controls)
        steerable = anti = None
    else:
        o = _values(origin, "origin")
        if o.shape != s.shape:
            raise SteerlabError(f"steering_evidence: origin holds {len(o)} samples, steered {len(s)}")
        change = s - o
        effect, ci = float(change.mean()), _ci(change, n_resamples, seed)
        control_effects = tuple(_mean(c, len(s)) - float(o.mean()) for c in controls)
        steerable = anti = None
        if sign:
            spread = steerable_fractions(change, sign)
            steerable, anti = float(spread["steerable"]), float(spread["anti_steerable"])
    vs = vs_ci = None
    if prompted is not None and sign:
        p_change = _values(prompted, "prompted") - o
        if p_change.shape != s.shape:
            raise SteerlabError(f"steering_evidence: prompted holds {len(p_change)} samples, steered {len(s)}")
        mean_p = float(p_change.mean())
        vs = finite(effect / mean_p) if mean_p != 0.0 else None
        if len(s) >= 2:
            lo, hi = ratio_of_means_ci(change, p_change, n_resamples, seed)
            vs_ci = interval(lo, hi)
    random, verdict = _controls(effect, control_effects, alternative)
    return Evidence(
        effect=effect,
        ci95=ci,
        level=float(s.mean()),
        level_ci95=_ci(s, n_resamples, seed),
        per_sample=tuple(float(v) for v in s),
        intended=sign,
        alternative=alternative,
        steerable_fraction=steerable,
        anti_steerable_fraction=anti,
        random=random,
        control_effects=control_effects,
        verdict=verdict,
        vs_prompting=vs,
        vs_prompting_ci95=vs_ci,
    )


__all__ = [
    "EVIDENCE_FORMAT",
    "NO_CONTROLS",
    "Alternative",
    "Evidence",
    "EvidenceDoc",
    "Interval",
    "RandomDoc",
    "alternative_for",
    "finite",
    "interval",
    "steering_evidence",
]
