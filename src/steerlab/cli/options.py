"""Options shared by several commands, so flags read the same everywhere."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import SteerlabError

ModelOpt = typer.Option(..., "--model", "-m", help="smollm2 | HF id | local dir | file.gguf | BASE+ADAPTER_DIR.")
DeviceOpt = typer.Option(None, "--device", help="cpu, cuda, cuda:1 or auto (default: auto on GPU, else cpu).")
DtypeOpt = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 (default: bf16 on GPU, fp32 on CPU).")
AdapterOpt = typer.Option(None, "--adapter", help="PEFT adapter directory applied on top of --model.")
JudgeOpt = typer.Option(None, "--judge", "-j", help="openai:MODEL (OpenAI-compatible endpoint: $OPENAI_BASE_URL / --judge-base-url, $OPENAI_API_KEY) | local (embedded smollm2) | local:MODEL_SPEC.")
JudgeUrlOpt = typer.Option(None, "--judge-base-url", help="Base URL of the OpenAI-compatible judge (default: $OPENAI_BASE_URL).")
BatchOpt = typer.Option(16, "--batch-size", "-b", min=1, help="Sequences per forward pass.")


def check_out(path: Path, suffix: str, flag: str = "--out") -> Path:
    if path.suffix != suffix:
        raise SteerlabError(f"{flag} {path}: expected a file name ending in {suffix}")
    return path
