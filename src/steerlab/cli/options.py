"""Options shared by several commands, declared once so that a flag reads the same everywhere.

Short flags have one meaning in every command: ``-m`` model, ``-v`` vector, ``-l`` layer(s),
``-c`` coefficient(s), ``-t`` trait, ``-o`` output, ``-f`` fine-tuned model/adapter, ``-p`` pairs,
``-d`` data, ``-q`` questions, ``-r`` reduction(s), ``-j`` judge, ``-s`` system prompt,
``-n`` max new tokens, ``-b`` batch size, ``-e`` epochs. ``--seed`` is always a random seed.

Layer flags (``--layer``/``--layers``, either spelling, ``-l``) all take the grammar of
:mod:`steerlab.model.layers` (``all``, ``12``, ``10,12``, ``10-15``, negatives from the end). The
grammar is checked while the command line is parsed, before any model loads; the range is checked
once the model (or vector) is known. Coefficient flags (``--coeff``/``--coeffs``, ``-c``) take one
number or a comma-separated list. Steering flags (``--vector``, ``--operator``, ``--positions``,
``--scale``, ``--cap-ceiling``, ``--cap-floor``) are built here and turned into a
:class:`~steerlab.steering.steerer.SteeringSpec` by :func:`steering_spec`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from ..errors import SteerlabError
from ..model.layers import parse_layer_spec

ModelOpt = typer.Option(..., "--model", "-m", help="smollm2 | HF id | local dir | file.gguf | BASE+ADAPTER_DIR.")
DeviceOpt = typer.Option(None, "--device", help="cpu, cuda, cuda:1 or auto (default: auto on GPU, else cpu).")
DtypeOpt = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 (default: bf16 on GPU, fp32 on CPU).")
AdapterOpt = typer.Option(None, "--adapter", help="PEFT adapter directory applied on top of --model.")
JudgeOpt = typer.Option(None, "--judge", "-j", help="openai:MODEL (OpenAI-compatible endpoint: $OPENAI_BASE_URL / --judge-base-url, $OPENAI_API_KEY) | local (embedded smollm2) | local:MODEL_SPEC.")
JudgeUrlOpt = typer.Option(None, "--judge-base-url", help="Base URL of the OpenAI-compatible judge (default: $OPENAI_BASE_URL).")
BatchOpt = typer.Option(16, "--batch-size", "-b", min=1, help="Sequences per forward pass.")

LAYER_GRAMMAR = "12 | 10,12 | 10-15 | -1 (from the end) | all; layer L = output of block L"


def _flag(param: Any) -> str:
    """The flag a parameter is known by in messages: its first long name."""
    return next((o for o in getattr(param, "opts", []) if o.startswith("--")), f"--{param.name}")


def _check_layers(_ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    if value is not None:
        parse_layer_spec(value, _flag(param))
    return value


def _check_floats(_ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    if value is not None:
        parse_floats(value, _flag(param))
    return value


def _choice(kind: str) -> Callable[[typer.Context, typer.CallbackParam, str], str]:
    """A parse-time check against ``steerlab.steering.steerer``'s POSITIONS, OPERATORS or SCALES."""

    def check(_ctx: typer.Context, param: typer.CallbackParam, value: str) -> str:
        from ..steering import steerer  # imported when a command runs, not for --help

        choices = getattr(steerer, kind)
        if value is not None and value not in choices:
            raise SteerlabError(f"{_flag(param)} {value!r}: expected one of {', '.join(choices)}")
        return value

    return check


def parse_floats(text: str, flag: str) -> list[float]:
    """``"-4,0,4"`` → ``[-4.0, 0.0, 4.0]``. Raises SteerlabError naming ``flag`` for text that is not
    comma-separated numbers, or for no numbers."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SteerlabError(f"{flag} {text!r}: expected comma-separated numbers, e.g. -4,-2,0,2,4") from None
    if not values:
        raise SteerlabError(f"{flag}: no values given")
    return values


def layer_option(default: Any = ..., plural: bool = False, help: str | None = None) -> Any:
    """``--layer``/``--layers``/``-l`` in the layer grammar (both spellings accepted; ``plural`` picks
    the one shown first and named in messages). Grammar errors fail at parsing, exit status 2."""
    names = ("--layers", "--layer") if plural else ("--layer", "--layers")
    text = f"Layer(s): {LAYER_GRAMMAR}." if help is None else f"{help} Grammar: {LAYER_GRAMMAR}."
    return typer.Option(default, *names, "-l", help=text, callback=_check_layers)


def coeff_option(default: Any = ..., plural: bool = False, help: str | None = None) -> Any:
    """``--coeff``/``--coeffs``/``-c``: one number or a comma-separated list (checked at parsing)."""
    names = ("--coeffs", "--coeff") if plural else ("--coeff", "--coeffs")
    text = help or "Coefficient, or a comma-separated list such as -4,0,4."
    return typer.Option(default, *names, "-c", help=text, callback=_check_floats)


def vector_option(default: Any = ..., help: str = "Steering vector (.safetensors, .gguf or persona-vectors .pt).") -> Any:
    """``--vector``/``-v``: a vector file."""
    return typer.Option(default, "--vector", "-v", help=help)


def positions_option() -> Any:
    """``--positions``: where the intervention applies (checked at parsing)."""
    return typer.Option("all", "--positions", callback=_choice("POSITIONS"),
                        help="all (prefill + every new token) | prompt (prefill only) | response (last position of every forward).")


def operator_option() -> Any:
    """``--operator``: add, ablate or cap (checked at parsing)."""
    return typer.Option("add", "--operator", callback=_choice("OPERATORS"),
                        help="add (h + c·v) | ablate (remove c·(h·v̂)v̂) | cap (clamp h·v̂, see --cap-*).")


def scale_option() -> Any:
    """``--scale``: how the coefficient is read (checked at parsing)."""
    return typer.Option("raw", "--scale", callback=_choice("SCALES"),
                        help="raw (c·v) | unit (c·v̂) | relative (c × mean residual norm at the layer, measured on the prompts).")


def cap_ceiling_option() -> Any:
    """``--cap-ceiling``: the maximum of h·v̂ for ``--operator cap``."""
    return typer.Option(None, "--cap-ceiling", help="cap: maximum of h·v̂.")


def cap_floor_option() -> Any:
    """``--cap-floor``: the minimum of h·v̂ for ``--operator cap``."""
    return typer.Option(None, "--cap-floor", help="cap: minimum of h·v̂.")


def steering_spec(
    vector: Any, layers: str, coeff: Any, operator: str = "add", positions: str = "all", scale: str = "raw",
    ceiling: float | None = None, floor: float | None = None,
) -> Any:
    """The :class:`~steerlab.steering.steerer.SteeringSpec` the steering flags describe (the same
    object a Python user builds); layers are range-checked when it is applied to a model."""
    from ..steering.steerer import SteeringSpec

    return SteeringSpec(vector, layers, coeff, operator, positions, scale, ceiling, floor)


def seed_option(help: str = "Random seed.") -> Any:
    """``--seed``: a random seed (an integer) in every command."""
    return typer.Option(0, "--seed", help=help)


def check_out(path: Path, suffix: str, flag: str = "--out") -> Path:
    """Check an output file name's suffix before any work; raises SteerlabError naming ``flag``."""
    if path.suffix != suffix:
        raise SteerlabError(f"{flag} {path}: expected a file name ending in {suffix}")
    return path
