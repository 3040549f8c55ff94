"""Evaluating a persona vector on a trait's eval questions.

- :func:`persona_monitor` — responses under three conditions (baseline: no persona; prompted: a
  positive persona system prompt; steered: the persona vector added at a layer) projected on the
  vector, read by the plain model on the bare question (docs/design.md §5, monitoring: ``(a·v)/‖v‖``).
- :func:`persona_margin_pairs` — judge-free check: the model's own answers under the positive and
  negative persona prompts become pairs (positive = persona answer), and the behaviour margin of the
  unprompted model under steering measures whether the vector moves it towards the persona.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..activations.capture import ChatSample
from ..engines.base import Engine
from ..engines.hf import as_engine
from ..formats.pairs import Pair
from ..formats.traits import Trait
from ..model.loading import LoadedModel
from ..steering.steerer import SteeringSpec
from ..vectors.vector import SteeringVector
from .monitor import project


def persona_monitor(
    lm: LoadedModel,
    trait: Trait,
    vector: SteeringVector,
    layer: int,
    coeff: float,
    max_questions: int = 8,
    max_new_tokens: int = 48,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Projections of baseline / prompted / steered responses on ``vector`` at ``layer``."""
    questions = trait.questions[:max_questions]
    system = trait.system_prompts("pos")[0]
    conditions = {
        "baseline": dict(prompts=questions),
        "prompted": dict(prompts=questions, system=system),
        f"steered (coeff {coeff:g})": dict(prompts=questions, steering=SteeringSpec(vector, layer, coeff)),
    }
    groups, texts = {}, {}
    for name, kwargs in conditions.items():
        gens = as_engine(lm).generate(
            kwargs.pop("prompts"),
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            description=f"persona monitor: {name}",
            **kwargs,
        )
        samples = [ChatSample(q, g.text or " ") for q, g in zip(questions, gens, strict=True)]
        values = project(lm, samples, vector, [layer], ["response_avg"])["response_avg"][:, 0]
        groups[name] = [float(v) for v in values]
        texts[name] = [g.text for g in gens]
    summary = [{"condition": k, "mean": sum(v) / len(v), "n": len(v)} for k, v in groups.items()]
    return {
        "title": f"{trait.name}: response projections on the persona vector at layer {layer}",
        "layer": layer,
        "groups": groups,
        "summary": summary,
        "questions": questions,
        "texts": texts,
    }


def persona_margin_pairs(
    lm: Engine | LoadedModel,
    trait: Trait,
    max_questions: int = 16,
    max_new_tokens: int = 48,
    batch_size: int | None = None,
) -> list[Pair]:
    """Pairs from the model's own prompted answers: positive = under the first positive persona
    prompt, negative = under the first negative one (same question)."""
    questions = trait.questions[:max_questions]
    prompts = [
        [{"role": "system", "content": s}, {"role": "user", "content": q}]
        for s in (trait.system_prompts("pos")[0], trait.system_prompts("neg")[0])
        for q in questions
    ]
    gens = as_engine(lm).generate(
        prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, description="persona answers"
    )
    n = len(questions)
    return [
        Pair(question=q, positive=gens[i].text, negative=gens[n + i].text)
        for i, q in enumerate(questions)
        if gens[i].text.strip() and gens[n + i].text.strip()
    ]


__all__: Sequence[str] = ("persona_margin_pairs", "persona_monitor")
