"""Conditional steering (CAST): a steering spec acts on a row only when its prompt passes a condition.

Conditional activation steering (Lee et al. 2024, "Programming Refusal with Conditional Activation
Steering", arXiv:2409.05907, §3; IBM's ``activation-steering`` library, ``LeashLayer``) steers a
sequence only when its prompt's hidden state lies along a **condition direction** c. With h̄ the
prompt's hidden state at the condition layer L (the output of decoder block L, aggregated over the
prompt's tokens) and ``P = c cᵀ / (cᵀ c)`` the projector on c, the condition similarity is

    sim(h̄) = ⟨h̄, tanh(P h̄)⟩ / (‖h̄‖ · ‖tanh(P h̄)‖)          (a cosine, in [-1, 1])

and the gate passes when ``sim > θ`` (comparator ``">"``) or ``sim < θ`` (``"<"``), strictly; a zero
h̄ or an h̄ orthogonal to c has similarity 0. The tanh is CAST's own (it squashes the projection
before the cosine); the similarity does not depend on the norm or sign of c. IBM's names map as
``condition_comparator_threshold_is="smaller"`` → ``">"`` and ``"larger"`` → ``"<"``, and its layer i
(the *input* of block i) is steerlab's layer i − 1.

**Aggregate.** ``prompt_avg`` (default): the mean over every token of the rendered prompt, CAST's
default ``"mean"`` comparison mode. It reads the whole request, whereas the last prompt token of a chat
template is the same template token for every prompt (it sees the request only through attention);
``prompt_last`` (CAST's ``"last"``) is available.

**Once per sequence, host-side, engine-agnostic.** The gate is decided before any steering, from the
unsteered prompt activations (``prompt_activations`` of an engine, :func:`~steerlab.activations.capture.capture`
for a loaded model), once per distinct prompt; :func:`resolve_conditions` then turns each conditional
spec into an ordinary spec restricted to the rows whose prompt passes (its ``rows``). So a row that
passes is steered exactly as without a condition, a row that does not is exactly unsteered, tokens
generated later can never change the decision, and a condition composes with every operator, position,
scale, per-row coefficient and ``rows`` mask. Generation, teacher-forced scoring and both engines call
:func:`resolve_conditions`; the prompt of a teacher-forced sample is its prompt without the response.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from ..activations.capture import ChatSample, Reduction, capture
from ..errors import SteerlabError
from ..model.chat import Prompt
from ..model.layers import check_layer_index
from ..vectors.vector import SteeringVector
from .operators import row_mask

if TYPE_CHECKING:
    from .steerer import SteeringSpec

COMPARATORS = (">", "<")
CONDITION_REDUCTIONS = ("prompt_avg", "prompt_last")
_COMPARATOR_NAMES = {">": ">", "<": "<", "gt": ">", "lt": "<"}
FORMULA = "sim = <h, tanh(P h)> / (|h| |tanh(P h)|), P = c c^T / (c^T c); pass when sim > threshold (>) or < (<)"


def parse_comparator(value: str, flag: str = "--condition-comparator") -> str:
    """``>`` / ``gt`` → ``">"``, ``<`` / ``lt`` → ``"<"``; raises SteerlabError naming ``flag`` otherwise."""
    out = _COMPARATOR_NAMES.get(str(value).strip().lower())
    if out is None:
        raise SteerlabError(
            f"{flag} {value!r}: expected > (or gt: steer when the similarity is above the threshold) or < (lt)"
        )
    return out


@dataclass(frozen=True, eq=False)
class Condition:
    """A CAST condition on the prompt (module docstring): steer a row only when its prompt passes.

    - ``vector``: the condition direction c — a :class:`SteeringVector` ``[n_layers, d_model]`` (its row
      ``layer`` is used) or a 1-D tensor ``[d_model]``.
    - ``layer``: the condition layer L (output of decoder block L; negative counts from the end).
    - ``threshold``: θ, a cosine in [-1, 1].
    - ``comparator``: ``">"`` (pass when sim > θ) or ``"<"`` (pass when sim < θ).
    - ``reduction``: ``prompt_avg`` (mean over the prompt's tokens, default) or ``prompt_last``.
    - ``observed``: ``(min, max)`` of the similarities seen on the calibration examples, when known
      (:func:`steerlab.steering.condition_threshold.calibrate_condition`); θ must lie within it.

    Raises SteerlabError at construction for an unknown comparator or reduction, a non-finite θ or one
    outside [-1, 1] or outside ``observed``; model-dependent checks (layer range, width, zero direction)
    happen in :meth:`direction`.
    """

    vector: SteeringVector | torch.Tensor
    layer: int
    threshold: float
    comparator: str = ">"
    reduction: str = "prompt_avg"
    observed: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "comparator", parse_comparator(self.comparator, "condition comparator"))
        if self.reduction not in CONDITION_REDUCTIONS:
            raise SteerlabError(
                f"condition reduction {self.reduction!r}: expected one of {', '.join(CONDITION_REDUCTIONS)}"
            )
        if isinstance(self.layer, bool) or not isinstance(self.layer, int):
            raise SteerlabError(f"--condition-layer {self.layer!r}: expected one layer index (an integer)")
        object.__setattr__(self, "threshold", check_threshold(self.threshold, self.observed))
        if self.observed is not None:
            object.__setattr__(self, "observed", (float(self.observed[0]), float(self.observed[1])))

    def with_threshold(self, threshold: float) -> Condition:
        """A copy with another θ, checked against ``observed`` (raises SteerlabError outside it)."""
        return replace(self, threshold=threshold)

    def direction(self, model: Any) -> torch.Tensor:
        """The condition direction c at :attr:`layer` on ``model`` (a LoadedModel or an engine: anything
        with ``n_layers``, ``d_model`` and ``name``): ``[d_model]`` float32.

        Raises SteerlabError for a layer out of range, a vector whose width (or layer count) does not
        fit the model, a partial vector without that layer, or a zero or non-finite direction.
        """
        layer = check_layer_index(self.layer, model.n_layers, "--condition-layer", model.name)
        vec = self.vector
        if not isinstance(vec, SteeringVector):
            vec = torch.as_tensor(vec).detach().float()
            if vec.ndim == 2:
                vec = SteeringVector(vec)
            elif vec.ndim != 1:
                raise SteerlabError(
                    f"condition vector: expected [d_model] or [n_layers, d_model], got {tuple(vec.shape)}"
                )
        try:
            if isinstance(vec, SteeringVector):
                vec.check_compatible(model.n_layers, model.d_model, model.name, [layer])
                row = vec[layer].float()
            else:
                if vec.shape[0] != model.d_model:
                    raise SteerlabError(
                        f"vector d_model {vec.shape[0]} does not match {model.name}'s d_model {model.d_model}"
                    )
                row = vec
        except SteerlabError as exc:
            raise SteerlabError(f"condition vector: {exc}") from None
        if not bool(torch.isfinite(row).all()) or float(row.norm()) == 0.0:
            raise SteerlabError(f"condition vector: the direction at layer {layer} is zero or not finite")
        return row

    def passes(self, similarity: torch.Tensor) -> torch.Tensor:
        """Bool ``[n]``: whether each similarity passes the gate (strict comparison with θ)."""
        return passes(similarity, self.threshold, self.comparator)

    def describe(self) -> dict[str, Any]:
        """The condition as recorded in files and config hashes: the SHA-256 of the condition vector's
        values (float32), layer, θ, comparator, reduction, observed range and the formula."""
        data = self.vector.data if isinstance(self.vector, SteeringVector) else torch.as_tensor(self.vector)
        return {
            "vector_sha256": hashlib.sha256(data.detach().float().contiguous().numpy().tobytes()).hexdigest(),
            "layer": self.layer,
            "threshold": self.threshold,
            "comparator": self.comparator,
            "reduction": self.reduction,
            "observed": list(self.observed) if self.observed is not None else None,
            "formula": FORMULA,
        }


def passes(similarity: torch.Tensor, threshold: float, comparator: str) -> torch.Tensor:
    """Bool ``[n]``: ``similarity > threshold`` (comparator ``">"``) or ``< threshold`` (``"<"``)."""
    return similarity > threshold if parse_comparator(comparator, "comparator") == ">" else similarity < threshold


def check_threshold(
    threshold: Any, observed: tuple[float, float] | None = None, flag: str = "--condition-threshold"
) -> float:
    """θ as a float: finite, in [-1, 1] (a cosine) and, when ``observed`` = (min, max) of the
    calibration similarities is known, within it. Raises SteerlabError naming ``flag`` otherwise."""
    if isinstance(threshold, str) and threshold.strip().lower() == "auto":
        raise SteerlabError(
            f"{flag} auto is fitted on example prompts: steerlab.calibrate_condition (CLI: steerlab condition, or "
            "--condition-positive/--condition-negative)"
        )
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise SteerlabError(f"{flag} {threshold!r}: expected a number in [-1, 1] (or auto)") from None
    if not math.isfinite(value) or not -1.0 <= value <= 1.0:
        raise SteerlabError(f"{flag} {threshold!r}: the condition similarity is a cosine, so θ must be in [-1, 1]")
    if observed is not None:
        lo, hi = float(observed[0]), float(observed[1])
        if not lo <= value <= hi:
            raise SteerlabError(
                f"{flag} {value:g} is outside the similarities observed on the condition examples "
                f"({lo:.4g} to {hi:.4g}): every example would fall on one side; use a value in that range or auto"
            )
    return value


def condition_similarity(hidden: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """CAST's condition similarity (module docstring) of each row of ``hidden`` ``[n, d_model]`` with
    the direction ``[d_model]``: ``[n]`` float64 in [-1, 1]; 0 for a zero state or one orthogonal to c.
    Computed in float64 on the CPU, so every engine decides alike from the same activations."""
    h = hidden.detach().double().cpu()
    c = direction.detach().double().cpu()
    projected = torch.tanh((h @ c / (c @ c))[:, None] * c[None, :])  # tanh(P h), P = c cᵀ / cᵀc
    denom = h.norm(dim=-1) * projected.norm(dim=-1)
    sims = (h * projected).sum(-1) / denom.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(denom > 0, sims, torch.zeros_like(sims)).clamp(-1.0, 1.0)


def gate_samples(
    prompts: Sequence[Prompt | ChatSample], system: str | None = None, chat: bool = True
) -> list[ChatSample]:
    """The prompt of each row as the gate reads it: a :class:`ChatSample` without a response, rendered
    as generation renders it (chat template with ``system``; ``chat=False`` string prompts as raw text).
    A teacher-forced sample keeps its prompt, system prompt and mode and drops its response."""
    out = []
    for p in prompts:
        if isinstance(p, ChatSample):
            out.append(ChatSample(p.prompt, "", p.system, p.chat))
        elif chat or not isinstance(p, str):
            out.append(ChatSample(p, "", system))
        else:
            out.append(ChatSample(p, chat=False))
    return out


def _key(sample: ChatSample) -> str:
    return json.dumps([sample.prompt, sample.system, sample.chat], sort_keys=True, ensure_ascii=False)


def prompt_activations(
    model: Any, samples: list[ChatSample], layers: list[int], reduction: str, batch_size: int
) -> torch.Tensor:
    """Unsteered prompt activations ``[n, len(layers), d_model]`` float32 of ``samples`` on ``model``: an
    engine's own :meth:`~steerlab.engines.base.Engine.prompt_activations`, else
    :func:`~steerlab.activations.capture.capture` on a LoadedModel."""
    measure = getattr(model, "prompt_activations", None)
    if measure is not None:
        return measure(samples, layers, reduction, batch_size)
    return capture(model, samples, [Reduction.parse(reduction)], layers, batch_size)[reduction]


def condition_similarities(
    model: Any,
    conditions: Sequence[Condition],
    samples: Sequence[ChatSample],
    batch_size: int = 16,
) -> list[torch.Tensor]:
    """Each condition's similarity for each sample's prompt (:func:`gate_samples` gives the samples):
    one ``[len(samples)]`` float64 tensor per condition, from one capture of the distinct prompts per
    reduction (``model``: an engine or a LoadedModel).

    Raises SteerlabError (before any forward pass) as :meth:`Condition.direction` does, and for no samples.
    """
    if not samples:
        raise SteerlabError("no prompts given")
    directions = [c.direction(model) for c in conditions]
    layers_of = [check_layer_index(c.layer, model.n_layers, "--condition-layer", model.name) for c in conditions]
    keys = [_key(s) for s in samples]
    distinct = list(dict.fromkeys(keys))
    where = {k: i for i, k in enumerate(distinct)}
    first = {k: s for k, s in zip(keys, samples, strict=True)}
    index = torch.tensor([where[k] for k in keys])
    out: list[torch.Tensor | None] = [None] * len(conditions)
    for reduction in dict.fromkeys(c.reduction for c in conditions):
        members = [i for i, c in enumerate(conditions) if c.reduction == reduction]
        layers = sorted({layers_of[i] for i in members})
        acts = prompt_activations(model, [first[k] for k in distinct], layers, reduction, batch_size)
        for i in members:
            sims = condition_similarity(acts[:, layers.index(layers_of[i])], directions[i])
            out[i] = sims[index]
    return [s for s in out if s is not None]


def resolve_conditions(
    model: Any, specs: Sequence[SteeringSpec], samples: Sequence[ChatSample], batch_size: int = 16
) -> list[SteeringSpec]:
    """``specs`` with every conditional spec made an ordinary one restricted to the rows whose prompt
    passes its condition: ``rows`` = (its own ``rows``, or every row) ∧ (the gate), ``condition`` None.
    Specs without a condition are returned as they are. ``samples`` are the rows' prompts
    (:func:`gate_samples`); ``model`` is an engine or a LoadedModel (module docstring).

    Raises SteerlabError (before any forward pass) as :func:`condition_similarities` does, and for a
    spec's ``rows`` that do not fit ``len(samples)``.
    """
    specs = list(specs)
    conditional = [i for i, s in enumerate(specs) if s.condition is not None]
    if not conditional:
        return specs
    n = len(samples)
    # Only the rows some conditional spec acts on are read (e.g. one request's rows in a served batch).
    everyone = torch.ones(n, dtype=torch.bool)
    own = {i: everyone if specs[i].rows is None else row_mask(specs[i].rows, n) for i in conditional}
    read = torch.stack(list(own.values())).any(0)
    where = torch.nonzero(read).flatten()
    unique: list[Condition] = list({id(specs[i].condition): specs[i].condition for i in conditional}.values())
    gate = {id(c): torch.zeros(n, dtype=torch.bool) for c in unique}
    if where.numel():
        sims = condition_similarities(model, unique, [samples[int(i)] for i in where], batch_size)
        for c, s in zip(unique, sims, strict=True):
            gate[id(c)][where] = c.passes(s)
    else:  # no row to read: the checks still run before any work
        for c in unique:
            c.direction(model)
    for i in conditional:
        specs[i] = replace(specs[i], rows=gate[id(specs[i].condition)] & own[i], condition=None)
    return specs


__all__ = [
    "COMPARATORS",
    "CONDITION_REDUCTIONS",
    "Condition",
    "check_threshold",
    "condition_similarities",
    "condition_similarity",
    "gate_samples",
    "parse_comparator",
    "passes",
    "prompt_activations",
    "resolve_conditions",
]
