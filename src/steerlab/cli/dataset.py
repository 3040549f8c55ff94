"""`steerlab dataset ...`: build pair datasets with a chat model; import chat data."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from ..errors import SteerlabError
from ..formats.conversations import FORMATS, load_chat_data, save_chat_jsonl
from ..model.loading import load_model
from ..pipelines.dataset import DECEPTIVE_SYSTEM, HONEST_SYSTEM, DatasetConfig, build_dataset, load_seed_questions
from ..progress import console
from .app import app, new_group
from .options import DeviceOpt, DtypeOpt, ModelOpt, check_out

dataset_app = new_group("Build contrastive pair datasets and import chat data.")
app.add_typer(dataset_app, name="dataset")


@dataset_app.command("build")
def build(
    model: str = ModelOpt,
    seed_file: Path = typer.Option(
        None, "--seed-file", help="Seed questions, JSONL with a 'question' per line (e.g. data/deception/seed.jsonl)."
    ),
    n: int = typer.Option(100, "--n", min=1, help="New questions to generate."),
    out: Path = typer.Option(..., "--out", "-o", help="Output pairs .jsonl (positive = deceptive, negative = honest)."),
    similarity: float = typer.Option(
        0.8,
        "--similarity",
        min=0.0,
        max=1.0,
        help="Drop questions whose character-trigram cosine to a kept one exceeds this.",
    ),
    honest_system: str = typer.Option(
        HONEST_SYSTEM, "--honest-system", help="System prompt for the negative (honest) answers."
    ),
    deceptive_system: str = typer.Option(
        DECEPTIVE_SYSTEM, "--deceptive-system", help="System prompt for the positive (behaviour) answers."
    ),
    max_words: int = typer.Option(
        12, "--max-words", min=1, help="Drop answers longer than this (first sentence kept)."
    ),
    temperature: float = typer.Option(0.9, "--temperature", min=0.0, help="Sampling temperature for new questions."),
    seed: str = typer.Option(
        None, "--seed", help="Random seed (an integer; default 0). The seed questions file is --seed-file."
    ),
    random_seed: int = typer.Option(None, "--random-seed", help="Old spelling of --seed (a random seed)."),
    batch_size: int = typer.Option(None, "--batch-size", "-b"),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
) -> None:
    """Expand seed questions with a chat model, drop near-duplicates, and answer each question
    honestly and deceptively with two system prompts.

    Example:

        steerlab dataset build -m Qwen/Qwen2.5-7B-Instruct --seed-file seed.jsonl \\
            --n 400 -o pairs.jsonl
    """
    check_out(out, ".jsonl")
    seed_file, seed_value = resolve_seed_flags(seed, random_seed, seed_file)
    seeds = load_seed_questions(seed_file)
    lm = load_model(model, device=device, dtype=dtype)
    config = DatasetConfig(
        n=n,
        similarity=similarity,
        temperature=temperature,
        seed=seed_value,
        max_words=max_words,
        honest_system=honest_system,
        deceptive_system=deceptive_system,
        batch_size=batch_size,
    )
    result = build_dataset(lm, seeds, out, config)
    console.print(f"wrote {out} (its settings beside it in {out.name}.meta.json): {result.counts}")


def resolve_seed_flags(seed: str | None, random_seed: int | None, seed_file: Path | None) -> tuple[Path, int]:
    """``(seed questions file, random seed)`` from ``--seed``, ``--random-seed`` and ``--seed-file``.

    ``--seed`` is a random seed, as in every command. For scripts written when ``--seed`` named the
    seed questions file, ``--seed PATH`` still works when PATH is an existing file and is not an
    integer; a deprecation note says to use ``--seed-file``. Raises SteerlabError naming the flag.
    """
    value: int | None = random_seed
    number = _as_int(seed)
    if seed is not None and number is None:
        if not Path(seed).is_file():
            raise SteerlabError(
                f"--seed {seed!r}: expected an integer random seed (the seed questions file is --seed-file)"
            )
        if seed_file is not None:
            raise SteerlabError(
                f"--seed {seed!r} and --seed-file {seed_file}: give the seed questions once, with --seed-file"
            )
        console.print(f"[yellow]note:[/] --seed FILE is deprecated; use --seed-file {escape(seed)}", highlight=False)
        seed_file = Path(seed)
    elif number is not None:
        if random_seed is not None and random_seed != number:
            raise SteerlabError(f"--seed {number} and --random-seed {random_seed} disagree; give one")
        value = number
    if seed_file is None:
        raise SteerlabError("--seed-file is required: seed questions, JSONL with a 'question' per line")
    return seed_file, 0 if value is None else value


def _as_int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


@dataset_app.command("import")
def import_chat(
    source: Path = typer.Argument(
        ...,
        help="Chat JSONL, pairs JSONL, a JSON list of [user, assistant] pairs, or rendered chats (.jsonl/.csv/.txt).",
    ),
    out: Path = typer.Argument(..., help='Output chat JSONL: {"messages": [...]} per line.'),
    fmt: str = typer.Option("auto", "--format", help=f"One of {', '.join(FORMATS)}."),
    use: str = typer.Option("positive", "--use", help="For pairs: which answer becomes the assistant turn."),
    column: str = typer.Option(None, "--column", help="For rendered chats in JSONL/CSV: the column holding the text."),
) -> None:
    """Convert chat data of any supported shape into steerlab chat JSONL."""
    check_out(out, ".jsonl", "OUT")
    conversations = load_chat_data(source, fmt=fmt, use=use, column=column)
    save_chat_jsonl(out, conversations)
    console.print(f"wrote {len(conversations)} conversations to {out}")
