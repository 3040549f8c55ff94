"""The root typer app. SteerlabError anywhere becomes one clear message and exit status 2."""

from __future__ import annotations

import logging

import click
import typer
from rich.logging import RichHandler
from typer.core import TyperGroup

from ..errors import SteerlabError
from ..progress import console


class UserError(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:  # noqa: ARG002 - click's signature
        console.print(f"[bold red]error:[/] {self.message}", highlight=False, soft_wrap=True)


class SteerlabGroup(TyperGroup):
    """Turns SteerlabError raised by any subcommand into a UserError (no traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SteerlabError as exc:
            raise UserError(str(exc)) from None


def new_group(help_text: str) -> typer.Typer:
    return typer.Typer(help=help_text, no_args_is_help=True, cls=SteerlabGroup,
                       rich_markup_mode="rich", pretty_exceptions_enable=False)


app = typer.Typer(
    name="steerlab",
    help=(
        "Steering vectors for Hugging Face causal LMs: extract a direction for a behaviour, steer "
        "generation with it, monitor and compare it.\n\n"
        "Layer convention everywhere: [bold]layer L = output of decoder block L[/] (0-based), i.e. "
        "hidden_states[L+1]. Models: 'smollm2' (embedded, offline), a Hugging Face id or directory, "
        "a .gguf file, or BASE+ADAPTER_DIR."
    ),
    no_args_is_help=True,
    cls=SteerlabGroup,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.WARNING, format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)], force=True,
    )
    logging.getLogger("steerlab").setLevel(logging.DEBUG if verbose else logging.INFO)
