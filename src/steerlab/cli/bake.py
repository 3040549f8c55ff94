"""`steerlab bake`: a model directory with one direction projected out of the weights."""

from __future__ import annotations

from pathlib import Path

import typer

from ..model.layers import resolve_one_layer
from ..model.loading import load_model
from ..progress import OutputConsole
from ..steering.bake import BAKE_FILE, bake_direction
from ..vectors.vector import SteeringVector
from .app import app
from .options import DeviceOpt, DtypeOpt, ModelOpt, layer_option, vector_option

results = OutputConsole()  # stdout


@app.command()
def bake(
    model: str = ModelOpt,
    vector: Path = vector_option(
        help="The vector (.safetensors, .gguf or .pt); its row --layer is the direction. A one-row file is "
        "an explicit direction (no --layer)."
    ),
    layer: str = layer_option(None, help="The one layer whose direction to bake (required for a multi-layer vector)."),
    out: Path = typer.Option(
        ..., "--out", "-o", help=f"New model directory (an existing one only if an earlier bake wrote it: {BAKE_FILE})."
    ),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
) -> None:
    """Bake one direction into the weights: write a model that behaves as if the direction were
    projected out of its residual stream, with no hooks, in any engine.

    Weight orthogonalisation (Arditi et al. 2024, the "abliterated" models): the unit direction u is
    removed from the output of every matrix that writes into the residual stream — the token (and
    position) embeddings and, in every block, the attention output and MLP down projections
    (W ← W − u uᵀ W, biases b ← b − (u·b) u). The result equals steering with the projection
    w − (w·u) u on every write (directional ablation at every layer, c = 1). Tied input/output
    embeddings are untied so the unembedding keeps its weights. OUT is a standard Hugging Face
    directory (safetensors, config.json, tokenizer; written atomically) that transformers loads,
    stock vLLM serves at full speed (no eager mode, no extension), and llama.cpp's
    convert_hf_to_gguf.py converts; OUT/steerlab_bake.json records the vector file, its SHA-256, the
    layer and the direction. Weights are saved in the dtype loaded (--dtype; default fp32 on CPU).

    Baking cannot express: a different direction per layer (one direction, removed everywhere);
    adding a vector (needs output biases the models lack); capping; positions; coefficients
    other than 1. Gemma 2/3 (norms after the output projections) are refused. Use hooks
    (steerlab generate --operator ...) for those. Supported: Llama, Mistral, Qwen2/3, Phi-3, Gemma,
    GPT-2, GPT-NeoX. Example:

        steerlab bake -m meta-llama/Llama-3.1-8B-Instruct -v refusal.safetensors -l 12 --dtype bfloat16 -o out/abliterated
    """
    vec = SteeringVector.load(vector)
    lm = load_model(model, device=device, dtype=dtype)
    index = None
    if layer is not None:
        owner = str(vector) if vec.n_layers == 1 else lm.name
        index = resolve_one_layer(layer, vec.n_layers if vec.n_layers == 1 else lm.n_layers, "--layer", owner)
    result = bake_direction(lm, vec, out, layer=index, vector_file=vector)
    where = f"layer {result.metadata['vector']['layer']} of " if index is not None else ""
    results.print(
        f"baked the direction ({where}{vector}) out of {len(result.changed)} weight tensors of {model}"
        f"{'; input/output embeddings untied' if result.untied else ''} -> {result.path}",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )
