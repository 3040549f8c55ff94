"""`steerlab traits list`, `steerlab traits show NAME`: the built-in (or any) trait files."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from ..formats.traits import TRAITS_DIR, list_traits, load_trait
from ..progress import console, results
from .app import app, new_group

traits_app = new_group("Built-in traits (persona-vectors schema): list them, show one.")
app.add_typer(traits_app, name="traits")


@traits_app.command("list")
def list_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the built-in traits with their number of instruction pairs and questions."""
    rows = []
    for name in list_traits():
        extract, evaluate = load_trait(name, "extract"), load_trait(name, "eval")
        rows.append(
            {
                "name": name,
                "instructions": len(extract.instruction),
                "extract_questions": len(extract.questions),
                "eval_questions": len(evaluate.questions),
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"built-in traits ({TRAITS_DIR})", title_justify="left")
    table.add_column("name", style="bold")
    table.add_column("instructions", justify="right")
    table.add_column("extract questions", justify="right")
    table.add_column("eval questions", justify="right")
    for row in rows:
        table.add_row(row["name"], str(row["instructions"]), str(row["extract_questions"]), str(row["eval_questions"]))
    results.print(table)
    console.print(
        "Any JSON file in this schema works wherever a trait name does (steerlab traits show FILE.json).",
        highlight=False,
    )


@traits_app.command("show")
def show_cmd(
    name: str = typer.Argument(..., help="Built-in trait name (see `steerlab traits list`) or a trait .json file."),
    split: str = typer.Option("extract", "--split", help="extract | eval (which question set to show)."),
    as_json: bool = typer.Option(False, "--json", help="Print the trait file's JSON."),
) -> None:
    """Show a trait: instruction pairs, questions and the judge's eval prompt."""
    trait = load_trait(name, split)
    if as_json:
        typer.echo(json.dumps(trait.to_json(), indent=2, ensure_ascii=False))
        return
    results.print(f"[bold]{escape(trait.name)}[/] ({split}) - {escape(str(trait.source))}", highlight=False)
    pairs = Table(
        title=f"instruction pairs ({len(trait.instruction)})", title_justify="left", show_lines=True, expand=True
    )
    pairs.add_column("#", justify="right", width=3)
    pairs.add_column("pos (shows the trait)", ratio=1)
    pairs.add_column("neg (the opposite)", ratio=1)
    for i, pair in enumerate(trait.instruction, 1):
        pairs.add_row(str(i), escape(pair.pos), escape(pair.neg))
    results.print(pairs)
    questions = Table(
        title=f"{split} questions ({len(trait.questions)})", title_justify="left", show_header=False, expand=True
    )
    questions.add_column("#", justify="right", width=3)
    questions.add_column("question")
    for i, question in enumerate(trait.questions, 1):
        questions.add_row(str(i), escape(question))
    results.print(questions)
    results.print(Panel(escape(trait.eval_prompt), title="eval prompt (judge, 0-100)", title_align="left"))


@traits_app.command("new")
def new_cmd(
    description: str = typer.Argument(..., help='One line, e.g. "gives overconfident medical advice".'),
    model: str = typer.Option(
        ..., "--model", "-m", help="A chat model: any model spec, or openai:MODEL for an OpenAI-compatible endpoint."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Trait file to write (.json, persona-vectors schema)."),
    name: str = typer.Option(None, "--name", help="Trait name (default: the file stem)."),
    base_url: str = typer.Option(
        None, "--base-url", help="With openai:MODEL: the endpoint (default $OPENAI_BASE_URL)."
    ),
    instructions: int = typer.Option(5, "--instructions", min=1, help="Instruction pairs to ask for."),
    questions: int = typer.Option(20, "--questions", min=1, help="Questions to ask for."),
    attempts: int = typer.Option(
        3, "--attempts", min=1, help="Tries; each failed draft's error is shown to the model."
    ),
) -> None:
    """Draft a trait file with a chat model and validate it (retrying with the error shown)."""
    from ..io.atomic import write_json
    from ..pipelines.drafting import draft_trait, make_chat
    from .options import check_out

    check_out(out, ".json")
    trait, used = draft_trait(
        make_chat(model, base_url), description, name or out.stem, instructions, questions, attempts
    )
    write_json(out, {**trait.to_json(), "description": description, "drafted_by": model})
    console.print(
        f"wrote {out} ({len(trait.instruction)} instruction pairs, {len(trait.questions)} questions; "
        f"valid after {used} attempt{'s' if used > 1 else ''}) — review it before use"
    )
