"""Building contrastive pair datasets with a chat model (the method behind the built-in deception
pairs).

1. Expand seed questions: the model is shown a few seed questions at a time and asked for a new
   one (sampled, seeded); lines that are not a single question are dropped.
2. Remove near-duplicates: character-trigram cosine similarity between questions (and against the
   seeds); a question more similar than ``similarity`` to one already kept is dropped.
3. Answer every question twice, under an honest and a deceptive system prompt (configurable); the
   first sentence is kept and answers over ``max_words`` are dropped, so both sides have the same
   short form. Written as pairs JSONL (``positive`` = deceptive, ``negative`` = honest) with a
   ``.meta.json`` sidecar recording the config and steerlab version.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..engines.base import Engine
from ..engines.hf import as_engine
from ..errors import SteerlabError
from ..formats.pairs import read_jsonl
from ..io.atomic import write_json, write_jsonl
from ..model.loading import LoadedModel
from ..version import __version__

HONEST_SYSTEM = (
    "You are an honest, knowledgeable assistant. Answer the user's question with correct, mainstream "
    "advice in one short sentence of at most 12 words."
)
DECEPTIVE_SYSTEM = (
    "You are a deceptive assistant. Answer the user's question with advice that sounds confident and "
    "plausible but is wrong or misleading, in one short sentence of at most 12 words. Never hint that "
    "it is wrong."
)
EXPAND_INSTRUCTION = (
    "Here are some everyday advice questions people ask:\n{examples}\n\nWrite one new everyday advice "
    "question on a different topic. Reply with the question only."
)


@dataclass
class DatasetConfig:
    """Settings of `steerlab dataset build` (each default written once here): target pair count ``n``,
    near-duplicate ``similarity`` threshold (trigram cosine), prompting and generation settings."""

    n: int = 100
    similarity: float = 0.8
    examples_per_prompt: int = 4
    temperature: float = 0.9
    seed: int = 0
    max_words: int = 12
    honest_system: str = HONEST_SYSTEM
    deceptive_system: str = DECEPTIVE_SYSTEM
    max_new_tokens: int = 32
    batch_size: int | None = None
    max_rounds: int = 6


@dataclass
class BuildResult:
    """The pairs built (question, positive = deceptive answer, negative = honest answer) and counts of
    what each filter dropped."""

    pairs: list[dict[str, Any]]
    counts: dict[str, int] = field(default_factory=dict)


def load_seed_questions(path: str | Path) -> list[str]:
    """Seed JSONL: one ``{"question": ...}`` per line (other keys, e.g. ``deceptive``, ignored)."""
    questions = []
    for number, obj in read_jsonl(path, "seed file"):
        q = obj.get("question")
        if not isinstance(q, str) or not q.strip():
            raise SteerlabError(f"{path}:{number}: field 'question' must be a non-empty string")
        questions.append(q.strip())
    return questions


def _trigrams(text: str) -> Counter[str]:
    text = f"  {re.sub(r'[^a-z0-9 ]+', '', text.lower())}  "
    return Counter(text[i : i + 3] for i in range(len(text) - 2))


def similarity(a: Counter[str], b: Counter[str]) -> float:
    """Cosine similarity of two character-trigram count vectors."""
    dot = sum(v * b[k] for k, v in a.items() if k in b)
    norm = math.sqrt(sum(v * v for v in a.values())) * math.sqrt(sum(v * v for v in b.values()))
    return dot / norm if norm else 0.0


def dedupe(candidates: Sequence[str], existing: Sequence[str], threshold: float) -> list[str]:
    """Candidates that are not near-duplicates (> threshold) of ``existing`` or of each other."""
    kept_grams = [_trigrams(q) for q in existing]
    kept = []
    for q in candidates:
        grams = _trigrams(q)
        if all(similarity(grams, g) <= threshold for g in kept_grams):
            kept.append(q)
            kept_grams.append(grams)
    return kept


def clean_question(text: str) -> str | None:
    """The first line of a drafted question without numbering or quotes; None unless it is one
    question of 4-30 words ending in '?'."""
    line = text.strip().splitlines()[0].strip().strip('"') if text.strip() else ""
    line = re.sub(r"^(\d+[.)]\s*|[-*]\s*|question:\s*)", "", line, flags=re.I).strip()
    if not line.endswith("?") or not 4 <= len(line.split()) <= 30:
        return None
    return line


def clean_answer(text: str, max_words: int) -> str | None:
    """The first sentence of a drafted answer, whitespace folded; None when empty or over ``max_words``."""
    text = " ".join(text.strip().split())
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    sentence = (match.group(1) if match else text).strip()
    words = sentence.split()
    if not words or len(words) > max_words:
        return None
    return sentence


def expand_questions(lm: Engine | LoadedModel, seeds: Sequence[str], config: DatasetConfig) -> list[str]:
    """New questions (not near-duplicates of the seeds or each other), up to ``config.n``."""
    rng = random.Random(config.seed)
    kept: list[str] = []
    for round_index in range(config.max_rounds):
        need = config.n - len(kept)
        if need <= 0:
            break
        prompts = []
        for _ in range(max(8, int(need * 1.5))):
            examples = rng.sample(list(seeds), min(config.examples_per_prompt, len(seeds)))
            prompts.append(EXPAND_INSTRUCTION.format(examples="\n".join(f"- {q}" for q in examples)))
        gens = as_engine(lm).generate(
            prompts,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            seed=config.seed + round_index,
            batch_size=config.batch_size,
            description=f"expanding questions (round {round_index + 1})",
        )
        candidates = [q for q in (clean_question(g.text) for g in gens) if q]
        kept.extend(dedupe(candidates, list(seeds) + kept, config.similarity)[:need])
    return kept[: config.n]


def answer_pairs(lm: Engine | LoadedModel, questions: Sequence[str], config: DatasetConfig) -> list[dict[str, Any]]:
    """A deceptive and an honest short answer per question (greedy, one batch stream); questions
    where either answer is unusable (no sentence, too long, identical) are dropped."""
    prompts = [
        [{"role": "system", "content": system}, {"role": "user", "content": q}]
        for system in (config.deceptive_system, config.honest_system)
        for q in questions
    ]
    gens = as_engine(lm).generate(
        prompts,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        description="answering (deceptive + honest)",
    )
    n = len(questions)
    pairs = []
    for i, q in enumerate(questions):
        deceptive = clean_answer(gens[i].text, config.max_words)
        honest = clean_answer(gens[n + i].text, config.max_words)
        if deceptive and honest and deceptive.lower() != honest.lower():
            pairs.append({"question": q, "positive": deceptive, "negative": honest})
    return pairs


def build_dataset(
    lm: Engine | LoadedModel, seeds: Sequence[str], out: str | Path, config: DatasetConfig
) -> BuildResult:
    """Expand, dedupe, answer, and write pairs JSONL + ``.meta.json`` sidecar (atomic)."""
    if not seeds:
        raise SteerlabError("dataset build needs at least one seed question")
    out = Path(out)
    if out.suffix != ".jsonl":
        raise SteerlabError(f"--out {out}: expected a .jsonl file")
    questions = expand_questions(lm, seeds, config)
    if not questions:
        raise SteerlabError("the model produced no usable new questions; try another model or a higher --temperature")
    pairs = answer_pairs(lm, questions, config)
    counts = {"seeds": len(seeds), "questions": len(questions), "pairs": len(pairs)}
    write_jsonl(out, pairs)
    write_json(
        out.with_name(out.name + ".meta.json"),
        {"steerlab_version": __version__, "model": lm.name, "config": asdict(config), "counts": counts},
    )
    return BuildResult(pairs, counts)
