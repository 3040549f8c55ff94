"""`steerlab extract ...`, `steerlab export gguf`, `steerlab import gguf`."""

from __future__ import annotations

import warnings
from pathlib import Path

import typer

from ..extract.condition import extract_condition_vector
from ..extract.contrastive import extract_contrastive
from ..formats.pairs import load_pairs
from ..model.loading import load_model
from ..progress import console
from ..vectors.gguf import export_gguf, import_gguf
from ..vectors.vector import SteeringVector
from .app import app, new_group
from .options import AdapterOpt, BatchOpt, DeviceOpt, DtypeOpt, ModelOpt, check_out

extract_app = new_group("Extract steering vectors.")
export_app = new_group("Export vectors to other tools' formats.")
import_app = new_group("Import vectors from other tools' formats.")
app.add_typer(extract_app, name="extract")
app.add_typer(export_app, name="export")
app.add_typer(import_app, name="import")


@extract_app.command("contrastive")
def contrastive(
    model: str = ModelOpt,
    pairs: Path = typer.Option(
        ..., "--pairs", "-p", help="Pairs JSONL: {question, positive, negative, system?} per line."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output vector, .safetensors."),
    reduction: str = typer.Option(
        "response_avg", "--reduction", "-r", help="response_avg | prompt_last | prompt_avg | first_k[:K]."
    ),
    split: str = typer.Option(None, "--split", help="Use only pairs whose 'split' field equals this."),
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    adapter: str = AdapterOpt,
) -> None:
    """Vector per layer = mean activation with the positive answer - with the negative answer.

    Layer L of the vector is for the output of block L. Example:

        steerlab extract contrastive -m smollm2 -p pairs.jsonl -o deception.safetensors
    """
    check_out(out, ".safetensors")
    rows = load_pairs(pairs, split=split)
    lm = load_model(model, device=device, dtype=dtype, adapter=adapter)
    vector = extract_contrastive(lm, rows, reduction=reduction, batch_size=batch_size)
    vector.metadata["config"] = {"pairs": str(pairs), "split": split, "reduction": reduction}
    vector.save(out)
    norms = vector.norms()
    console.print(
        f"wrote {out}: {vector.n_layers} layers x {vector.d_model}, {len(rows)} pairs, "
        f"largest norm at layer {int(norms.argmax())} ({float(norms.max()):.3g})"
    )


@extract_app.command("condition")
def condition_vector(
    model: str = ModelOpt,
    out: Path = typer.Option(..., "--out", "-o", help="Output condition vector, .safetensors."),
    examples: str = typer.Option(
        None, "--examples", help="Built-in condition examples (cooking; its train lines are used)."
    ),
    positive: Path = typer.Option(None, "--positive", help="Prompts that should pass the gate (.txt, .jsonl, .json)."),
    negative: Path = typer.Option(None, "--negative", help="Prompts that should not pass (.txt, .jsonl, .json)."),
    reduction: str = typer.Option("prompt_avg", "--reduction", "-r", help="prompt_avg | prompt_last."),
    system: str = typer.Option(None, "--system", "-s", help="System prompt the prompts are rendered with."),
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    adapter: str = AdapterOpt,
) -> None:
    """Condition vector (CAST) per layer = mean prompt activation of the positives - of the negatives.

    Layer L of the vector is for the output of block L; calibrate its gate with steerlab condition. Example:

        steerlab extract condition -m smollm2 --examples cooking -o cooking.safetensors
    """
    from .condition import examples_from_flags

    check_out(out, ".safetensors")
    (pos, neg), _, source = examples_from_flags(examples, positive, negative)
    lm = load_model(model, device=device, dtype=dtype, adapter=adapter)
    vector = extract_condition_vector(lm, pos, neg, reduction=reduction, system=system, batch_size=batch_size)
    vector.metadata["config"] = {"examples": source, "reduction": reduction, "system": system}
    vector.save(out)
    console.print(f"wrote {out}: {vector.n_layers} layers x {vector.d_model}, {len(pos)} + {len(neg)} prompts")


@export_app.command("gguf")
def export_gguf_cmd(
    vector: Path = typer.Argument(..., help="Input .safetensors vector."),
    out: Path = typer.Argument(..., help="Output .gguf control vector (llama.cpp --control-vector)."),
    model_hint: str = typer.Option(None, "--model-hint", help="controlvector.model_hint (default: model type)."),
) -> None:
    """Write a llama.cpp control vector: direction.N is added to the output of block N (N >= 1)."""
    check_out(out, ".gguf", "OUT")
    vec = SteeringVector.load(vector)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_gguf(vec, out, model_hint=model_hint)
    for w in caught:
        console.print(f"[yellow]warning:[/] {w.message}")
    console.print(f"wrote {out}: direction.1..direction.{vec.n_layers - 1}, d_model {vec.d_model}")


@import_app.command("gguf")
def import_gguf_cmd(
    gguf_file: Path = typer.Argument(..., help="Input .gguf control vector."),
    out: Path = typer.Argument(..., help="Output .safetensors vector."),
) -> None:
    """Read a llama.cpp/repeng control vector into a steerlab vector (layer N = direction.N)."""
    check_out(out, ".safetensors", "OUT")
    vec = import_gguf(gguf_file)
    vec.save(out)
    console.print(f"wrote {out}: {vec.n_layers} layers x {vec.d_model}")
