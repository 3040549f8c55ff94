"""Which base model an adapter was trained on: a fingerprint, its comparison, the adapter's record.

Every steerlab adapter directory holds ``steerlab_finetune.json`` (:data:`INFO_FILE`), which records
the base model's fingerprint; :func:`steerlab.extract.model_diff.extract_model_diff` compares it with
the model it is given, so an adapter is not applied to a base it was not trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import SteerlabError
from ..io.files import file_problem, json_type, read_json
from ..model.blocks import unwrap_model
from ..model.loading import LoadedModel

INFO_FILE = "steerlab_finetune.json"
_SHAPE_KEYS = ("model_type", "n_layers", "d_model", "vocab_size")


def model_fingerprint(lm: LoadedModel) -> dict[str, Any]:
    """Shape facts (model type, layers, d_model, vocabulary size) and an 8x8 probe of the input
    embedding (8 evenly spaced rows, first 8 columns, rounded to 6 decimals) identifying a base
    model whatever its dtype."""
    emb = unwrap_model(lm.model).get_input_embeddings().weight
    rows = torch.linspace(0, emb.shape[0] - 1, 8).long().to(emb.device)
    probe = emb[rows, :8].detach().float().cpu()
    config = unwrap_model(lm.model).config
    return {
        "model_type": getattr(config, "model_type", None),
        "n_layers": lm.n_layers,
        "d_model": lm.d_model,
        "vocab_size": len(lm.tokenizer) if lm.tokenizer is not None else emb.shape[0],
        "embedding_probe": [[round(float(x), 6) for x in row] for row in probe],
    }


def fingerprint_mismatch(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """Why two fingerprints differ, in words; None when they match. Shape facts must be equal; the
    embedding probes are compared at bf16 tolerance (rtol 2e-2, atol 2e-3), so a model loaded in
    another dtype still matches."""
    for key in _SHAPE_KEYS:
        if key in recorded and recorded[key] != current.get(key):
            return f"{key} {recorded[key]} vs {current.get(key)}"
    if "embedding_probe" in recorded:
        a = torch.tensor(recorded["embedding_probe"], dtype=torch.float64)
        b = torch.tensor(current["embedding_probe"], dtype=torch.float64)
        if a.shape != b.shape or not torch.allclose(a, b, rtol=2e-2, atol=2e-3):
            return "different weights (embedding values differ)"
    return None


def read_finetune_info(adapter_dir: str | Path) -> dict[str, Any] | None:
    """The ``steerlab_finetune.json`` record of an adapter directory (None if absent).

    Raises:
        SteerlabError: the file is not UTF-8 JSON holding an object.
    """
    path = Path(adapter_dir) / INFO_FILE
    if file_problem(path) is not None:
        return None
    info = read_json(path, "fine-tune record")
    if not isinstance(info, dict):
        raise SteerlabError(f"fine-tune record {path}: expected a JSON object, got {json_type(info)}")
    return info
