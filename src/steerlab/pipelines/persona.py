"""The persona-vector pipeline (Chen et al. 2025), as resumable stages in a run directory.

1. ``responses.jsonl``  for each question x instruction pair x sample, one answer under the positive
   system prompt and one under the negative, generated in batches;
2. ``judged.jsonl``     trait and coherence scores (0-100, None where the judge gave no number);
3. ``pairs.json``       effective pairs: positive trait >= threshold, negative trait < 100 - threshold,
   both coherence >= min_coherence (paired by instruction, question and sample, as persona-vectors);
4. ``vectors/{trait}_{reduction}.safetensors`` for response_avg, prompt_avg and prompt_last: mean over
   effective pairs of (positive - negative) activations, every layer (layer L = output of block L),
   all three reductions from one batched forward pass per batch.

Rerunning skips finished stages; a run killed mid-stage resumes without redoing finished items; a
judge failure on one item gives None for it and keeps the rest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import SteerlabError
from ..extract.persona import PERSONA_REDUCTIONS, effective_pairs, persona_vectors
from ..formats.traits import Trait
from ..judge import Judge, judge_coherence, judge_trait
from ..model.loading import LoadedModel
from ..steering.generation import generate_batch
from .runs import RunDir


@dataclass
class PersonaConfig:
    samples_per_question: int = 1
    max_questions: int | None = None
    max_instructions: int | None = None
    threshold: float = 50.0
    min_coherence: float = 50.0
    max_new_tokens: int = 96
    temperature: float = 0.0
    seed: int = 0
    batch_size: int | None = None
    judge_chunk: int = 64


@dataclass
class PersonaResult:
    run_dir: Path
    vectors: dict[str, Path]
    n_responses: int
    n_effective: int
    counts: dict[str, Any]
    timings: dict[str, float]


def _response_items(trait: Trait, config: PersonaConfig) -> list[dict[str, Any]]:
    questions = trait.questions[: config.max_questions]
    n_instr = len(trait.instruction) if config.max_instructions is None else config.max_instructions
    pos, neg = trait.system_prompts("pos")[:n_instr], trait.system_prompts("neg")[:n_instr]
    items = []
    for i in range(len(pos)):
        for q, question in enumerate(questions):
            for s in range(config.samples_per_question):
                for kind, system in (("pos", pos[i]), ("neg", neg[i])):
                    items.append({"key": f"{kind}/{i}/{q}/{s}", "kind": kind, "instruction": i,
                                  "question_index": q, "sample": s, "question": question, "system": system})
    return items


def run_persona(
    lm: LoadedModel,
    trait: Trait,
    judge: Judge,
    out_dir: str | Path,
    config: PersonaConfig | None = None,
    judge_name: str | None = None,
) -> PersonaResult:
    """Run (or resume) the persona pipeline for ``trait`` into ``out_dir``."""
    config = config or PersonaConfig()
    run = RunDir(out_dir)
    name = trait.name or "trait"
    base = {"model": lm.name, "trait": trait.to_json(), "trait_name": name}

    gen_cfg = {k: v for k, v in asdict(config).items() if k not in ("threshold", "min_coherence", "judge_chunk")}
    responses = run.stage("responses", "responses.jsonl", {**base, **gen_cfg})
    if responses.done():
        rows = responses.load_rows()
    else:
        def generate_chunk(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            gens = _generate_with_systems(lm, items, config, name)
            return [{**it, "response": g.text, "n_new_tokens": g.n_new_tokens}
                    for it, g in zip(items, gens, strict=True)]

        rows = responses.run_items(_response_items(trait, config), generate_chunk, chunk=_gen_chunk(config))
        responses.save_rows(rows, reused_items=responses.reused)

    judged_stage = run.stage("judged", "judged.jsonl", {**base, "responses": responses.hash,
                                                        "judge": judge_name or type(judge).__name__})
    if judged_stage.done():
        judged = judged_stage.load_rows()
    else:
        def judge_chunk(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            qs, answers = [it["question"] for it in items], [it["response"] for it in items]
            trait_scores = judge_trait(judge, trait.eval_prompt, qs, answers)
            coherence = judge_coherence(judge, qs, answers)
            return [{**it, "trait_score": t, "coherence": c}
                    for it, t, c in zip(items, trait_scores, coherence, strict=True)]

        judged = judged_stage.run_items(rows, judge_chunk, chunk=config.judge_chunk)
        judged_stage.save_rows(judged, reused_items=judged_stage.reused)

    pairs_stage = run.stage("pairs", "pairs.json", {"judged": judged_stage.hash, "threshold": config.threshold,
                                                    "min_coherence": config.min_coherence})
    if pairs_stage.done():
        pairs_doc = pairs_stage.load_json()
    else:
        pairs_doc = effective_pairs(judged, config.threshold, config.min_coherence)
        pairs_stage.save_json(pairs_doc)
    effective = pairs_doc["pairs"]
    if not effective:
        raise SteerlabError(
            f"{name}: no effective pairs survived ({pairs_doc['counts']}); the model may not express "
            f"this trait when prompted — lower --threshold (now {config.threshold}) or use a larger model. "
            f"Responses and scores are kept in {run.path}"
        )

    vec_stage = run.stage("vectors", "vectors/manifest.json", {"pairs": pairs_stage.hash, "model": lm.name})
    paths = {r: run.path / "vectors" / f"{name}_{r}.safetensors" for r in PERSONA_REDUCTIONS}
    if not vec_stage.done():
        vectors = persona_vectors(lm, effective, batch_size=config.batch_size or 16)
        for reduction, vec in vectors.items():
            vec.metadata.update({"trait": name, "n_samples": len(effective), "threshold": config.threshold})
            vec.save(paths[reduction])
        vec_stage.save_json({"vectors": {r: str(p.name) for r, p in paths.items()}, "n_pairs": len(effective)})
    return PersonaResult(run.path, paths, len(rows), len(effective), pairs_doc["counts"], run.timings)


def _gen_chunk(config: PersonaConfig) -> int:
    """Items generated between checkpoints (one batch)."""
    return config.batch_size or 32


def _generate_with_systems(lm: LoadedModel, items: list[dict[str, Any]], config: PersonaConfig, name: str):
    """Generate for items that each carry their own system prompt (one batch stream)."""
    prompts = [[{"role": "system", "content": it["system"]}, {"role": "user", "content": it["question"]}]
               for it in items]
    return generate_batch(lm, prompts, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                          seed=config.seed, batch_size=config.batch_size, description=f"{name}: generating")
