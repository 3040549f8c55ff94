"""Readouts of every steering vector in a run directory, written where the report finds them.

:func:`write_readouts` reads each vector file in a ``vectors/`` folder of the run (``DIR/vectors``,
``DIR/diff/vectors``, ``DIR/persona/vectors``, ...; files without a ``vector`` tensor, such as the
diff study's per-sample differences, are not vectors and are passed over) with
:func:`steerlab.evaluate.readout.readout_vector` — the logit lens per layer, its norm against the
mean residual norm (measured once for all vectors), and its cosine with every other vector of the
run — and writes one readout document per vector to ``DIR/readouts/NAME.json``
(:data:`~steerlab.pipelines.artifacts.READOUTS_DIR`); ``steerlab report DIR`` renders them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from ..errors import SteerlabError
from ..evaluate.readout import DEFAULT_REFERENCE_PROMPTS, DEFAULT_TOP_K, readout_vector
from ..formats.prompts import generic_prompts
from ..io.atomic import write_json
from ..model.loading import LoadedModel
from ..steering.calibration import mean_residual_norms
from ..vectors.vector import SteeringVector
from .artifacts import READOUTS_DIR, VECTORS_DIR


@dataclass
class ReadoutConfig:
    """Settings of :func:`write_readouts`: ``layers`` to read (the layer grammar; None: every layer
    each vector holds), ``top_k`` tokens per side, the first ``n_prompts`` built-in generic prompts
    as reference for the residual norm, and the ``batch_size`` of that measurement."""

    layers: str | None = None
    top_k: int = DEFAULT_TOP_K
    n_prompts: int = DEFAULT_REFERENCE_PROMPTS
    batch_size: int = 16


def _holds_a_vector(path: Path) -> bool:
    try:
        with safe_open(str(path), "pt") as f:
            return "vector" in set(f.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise SteerlabError(f"{path}: not a readable .safetensors file ({exc})") from None


def run_vectors(run_dir: str | Path) -> dict[str, Path]:
    """The steering vectors of a run directory by name: every ``.safetensors`` file holding a
    ``vector`` tensor in a ``vectors/`` folder at any depth, named by its path from the run
    without the ``vectors`` folder and suffix, joined with ``-`` (``diff/vectors/contrastive`` →
    ``diff-contrastive``), in name order."""
    run = Path(run_dir)
    out: dict[str, Path] = {}
    for path in sorted(run.rglob(f"{VECTORS_DIR}/*.safetensors")):
        if READOUTS_DIR in path.relative_to(run).parts or not _holds_a_vector(path):
            continue
        parts = [p for p in path.relative_to(run).with_suffix("").parts if p != VECTORS_DIR]
        out["-".join(parts)] = path
    return dict(sorted(out.items()))


def write_readouts(lm: LoadedModel, run_dir: str | Path, config: ReadoutConfig | None = None) -> list[Path]:
    """Read every vector of ``run_dir`` (:func:`run_vectors`) and write ``DIR/readouts/NAME.json``
    (the document of :func:`~steerlab.evaluate.readout.readout_vector`, each vector compared with
    every other vector of the run of the same shape). Returns the files written, in name order
    (none when the run holds no vector). Raises SteerlabError naming the file for a vector that is
    unreadable or does not fit ``lm``."""
    config = config or ReadoutConfig()
    run = Path(run_dir)
    files = run_vectors(run)
    if not files:
        return []
    vectors = {name: SteeringVector.load(path) for name, path in files.items()}
    prompts = generic_prompts()[: config.n_prompts]
    norms = mean_residual_norms(lm, prompts, config.batch_size)
    written = []
    for name, vector in vectors.items():
        others = {other: v for other, v in vectors.items() if other != name and v.data.shape == vector.data.shape}
        doc = readout_vector(
            lm,
            vector,
            config.layers,
            top_k=config.top_k,
            compare=others,
            residual_norms=norms,
            name=name,
            source=files[name],
        )
        doc["reference"] = {"prompts": "built-in generic prompts", "n_prompts": len(prompts)}
        path = run / READOUTS_DIR / f"{name}.json"
        write_json(path, doc)
        written.append(path)
    return written
