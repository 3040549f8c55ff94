"""The root typer app. SteerlabError anywhere becomes one clear message and exit status 2; help text
is reflowed so that only paragraph breaks survive (docs/design.md §11)."""

from __future__ import annotations

import importlib
import inspect
import logging
import re

import click
import typer
from rich.logging import RichHandler
from rich.markup import escape
from typer.core import TyperGroup

from ..errors import SteerlabError
from ..progress import console, results
from ..version import __version__


class UserError(click.ClickException):
    """A command-line mistake found by the CLI itself (not by the library): shown as one ``error:``
    line, exit status 2, the same as a :class:`~steerlab.errors.SteerlabError`."""

    exit_code = 2

    def show(self, file=None) -> None:  # click's signature
        """Print the message as one ``error:`` line on stderr (``file`` is ignored: steerlab's console)."""
        show_error(self.message)


def show_error(message: str) -> None:
    """One line on stderr; the message is escaped so paths like ``a[1].jsonl`` print as is."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


_PARAGRAPHS = re.compile(r"\n[ \t]*\n")
_KEEP_INDENT = "[bold][/bold]"  # rich markup that prints as nothing (see reflow)


def reflow(text: str | None) -> str | None:
    """Help text with the line breaks of its source removed inside paragraphs.

    Docstrings and help strings are broken at ~100 columns in the source; rich's help keeps every
    newline, so a sentence would break at the source's column and again at the terminal's. Here
    paragraphs (separated by blank lines) become one line each, which rich then wraps at the
    terminal's width. Kept as they are: indented lines (examples, commands), lines starting a
    bullet (``- ``), and paragraphs click marks as preformatted (``\\b``). An indented line starts
    with an empty markup tag, which prints as nothing: typer dedents all but the first line of the
    help after its first paragraph, which would otherwise take an example's indentation away.
    """
    if not text:
        return text
    paragraphs = []
    for paragraph in _PARAGRAPHS.split(inspect.cleandoc(text)):
        if paragraph.startswith("\b"):
            paragraphs.append(paragraph)
            continue
        lines: list[str] = []
        for line in paragraph.split("\n"):
            starts_new = not lines or line[:1].isspace() or lines[-1].startswith(_KEEP_INDENT) or line.startswith("- ")
            if starts_new:
                lines.append(f"{_KEEP_INDENT}{line.rstrip()}" if line[:1].isspace() else line.rstrip())
            else:
                lines[-1] = f"{lines[-1]} {line.strip()}"
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def reflow_help(command: click.Command) -> None:
    """Reflow a command's help and its parameters' help in place (see :func:`reflow`)."""
    command.help = reflow(command.help)
    for param in command.params:
        if isinstance(getattr(param, "help", None), str):
            param.help = reflow(param.help)


class SteerlabGroup(TyperGroup):
    """Turns SteerlabError (or UserError) raised by any subcommand into one message and exit
    status 2, with no traceback. typer >= 0.2x runs its own vendored click, which does not
    recognise ``click.ClickException`` subclasses, so the message is printed here and
    ``typer.Exit(2)`` (handled by every typer version) ends the command.

    Every group of steerlab's is one of these, so every command's help passes through here once:
    the group reflows its own help and its commands' (:func:`reflow`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        reflow_help(self)
        for command in self.commands.values():
            reflow_help(command)  # a subgroup is a SteerlabGroup too: reflowing twice changes nothing

    def invoke(self, ctx: click.Context):
        """Run the subcommand; SteerlabError/UserError become one message and ``typer.Exit(2)``."""
        try:
            return super().invoke(ctx)
        except SteerlabError as exc:
            show_error(str(exc))
            raise typer.Exit(UserError.exit_code) from None
        except UserError as exc:
            exc.show()
            raise typer.Exit(exc.exit_code) from None


def new_group(help_text: str) -> typer.Typer:
    """A command group (e.g. ``steerlab diff``) that handles errors like the root app (one line, exit 2)
    and shows its help when called without a subcommand."""
    return typer.Typer(
        help=help_text, no_args_is_help=True, cls=SteerlabGroup, rich_markup_mode="rich", pretty_exceptions_enable=False
    )


class LazyRootGroup(SteerlabGroup):
    """The root command group: lists commands from ``steerlab.cli.COMMANDS`` without importing them,
    and imports a command's modules only when it is looked up to run (or to show its own help)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command name, from the registry (no imports)."""
        from . import COMMANDS

        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The real command (importing its modules), or a light stand-in while listing commands."""
        from . import COMMANDS

        if cmd_name not in COMMANDS:
            return None
        modules, summary = COMMANDS[cmd_name]
        if getattr(self, "_listing", False):  # root --help: name and summary only
            return click.Command(cmd_name, help=summary, short_help=summary)
        for module in modules:  # every module that adds to this command, even if one was imported before
            importlib.import_module(f"{__package__}.{module}")
        command = typer.main.get_group(app).commands.get(cmd_name)
        if command is not None:
            self.commands[cmd_name] = command
        return command

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Root help: command names and summaries from the registry, nothing imported."""
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


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
    cls=LazyRootGroup,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        results.print(f"steerlab {__version__}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", help="Debug logging."),
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_show_version, help="Print steerlab's version and exit."
    ),
) -> None:
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )
    logging.getLogger("steerlab").setLevel(logging.DEBUG if verbose else logging.INFO)
