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
``--scale``, ``--cap-ceiling``, ``--cap-floor``, ``--cap-percentile``, ``--cap-floor-percentile``,
``--reference-prompts``) are built here and turned into a
:class:`~steerlab.steering.steerer.SteeringSpec` by :func:`steering_spec`.

Reference prompts: ``--scale relative`` (mean residual norm at the layer) and the cap percentiles
(percentiles of h·v̂ at each steered layer) are measured on the prompts of ``--reference-prompts
FILE`` when given, else on the run's own prompts (``generate``: its prompts; ``sweep``: its
questions). The run's own prompts are the default because they are always at hand and are the
distribution being steered; pass a separate file to calibrate once on a fixed, neutral set and
reuse the same thresholds across runs. Either way the prompts go through the chat template without
a system prompt (see :mod:`steerlab.steering.calibration`).
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
JudgeOpt = typer.Option(
    None,
    "--judge",
    "-j",
    help="openai:MODEL (OpenAI-compatible endpoint: $OPENAI_BASE_URL / --judge-base-url, $OPENAI_API_KEY) | local (embedded smollm2) | local:MODEL_SPEC.",
)
JudgeUrlOpt = typer.Option(
    None, "--judge-base-url", help="Base URL of the OpenAI-compatible judge (default: $OPENAI_BASE_URL)."
)
BatchOpt = typer.Option(16, "--batch-size", "-b", min=1, help="Sequences per forward pass.")
EngineOpt = typer.Option(
    "hf",
    "--engine",
    help="Where generation and scoring run: hf (transformers, the reference) | vllm (vLLM: continuous batching, "
    "tensor/pipeline parallel; pip install 'steerlab[vllm]'). Activation capture always runs on hf.",
)
TensorParallelOpt = typer.Option(
    1, "--tensor-parallel-size", min=1, help="--engine vllm: GPUs (CPU processes) each layer is split over."
)
PipelineParallelOpt = typer.Option(
    1, "--pipeline-parallel-size", min=1, help="--engine vllm: GPUs (CPU processes) the layers are spread over."
)
GpuMemoryOpt = typer.Option(
    0.85, "--gpu-memory-utilization", help="--engine vllm: fraction of GPU memory for weights and KV cache."
)
MaxModelLenOpt = typer.Option(
    None, "--max-model-len", help="--engine vllm: longest sequence in tokens (default: the model's context)."
)

LAYER_GRAMMAR = "12 | 10,12 | 10-15 | -1 (from the end) | all; layer L = output of block L"


def engine_config(
    engine: str,
    tensor_parallel_size: int,
    pipeline_parallel_size: int,
    gpu_memory_utilization: float,
    max_model_len: int | None,
) -> Any:
    """The :class:`~steerlab.engines.base.EngineConfig` of the ``--engine`` flags (checked: SteerlabError)."""
    from ..engines.base import EngineConfig

    return EngineConfig(engine, tensor_parallel_size, pipeline_parallel_size, gpu_memory_utilization, max_model_len)


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


def _check_floats_or_auto(_ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    if value is not None and not is_auto(value):
        parse_floats(value, _flag(param))
    return value


def is_auto(value: str | None) -> bool:
    """Whether a ``--coeff`` value is ``auto`` (coefficients from a calibration)."""
    return value is not None and value.strip().lower() == "auto"


def _choice(kind: str) -> Callable[[typer.Context, typer.CallbackParam, str], str]:
    """A parse-time check against ``steerlab.steering.operators``' POSITIONS, OPERATORS or SCALES."""

    def check(_ctx: typer.Context, param: typer.CallbackParam, value: str) -> str:
        from ..steering import operators  # imported when a command runs, not for --help

        choices = getattr(operators, kind)
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


def coeff_option(default: Any = ..., plural: bool = False, help: str | None = None, auto: bool = False) -> Any:
    """``--coeff``/``--coeffs``/``-c``: one number or a comma-separated list (checked at parsing); with
    ``auto``, also the word ``auto`` (coefficients from a calibration, ``--calibration``)."""
    names = ("--coeffs", "--coeff") if plural else ("--coeff", "--coeffs")
    text = help or "Coefficient, or a comma-separated list such as -4,0,4."
    return typer.Option(default, *names, "-c", help=text, callback=_check_floats_or_auto if auto else _check_floats)


def vector_option(
    default: Any = ..., help: str = "Steering vector (.safetensors, .gguf or persona-vectors .pt)."
) -> Any:
    """``--vector``/``-v``: a vector file."""
    return typer.Option(default, "--vector", "-v", help=help)


def positions_option(default: str | None = "all") -> Any:
    """``--positions``: where the intervention applies (checked at parsing). ``default`` None lets a
    command tell "not given" apart (``--coeff auto`` then takes the calibration's positions)."""
    return typer.Option(
        default,
        "--positions",
        callback=_choice("POSITIONS"),
        help="all (prefill + every new token) | prompt (prefill only) | response (last position of every forward)."
        + ("" if default else " Default: all; with --coeff auto, the calibration's."),
    )


def steering_positions_option(default: str | None = "response", help: str | None = None) -> Any:
    """``--steering-positions``: where a study's steering conditions act (checked at parsing)."""
    text = help or (
        "Where every steering condition acts: response (default; the last prompt token and every "
        "answer token, as persona-vectors' --steering_type response) | all | prompt. With response "
        "each distinct prompt runs once for all conditions."
    )
    return typer.Option(default, "--steering-positions", callback=_choice("POSITIONS"), help=text)


def operator_option() -> Any:
    """``--operator``: add, ablate or cap (checked at parsing)."""
    return typer.Option(
        "add",
        "--operator",
        callback=_choice("OPERATORS"),
        help="add (h + c·v) | ablate (remove c·(h·v̂)v̂) | cap (clamp h·v̂, see --cap-*).",
    )


def scale_option() -> Any:
    """``--scale``: how the coefficient is read (checked at parsing)."""
    return typer.Option(
        "raw",
        "--scale",
        callback=_choice("SCALES"),
        help="raw (c·v) | unit (c·v̂) | relative (c × mean residual norm at the layer, measured on --reference-prompts, default: the run's prompts).",
    )


def cap_ceiling_option() -> Any:
    """``--cap-ceiling``: the maximum of h·v̂ for ``--operator cap``."""
    return typer.Option(None, "--cap-ceiling", help="cap: maximum of h·v̂.")


def cap_floor_option() -> Any:
    """``--cap-floor``: the minimum of h·v̂ for ``--operator cap``."""
    return typer.Option(None, "--cap-floor", help="cap: minimum of h·v̂.")


def _check_percentile(_ctx: typer.Context, param: typer.CallbackParam, value: float | None) -> float | None:
    if value is not None and not 0 <= value <= 100:
        raise SteerlabError(f"{_flag(param)} {value:g}: expected a number in 0..100")
    return value


def cap_percentile_option() -> Any:
    """``--cap-percentile P``: the cap ceiling at each steered layer is the P-th percentile (0-100) of
    h·v̂ on the reference prompts (checked at parsing)."""
    return typer.Option(
        None,
        "--cap-percentile",
        callback=_check_percentile,
        help="cap: ceiling = this percentile (0-100) of h·v̂ at each steered layer, measured on "
        "--reference-prompts (default: the run's prompts). E.g. 90.",
    )


def cap_floor_percentile_option() -> Any:
    """``--cap-floor-percentile P``: the cap floor from a percentile, as ``--cap-percentile``."""
    return typer.Option(
        None,
        "--cap-floor-percentile",
        callback=_check_percentile,
        help="cap: floor = this percentile (0-100) of h·v̂ at each steered layer, on the reference prompts.",
    )


def reference_prompts_option() -> Any:
    """``--reference-prompts FILE``: prompts to measure ``--scale relative`` and cap percentiles on."""
    return typer.Option(
        None,
        "--reference-prompts",
        help="Prompts (.txt, .jsonl or .json) on which --scale relative's mean residual norm and the "
        "--cap-*percentile thresholds are measured (default: the run's own prompts).",
    )


def check_reference_prompts(
    reference_prompts: Path | None, scale: str, cap_percentile: float | None, cap_floor_percentile: float | None
) -> None:
    """Raise SteerlabError when ``--reference-prompts`` is given but nothing measures on it (it serves
    ``--scale relative`` and the cap percentiles only)."""
    if (
        reference_prompts is not None
        and scale != "relative"
        and cap_percentile is None
        and cap_floor_percentile is None
    ):
        raise SteerlabError(
            "--reference-prompts is used by --scale relative and --cap-percentile/--cap-floor-percentile only"
        )


def steering_spec(
    vector: Any,
    layers: str,
    coeff: Any,
    operator: str = "add",
    positions: str = "all",
    scale: str = "raw",
    ceiling: float | None = None,
    floor: float | None = None,
    ceiling_percentile: float | None = None,
    floor_percentile: float | None = None,
) -> Any:
    """The :class:`~steerlab.steering.steerer.SteeringSpec` the steering flags describe (the same
    object a Python user builds); layers are range-checked, and cap percentiles resolved
    (:meth:`~steerlab.steering.steerer.SteeringSpec.calibrated`), once a model is loaded.

    Raises SteerlabError naming the flags for inconsistent cap flags (e.g. ``--cap-percentile``
    without ``--operator cap``, or with ``--cap-ceiling``).
    """
    from ..steering.steerer import SteeringSpec

    return SteeringSpec(
        vector,
        layers,
        coeff,
        operator,
        positions,
        scale,
        ceiling,
        floor,
        ceiling_percentile=ceiling_percentile,
        floor_percentile=floor_percentile,
    )


def seed_option(help: str = "Random seed.") -> Any:
    """``--seed``: a random seed (an integer) in every command."""
    return typer.Option(0, "--seed", help=help)


def check_out(path: Path, suffix: str, flag: str = "--out") -> Path:
    """Check an output file name's suffix before any work; raises SteerlabError naming ``flag``."""
    if path.suffix != suffix:
        raise SteerlabError(f"{flag} {path}: expected a file name ending in {suffix}")
    return path
