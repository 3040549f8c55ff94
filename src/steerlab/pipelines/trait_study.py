"""The diff study for any trait (``steerlab diff study -t TRAIT``): a behaviour that, like deception, has a
dual nature — present in the input (prompted answers with and without it) and a tendency of the model
(a fine-tune on its answers) — studied end to end from a persona-vectors trait, as resumable stages:

``persona/``            the persona pipeline (:func:`~steerlab.pipelines.persona.run_persona`): answers
                        under the trait's positive and negative instructions, judged, effective pairs
                        (``--no-filter``: every pair, recorded), persona vectors of all pairs;
``trait_pairs.json``    the effective pairs split by question (no held-out question is trained on) into
                        train and held-out, with a seeded shuffle (``heldout_fraction``, the diff
                        study's ``seed``; both recorded);
``vectors/persona*``    the trait's persona vector from the train pairs alone (each answer under its own
                        system prompt, ``response_avg``; the formula of
                        :func:`~steerlab.extract.persona.persona_vectors`) and its per-pair differences;
then the whole diff study (:func:`~steerlab.pipelines.diff_study.run_diff_study`) in the same directory
on the pairs without their system prompts: SFT on the trait's answers, model-diff vs contrastive vs
persona vector (``directions.json``), steering with all three (with the evidence of every row) and the
prompting baseline from the trait's own instructions; ``summary.json`` gains ``trait``
(:class:`~steerlab.pipelines.study_records.TraitStudyDoc`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from ..engines.base import Engine
from ..errors import SteerlabError
from ..extract.mean_difference import MeanDifference, vector_metadata
from ..formats.pairs import Pair
from ..formats.traits import Trait, list_traits, load_trait
from ..io.atomic import write_json
from ..io.files import read_json
from ..io.runs import json_sha256
from ..judge import Judge
from ..model.loading import LoadedModel
from ..vectors.vector import SteeringVector
from .artifacts import SUMMARY
from .diff_study import DiffStudyConfig, DiffStudyResult, run_diff_study
from .diff_summary import reading
from .diff_vectors import REDUCTION, Direction
from .persona import PersonaConfig, PersonaResult, run_persona
from .runs import RunDir, Stage
from .study_records import TraitStudyDoc
from .trait_cosine import pair_differences

TRAIT_PAIRS = "trait_pairs.json"


@dataclass
class TraitStudyConfig:
    """Settings of :func:`run_trait_study`: the persona pipeline's (``persona``: questions,
    instructions, judge threshold, ``filter``), the diff study's (``diff``: fine-tune, steering; its
    ``study.prompts`` are replaced by the trait's instructions), the share of questions held out
    (``heldout_fraction``) and which instruction pair asks for the trait and its opposite in the
    prompting baseline (``prompt_instruction``; None: the first one the persona answers did not use,
    else the first)."""

    persona: PersonaConfig = field(default_factory=PersonaConfig)
    diff: DiffStudyConfig = field(default_factory=DiffStudyConfig)
    heldout_fraction: float = 0.25
    prompt_instruction: int | None = None


@dataclass
class TraitStudyResult:
    """What :func:`run_trait_study` made: the diff study (``summary`` holds ``trait``), the persona run
    and the recorded split (``trait_pairs.json``)."""

    diff: DiffStudyResult
    persona: PersonaResult
    split: dict[str, Any]

    @property
    def trait(self) -> TraitStudyDoc:
        """The ``trait`` part of the summary."""
        return self.diff.summary["trait"]  # type: ignore[index,return-value]


def resolve_trait(trait: str | Path | Trait) -> tuple[Trait, str]:
    """The trait's extraction set and where it came from (``built-in`` or the file). Raises
    SteerlabError for an unknown name or a bad file (:func:`~steerlab.formats.traits.load_trait`)."""
    if isinstance(trait, Trait):
        return trait, "given"
    if str(trait) in list_traits():
        return load_trait(str(trait), "extract"), "built-in"
    return load_trait(trait, "extract"), str(trait)


def split_by_question(pairs: list[dict[str, Any]], heldout_fraction: float, seed: int) -> dict[str, Any]:
    """Split persona pairs (``pairs.json`` rows) by question: the distinct questions shuffled with
    ``random.Random(seed)``, ``max(1, round(n_questions × heldout_fraction))`` of them held out, every pair
    of a question on its side. Returns ``{"seed", "heldout_fraction", "questions": {"train", "heldout"},
    "train", "heldout"}`` (pairs in their original order).

    Raises:
        SteerlabError: a fraction outside (0, 1), or fewer than 2 distinct questions.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise SteerlabError(f"--heldout-fraction {heldout_fraction:g}: expected a share between 0 and 1")
    questions = list(dict.fromkeys(p["question"] for p in pairs))
    if len(questions) < 2:
        raise SteerlabError(
            f"the persona pipeline left {len(pairs)} pairs over {len(questions)} question(s); a train / held-out "
            "split needs at least 2 questions: raise --max-questions or --max-instructions, or pass --no-filter"
        )
    shuffled = list(questions)
    random.Random(seed).shuffle(shuffled)
    n_held = min(len(questions) - 1, max(1, round(len(questions) * heldout_fraction)))
    held = set(shuffled[:n_held])
    return {
        "seed": seed,
        "heldout_fraction": heldout_fraction,
        "questions": {"train": [q for q in questions if q not in held], "heldout": [q for q in questions if q in held]},
        "train": [p for p in pairs if p["question"] not in held],
        "heldout": [p for p in pairs if p["question"] in held],
    }


def _pairs(rows: list[dict[str, Any]]) -> list[Pair]:
    """Persona pairs as study pairs: the question and both answers, without their system prompts (the
    fine-tune learns the answers as a tendency; the prompting baseline asks for them)."""
    return [Pair(question=p["question"], positive=p["positive"], negative=p["negative"]) for p in rows]


def run_trait_study(
    lm: LoadedModel,
    trait: str | Path | Trait,
    judge: Judge,
    out_dir: str | Path,
    config: TraitStudyConfig | None = None,
    judge_name: str | None = None,
    engine: Engine | None = None,
) -> TraitStudyResult:
    """Run (or resume) the trait's diff study into ``out_dir`` (stages in the module docstring).

    ``trait``: a built-in name, a persona-vectors trait file or a :class:`Trait`; ``judge`` scores the
    persona answers (``judge_name`` identifies it in the stage configs). Raises
    :class:`~steerlab.pipelines.persona.NoEffectivePairsError` when the judge could not score or no pair
    shows the trait (pass ``persona.filter=False``, ``--no-filter``), SteerlabError for too few questions
    to split, and what the diff study raises.
    """
    config = config or TraitStudyConfig()
    spec, source = resolve_trait(trait)
    name = spec.name or "trait"
    run = RunDir(out_dir)
    persona = run_persona(lm, spec, judge, run.path / "persona", config.persona, judge_name, engine)
    pairs_doc = (run.path / "persona" / "pairs.json").read_text(encoding="utf-8")
    seed = config.diff.seed
    split = run.cached(
        "trait_pairs",
        TRAIT_PAIRS,
        {"pairs": json_sha256(pairs_doc), "heldout_fraction": config.heldout_fraction, "seed": seed},
        lambda _: split_by_question(_load_pairs(run), config.heldout_fraction, seed),
    )
    train_rows, held_rows = split.value["train"], split.value["heldout"]
    persona_path = run.path / "vectors" / "persona.safetensors"
    diffs_path = run.path / "vectors" / "per_sample_persona.safetensors"

    def extract(_: Stage) -> dict[str, Any]:
        diffs = pair_differences(lm, train_rows, REDUCTION, config.diff.batch_size)
        aggregate = MeanDifference()
        aggregate.add({REDUCTION: diffs}, 1.0)
        meta = vector_metadata(lm, "persona", len(train_rows), trait=name, pairs="train split", filter=persona.filter)
        aggregate.vectors(len(train_rows), meta)[REDUCTION].save(persona_path)
        save_file({"persona": diffs.contiguous()}, str(diffs_path))
        return {"vectors": {"persona": persona_path.name}, "n_pairs": len(train_rows)}

    vec_stage = run.cached(
        "persona_vector",
        "vectors/manifest_persona.json",
        {"model": lm.name, "split": split.hash},
        extract,
        beside=[persona_path, diffs_path],
    )
    direction = Direction(
        "persona", SteeringVector.load(persona_path), load_file(str(diffs_path))["persona"], vec_stage.hash
    )
    instruction, wrote_pairs, prompts = _prompting(spec, config)
    diff_config = replace(config.diff, study=replace(config.diff.study, prompts=prompts))
    diff = run_diff_study(
        lm, _pairs(train_rows), _pairs(held_rows), run.path, diff_config, engine=engine, extra=[direction]
    )
    doc: TraitStudyDoc = {
        "name": name,
        "source": source,
        "judge": judge_name or type(judge).__name__,
        "filter": persona.filter,
        "counts": persona.counts,
        "answer_counts": persona.answer_counts,
        "split": {
            "seed": seed,
            "heldout_fraction": config.heldout_fraction,
            "n_questions": {k: len(v) for k, v in split.value["questions"].items()},
            "n_pairs": {"train": len(train_rows), "heldout": len(held_rows)},
            "file": TRAIT_PAIRS,
        },
        "prompting": {"instruction": instruction, "wrote_pairs": wrote_pairs, **prompts},
        "persona": {
            "vector": "vectors/persona.safetensors",
            "n_pairs": len(train_rows),
            "stage_hash": vec_stage.hash,
        },
        "reading": [],
    }
    doc["reading"] = _reading(doc)
    summary = dict(diff.summary or {})
    summary["trait"] = doc
    summary["reading"] = reading(summary)  # type: ignore[arg-type]
    write_json(run.path / SUMMARY, summary)
    diff.summary = summary  # type: ignore[assignment]
    return TraitStudyResult(diff, persona, split.value)


def _load_pairs(run: RunDir) -> list[dict[str, Any]]:
    return read_json(run.path / "persona" / "pairs.json", "persona pairs")["pairs"]


def _prompting(trait: Trait, config: TraitStudyConfig) -> tuple[int, bool, dict[str, str]]:
    """(the instruction index, whether it also wrote persona answers, ``{"behaviour", "opposite"}``
    system prompts) of the prompting baseline."""
    n = len(trait.instruction)
    used = n if config.persona.max_instructions is None else min(n, config.persona.max_instructions)
    chosen = config.prompt_instruction if config.prompt_instruction is not None else (used if used < n else 0)
    if not 0 <= chosen < n:
        raise SteerlabError(f"--prompt-instruction {chosen}: the trait has instructions 0..{n - 1}")
    prompts = {"behaviour": trait.system_prompts("pos")[chosen], "opposite": trait.system_prompts("neg")[chosen]}
    return chosen, chosen < used, prompts


def _reading(doc: TraitStudyDoc) -> list[str]:
    """Where the trait study's pairs came from, how they were split and what prompting asked."""
    counts, answers, split = doc["counts"], doc["answer_counts"], doc["split"]
    if doc["filter"] == "none":
        chosen = (
            f"every one of {counts['candidates']} persona pairs, unfiltered (--no-filter; the {doc['judge']} judge "
            f"could not score {answers['unscored']} of {answers['answers']} answers, {counts['effective']} pairs "
            "would pass the filter)"
        )
    else:
        chosen = f"{counts['effective']} effective persona pairs of {counts['candidates']} (judged by {doc['judge']})"
    wrote = "which also wrote some of the pairs' answers" if doc["prompting"]["wrote_pairs"] else "unused by the pairs"
    return [
        f"Trait {doc['name']} ({doc['source']}): {chosen}, split by question (seed {split['seed']}) into "
        f"{split['n_pairs']['train']} train pairs over {split['n_questions']['train']} questions and "
        f"{split['n_pairs']['heldout']} held-out pairs over {split['n_questions']['heldout']}. The fine-tune learns "
        "the trait's answers without their instructions; the persona vector (train pairs, each answer under its own "
        "instruction) is the third direction.",
        f"Prompting baseline: the trait's instruction pair {doc['prompting']['instruction']} ({wrote}): "
        f"behaviour “{doc['prompting']['behaviour']}”; opposite “{doc['prompting']['opposite']}”.",
    ]
