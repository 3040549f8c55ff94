"""The persona-vector pipeline (Chen et al. 2025), as resumable stages in a run directory.

1. ``responses.jsonl``  for each question x instruction pair x sample, one answer under the positive
   system prompt and one under the negative, generated in batches;
2. ``judged.jsonl``     trait and coherence scores (0-100, None where the judge gave no number);
   Each row also keeps the judge's probability mass on number answers (``trait_mass``,
   ``coherence_mass``; None where unknown);
3. ``pairs.json``       effective pairs: positive trait >= threshold, negative trait < 100 - threshold,
   both coherence >= min_coherence (paired by instruction, question and sample, as persona-vectors);
   with ``filter=False`` (``--no-filter``) every pair instead, and ``"filter": "none"``;
4. ``vectors/{trait}_{reduction}.safetensors`` for response_avg, prompt_avg and prompt_last: mean over
   the pairs of (positive - negative) activations, every layer (layer L = output of block L), all
   three reductions from one batched forward pass per batch. The metadata records the filter
   (``"effective"`` or ``"none"``) and how many answers the judge could not score.

Rerunning skips finished stages; a run killed mid-stage resumes without redoing finished items; a
judge failure on one item gives None for it and keeps the rest. When no pair survives the filter,
:class:`NoEffectivePairsError` says whether the judge could not score the answers (too little
probability on numbers, docs/design.md §6) or the model did not express the trait, with the counts of both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engines.base import Engine
from ..engines.hf import HfEngine
from ..errors import SteerlabError
from ..extract.persona import PERSONA_REDUCTIONS, all_pairs, effective_pairs, persona_vectors
from ..formats.traits import Trait
from ..io.runs import ROWS
from ..judge import MIN_NUMBER_MASS, Judge, evaluate_coherence, evaluate_trait
from ..model.loading import LoadedModel
from .runs import RunDir, Stage


@dataclass
class PersonaConfig:
    """Settings of :func:`run_persona` (the CLI's defaults are read from here).

    ``threshold`` (0-100 judge score): a pair is effective when its positive answer scores >=
    threshold and its negative < 100 - threshold; ``min_coherence`` (0-100): both answers at least
    this coherent; ``filter``: False keeps every pair (persona-vectors' no-filter ablation; the
    vectors' metadata says so); ``batch_size``: generation batch (None: automatic) and, for the
    vectors, sequences per forward pass (None: 16); ``judge_chunk``: answers judged between
    checkpoints.
    """

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
    filter: bool = True


@dataclass
class PersonaResult:
    """What :func:`run_persona` made: the vector files by reduction and the counts behind them.

    ``n_effective``: pairs that pass the filter; ``n_pairs``: pairs the vectors average over (all
    pairs when ``filter`` is ``"none"``); ``counts``: pair counts by outcome (see
    :func:`~steerlab.extract.persona.effective_pairs`); ``answer_counts``: see
    :func:`judge_answer_counts`; ``timings``: seconds per stage run.
    """

    run_dir: Path
    vectors: dict[str, Path]
    n_responses: int
    n_effective: int
    counts: dict[str, Any]
    timings: dict[str, float]
    n_pairs: int
    filter: str
    answer_counts: dict[str, Any]


class NoEffectivePairsError(SteerlabError):
    """No pair to average: the judge could not score the answers, or none showed the trait.

    ``counts``: pair counts by outcome (``candidates``, ``unscored``, ``pos_below_threshold``,
    ``neg_above_threshold``, ``incoherent``, ``effective``); ``answer_counts``: per-answer judge
    counts (:func:`judge_answer_counts`); ``run_dir``: where responses and scores are kept.
    """

    def __init__(
        self, message: str, trait: str, counts: dict[str, Any], answer_counts: dict[str, Any], run_dir: Path
    ) -> None:
        super().__init__(message)
        self.trait, self.counts, self.answer_counts, self.run_dir = trait, counts, answer_counts, run_dir

    @property
    def n_answers(self) -> int:
        """Answers judged."""
        return self.answer_counts["answers"]

    @property
    def n_unscored(self) -> int:
        """Answers the judge gave no trait or no coherence score."""
        return self.answer_counts["unscored"]


def response_items(trait: Trait, config: PersonaConfig) -> list[dict[str, Any]]:
    """The answers to generate for ``trait``: one item per (instruction, question, sample, pos/neg),
    keyed ``"{kind}/{instruction}/{question}/{sample}"``, each with its system prompt."""
    questions = trait.questions[: config.max_questions]
    n_instr = len(trait.instruction) if config.max_instructions is None else config.max_instructions
    pos, neg = trait.system_prompts("pos")[:n_instr], trait.system_prompts("neg")[:n_instr]
    items = []
    for i in range(len(pos)):
        for q, question in enumerate(questions):
            for s in range(config.samples_per_question):
                for kind, system in (("pos", pos[i]), ("neg", neg[i])):
                    items.append(
                        {
                            "key": f"{kind}/{i}/{q}/{s}",
                            "kind": kind,
                            "instruction": i,
                            "question_index": q,
                            "sample": s,
                            "question": question,
                            "system": system,
                        }
                    )
    return items


def run_persona(
    lm: LoadedModel,
    trait: Trait,
    judge: Judge,
    out_dir: str | Path,
    config: PersonaConfig | None = None,
    judge_name: str | None = None,
    engine: Engine | None = None,
    fallback_unfiltered: bool = False,
) -> PersonaResult:
    """Run (or resume) the persona pipeline for ``trait`` into ``out_dir`` (stages in the module docstring).

    ``fallback_unfiltered`` (with ``config.filter``): when no pair is effective, average every pair
    instead (the result's ``filter`` is then ``"none"``), decided inside the pairs stage so that a rerun
    resumes it as it is.

    ``lm`` (transformers) captures the activations behind the vectors; ``engine`` (default: the ``hf``
    engine of ``lm``) generates the answers (:mod:`steerlab.engines`).

    ``judge_name`` identifies the judge in the judged stage's config (default: its class name), so a
    different judge re-judges. Raises :class:`NoEffectivePairsError` when no pair is left to average
    (responses and scores are kept for a rerun).
    """
    config = config or PersonaConfig()
    run = RunDir(out_dir)
    name = trait.name or "trait"
    base = {"model": lm.name, "trait": trait.to_json(), "trait_name": name}

    engine = engine or HfEngine(lm)

    def generate_chunk(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return response_rows(items, generate_with_systems(engine, items, config, f"{name}: generating"))

    responses = responses_stage(run, engine, trait, config).cached(
        lambda stage: stage.run_items(response_items(trait, config), generate_chunk, chunk=generation_chunk(config)),
        ROWS,
    )
    rows = responses.value

    def judge_chunk(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        qs, answers = [it["question"] for it in items], [it["response"] for it in items]
        trait_results = evaluate_trait(judge, trait.eval_prompt, qs, answers)
        coherence = evaluate_coherence(judge, qs, answers)
        return [
            {**it, "trait_score": t.score, "coherence": c.score, "trait_mass": t.mass, "coherence_mass": c.mass}
            for it, t, c in zip(items, trait_results, coherence, strict=True)
        ]

    judged_stage = run.cached(
        "judged",
        "judged.jsonl",
        {**base, "responses": responses.hash, "judge": judge_name or type(judge).__name__},
        lambda stage: stage.run_items(rows, judge_chunk, chunk=config.judge_chunk),
        codec=ROWS,
    )
    judged = judged_stage.value

    fallback = fallback_unfiltered and config.filter

    def choose_pairs(_: Stage) -> dict[str, Any]:
        doc = effective_pairs(judged, config.threshold, config.min_coherence)
        doc["filter"] = "effective"
        if not config.filter or (fallback and not doc["pairs"]):
            doc.update(pairs=all_pairs(judged), filter="none")
        return doc

    # The filtered stage's config is unchanged from before --no-filter existed: old runs resume as is.
    pairs_cfg = {
        "judged": judged_stage.hash,
        "threshold": config.threshold,
        "min_coherence": config.min_coherence,
        **({} if config.filter else {"filter": "none"}),
        **({"fallback": "unfiltered"} if fallback else {}),
    }
    pairs_stage = run.cached("pairs", "pairs.json", pairs_cfg, choose_pairs)
    pairs_doc = pairs_stage.value
    pairs = pairs_doc["pairs"]
    answers = judge_answer_counts(judged, getattr(judge, "min_mass", MIN_NUMBER_MASS))
    if not pairs:
        raise NoEffectivePairsError(
            _no_pairs_message(name, pairs_doc["counts"], answers, config, run.path),
            name,
            pairs_doc["counts"],
            answers,
            run.path,
        )

    filter_name = pairs_doc.get("filter", "effective")
    meta: dict[str, Any] = {"trait": name, "n_samples": len(pairs), "filter": filter_name}
    if filter_name == "effective":
        meta.update(threshold=config.threshold, min_coherence=config.min_coherence)
    else:
        meta.update(
            n_effective=pairs_doc["counts"]["effective"],
            n_unscored_pairs=pairs_doc["counts"]["unscored"],
            n_answers=answers["answers"],
            n_unscored_answers=answers["unscored"],
        )
    paths = {r: run.path / "vectors" / f"{name}_{r}.safetensors" for r in PERSONA_REDUCTIONS}

    def extract(_: Stage) -> dict[str, Any]:
        vectors = persona_vectors(lm, pairs, batch_size=config.batch_size or 16)
        for reduction, vec in vectors.items():
            vec.metadata.update(meta)
            vec.save(paths[reduction])
        return {"vectors": {r: str(p.name) for r, p in paths.items()}, "n_pairs": len(pairs), "metadata": meta}

    run.cached(
        "vectors",
        "vectors/manifest.json",
        {"pairs": pairs_stage.hash, "model": lm.name},
        extract,
        beside=paths.values(),
    )
    return PersonaResult(
        run.path,
        paths,
        len(rows),
        pairs_doc["counts"]["effective"],
        pairs_doc["counts"],
        run.timings,
        n_pairs=len(pairs),
        filter=filter_name,
        answer_counts=answers,
    )


def judge_answer_counts(judged: list[dict[str, Any]], min_mass: float = MIN_NUMBER_MASS) -> dict[str, Any]:
    """How many judged answers got no score, and why.

    An answer is ``unscored`` when its trait or coherence score is None. ``below_min_mass``: of
    those, the answers where the judge answered but put less than ``min_mass`` probability on the
    numbers 0-100 (docs/design.md §6); ``no_answer``: the rest (the judge could not be asked, its response was
    malformed, or it does not report the mass). ``mean_mass``: mean probability on numbers over
    every trait and coherence prompt whose mass is known (None if none is), in [0, 1].
    """
    unscored = low = 0
    masses: list[float] = []
    for row in judged:
        pairs = ((row.get("trait_score"), row.get("trait_mass")), (row.get("coherence"), row.get("coherence_mass")))
        masses += [m for _, m in pairs if m is not None]
        missing = [m for s, m in pairs if s is None]
        if missing:
            unscored += 1
            low += any(m is not None and m < min_mass for m in missing)
    return {
        "answers": len(judged),
        "unscored": unscored,
        "below_min_mass": low,
        "no_answer": unscored - low,
        "mean_mass": sum(masses) / len(masses) if masses else None,
        "min_mass": min_mass,
    }


def _no_pairs_message(
    name: str, counts: dict[str, Any], answers: dict[str, Any], config: PersonaConfig, run_dir: Path
) -> str:
    """Why no pair is left: the judge's unscored answers and the filter's rejections, both counted."""
    scored = counts["candidates"] - counts["unscored"]
    why = []
    if answers["below_min_mass"]:
        mean = answers["mean_mass"]
        why.append(
            f"for {answers['below_min_mass']} it put less than {answers['min_mass']:g} probability on the "
            f"number answers 0-100" + (f" (mean {mean:.3f} over all its answers)" if mean is not None else "")
        )
    if answers["no_answer"]:
        why.append(f"for {answers['no_answer']} it gave no answer (unreachable, malformed or no score; see the log)")
    text = (
        f"{name}: no effective pairs among {counts['candidates']} candidate pairs. The judge could not score "
        f"{answers['unscored']} of {answers['answers']} answers"
        + (f": {'; '.join(why)}" if why else "")
        + f", leaving {counts['unscored']} pairs unscored. Of the {scored} scored pairs, "
        f"{counts['pos_below_threshold']} had a positive answer below --threshold {config.threshold:g}, "
        f"{counts['neg_above_threshold']} a negative answer at or above {100 - config.threshold:g} and "
        f"{counts['incoherent']} an answer below --min-coherence {config.min_coherence:g}. "
    )
    stronger = "use a stronger judge (-j openai:MODEL, or -j local:MODEL with a larger model)"
    express = (
        f"the model may not express this trait when prompted: lower --threshold (now {config.threshold:g}) or "
        "--min-coherence, or use a larger model"
    )
    if scored == 0:
        text += f"The judge cannot score these answers: {stronger}"
    elif counts["unscored"] == 0:
        text += express[0].upper() + express[1:]
    else:
        text += f"For the unscored pairs {stronger}; for the scored ones {express}"
    return (
        text + ", or pass --no-filter (PersonaConfig.filter=False) to average every pair unfiltered. "
        f"Responses and scores are kept in {run_dir}"
    )


def responses_stage(run: RunDir, lm: Engine, trait: Trait, config: PersonaConfig) -> Stage:
    """The ``responses.jsonl`` stage of ``trait``'s run directory ``run``: its config is the model,
    the trait and the generation settings, so answers generated elsewhere (e.g. for several traits
    as rows of shared batches, :mod:`steerlab.pipelines.persona_traits`) and saved through it with
    :func:`response_rows` are the ones :func:`run_persona` reuses."""
    base = {"model": lm.name, "trait": trait.to_json(), "trait_name": trait.name or "trait", **lm.fingerprint()}
    # the filter's settings and the judge's checkpoint size do not change the answers
    return run.stage(
        "responses",
        "responses.jsonl",
        base,
        settings=config,
        ignore=("threshold", "min_coherence", "judge_chunk", "filter"),
    )


def response_rows(items: list[dict[str, Any]], gens: list[Any]) -> list[dict[str, Any]]:
    """The ``responses.jsonl`` rows of :func:`response_items` and their generations (same order)."""
    return [{**it, "response": g.text, "n_new_tokens": g.n_new_tokens} for it, g in zip(items, gens, strict=True)]


def generation_chunk(config: PersonaConfig) -> int:
    """Items generated between checkpoints (one batch)."""
    return config.batch_size or 32


def generate_with_systems(lm: Engine, items: list[dict[str, Any]], config: PersonaConfig, description: str):
    """Generate for items that each carry their own system prompt (``system``, ``question``) as one
    batch stream with ``config``'s generation settings; one :class:`~steerlab.steering.generation.Generation`
    per item, in item order."""
    prompts = [
        [{"role": "system", "content": it["system"]}, {"role": "user", "content": it["question"]}] for it in items
    ]
    return lm.generate(
        prompts,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        seed=config.seed,
        batch_size=config.batch_size,
        description=description,
    )
