"""SteeringVector: one direction per decoder block output, with metadata.

``data[L]`` is the direction for layer L, i.e. it is added to the **output of decoder block L**
(``hidden_states[L + 1]``). Saved as ``.safetensors`` (tensor ``vector``, metadata as JSON in the
header); GGUF control vectors (llama.cpp) via :mod:`steerlab.gguf_vectors`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import SteerlabError
from ..io.atomic import atomic_path

FORMAT = "steerlab.steering_vector/1"


def steerlab_version() -> str:
    from ..version import __version__

    return __version__


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class SteeringVector:
    """A ``[n_layers, d_model]`` float32 tensor plus metadata (model, method, reduction, ...)."""

    data: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        data = torch.as_tensor(self.data).detach()
        if data.ndim == 1:
            data = data[None, :]
        if data.ndim != 2 or data.shape[0] == 0 or data.shape[1] == 0:
            raise SteerlabError(f"a steering vector must be [n_layers, d_model], got {tuple(data.shape)}")
        if not torch.isfinite(data).all():
            bad = sorted({int(i) for i in (~torch.isfinite(data)).nonzero()[:, 0]})
            raise SteerlabError(f"steering vector has NaN/inf values at layers {bad[:10]}")
        self.data = data.to(torch.float32).cpu().contiguous()
        self.metadata = dict(self.metadata)
        self.metadata.setdefault("steerlab_version", steerlab_version())
        self.metadata.setdefault("created", _now())

    # --- shape and access -------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.data.shape[0]

    @property
    def d_model(self) -> int:
        return self.data.shape[1]

    def __getitem__(self, layer: int) -> torch.Tensor:
        return self.data[layer]

    def norms(self) -> torch.Tensor:
        """Per-layer L2 norms, ``[n_layers]``."""
        return self.data.norm(dim=-1)

    def check_compatible(self, n_layers: int, d_model: int, what: str = "the model") -> None:
        if self.d_model != d_model:
            raise SteerlabError(
                f"vector d_model {self.d_model} does not match {what}'s d_model {d_model}"
                f"{' (vector made for ' + str(self.metadata.get('model')) + ')' if self.metadata.get('model') else ''}"
            )
        if self.n_layers != n_layers:
            raise SteerlabError(f"vector has {self.n_layers} layers but {what} has {n_layers}")

    # --- algebra ----------------------------------------------------------------------------
    def _derived(self, data: torch.Tensor, op: str) -> SteeringVector:
        meta = {k: v for k, v in self.metadata.items() if k not in ("created", "norms")}
        meta["derived"] = op
        return SteeringVector(data, meta)

    def _other(self, other: SteeringVector) -> torch.Tensor:
        if not isinstance(other, SteeringVector):
            return NotImplemented  # type: ignore[return-value]
        if other.data.shape != self.data.shape:
            raise SteerlabError(f"shape mismatch: {tuple(self.data.shape)} vs {tuple(other.data.shape)}")
        return other.data

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._derived(self.data + self._other(other), "add")

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._derived(self.data - self._other(other), "sub")

    def __mul__(self, scalar: float) -> SteeringVector:
        if not isinstance(scalar, int | float):
            return NotImplemented
        return self._derived(self.data * float(scalar), f"mul {scalar}")

    __rmul__ = __mul__

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def normalized(self) -> SteeringVector:
        """Unit norm at every layer (zero layers stay zero)."""
        norms = self.norms()[:, None]
        return self._derived(torch.where(norms > 0, self.data / norms.clamp(min=1e-30), 0.0), "normalized")

    @staticmethod
    def blend(vectors: Sequence[SteeringVector], weights: Sequence[float]) -> SteeringVector:
        """Weighted sum ``Σ w_i v_i`` of vectors of the same shape."""
        if not vectors or len(vectors) != len(weights):
            raise SteerlabError("blend needs as many weights as vectors (at least one)")
        data = sum(float(w) * vectors[0]._other(v) for v, w in zip(vectors, weights, strict=True))
        meta = {"method": "blend", "sources": [v.metadata.get("method") for v in vectors],
                "weights": [float(w) for w in weights], "model": vectors[0].metadata.get("model")}
        return SteeringVector(data, meta)

    # --- files ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``.safetensors`` atomically; metadata (with per-layer norms) in the header."""
        path = Path(path)
        meta = dict(self.metadata)
        meta["norms"] = [round(float(n), 6) for n in self.norms()]
        header = {"format": FORMAT, "steerlab": json.dumps(meta, default=str)}
        with atomic_path(path) as tmp:
            save_file({"vector": self.data}, str(tmp), metadata=header)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        """Load a steerlab ``.safetensors`` vector, a llama.cpp ``.gguf`` control vector, or a
        persona-vectors ``.pt`` tensor ``[n_layers + 1, d]`` (row 0 = embeddings, dropped)."""
        path = Path(path)
        if not path.is_file():
            raise SteerlabError(f"vector file not found: {path}")
        if path.suffix == ".gguf":
            from .gguf import import_gguf

            return import_gguf(path)
        if path.suffix == ".pt":
            return cls._load_persona_vectors_pt(path)
        try:
            tensors = load_file(str(path))
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                header = f.metadata() or {}
        except (SafetensorError, OSError) as exc:
            raise SteerlabError(f"{path}: not a readable .safetensors file ({exc})") from None
        if "vector" not in tensors:
            raise SteerlabError(f"{path}: no tensor named 'vector' (found {sorted(tensors)})")
        try:
            meta = json.loads(header.get("steerlab", "{}"))
        except json.JSONDecodeError:
            raise SteerlabError(f"{path}: header field 'steerlab' is not valid JSON") from None
        meta.pop("norms", None)
        try:
            return cls(tensors["vector"], meta)
        except SteerlabError as exc:
            raise SteerlabError(f"{path}: {exc}") from None

    @classmethod
    def _load_persona_vectors_pt(cls, path: Path) -> SteeringVector:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling errors of many types on corrupt files
            raise SteerlabError(
                f"{path}: not a readable torch .pt file ({type(exc).__name__})"
            ) from None
        if not isinstance(data, torch.Tensor) or data.ndim != 2 or data.shape[0] < 2:
            raise SteerlabError(f"{path}: expected a [n_layers + 1, d_model] tensor")
        warnings.warn(
            f"{path}: persona-vectors layout assumed (row 0 = embedding output, dropped)",
            stacklevel=2,
        )
        try:
            return cls(data[1:], {"method": "imported", "source": str(path)})
        except SteerlabError as exc:
            raise SteerlabError(f"{path}: {exc}") from None

    def __repr__(self) -> str:
        method = self.metadata.get("method", "?")
        return f"SteeringVector({self.n_layers}x{self.d_model}, method={method}, model={self.metadata.get('model')})"


def unit_directions(x: torch.Tensor) -> torch.Tensor:
    """``x / ‖x‖`` along the last dimension: ``[..., d]`` → ``[..., d]`` float64; rows that are
    zero stay zero (they have no direction)."""
    x = torch.as_tensor(x).double()
    norms = x.norm(dim=-1, keepdim=True)
    return torch.where(norms > 0, x / norms.clamp(min=1e-300), 0.0)


def _as_tensor(v: SteeringVector | torch.Tensor) -> torch.Tensor:
    return v.data if isinstance(v, SteeringVector) else torch.as_tensor(v)


def cosine(
    a: SteeringVector | torch.Tensor, b: SteeringVector | torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Cosine similarity along the last dimension: ``cos = (a · b) / (‖a‖ ‖b‖)``.

    ``a`` and ``b`` have one shape ``[..., d]`` (a vector ``[n_layers, d_model]`` gives the cosine
    per layer, ``[n_layers]``); the result is ``[...]`` in ``dtype`` (computed in float64, clamped
    to [-1, 1]), 0 where either side is zero. Raises SteerlabError when the shapes differ.
    This is steerlab's one cosine: geometry, monitoring and reports all use it or
    :func:`cosine_matrix`.
    """
    x, y = _as_tensor(a), _as_tensor(b)
    if x.shape != y.shape:
        raise SteerlabError(f"cannot compare vectors of shapes {tuple(x.shape)} and {tuple(y.shape)}")
    return (unit_directions(x) * unit_directions(y)).sum(-1).clamp(-1.0, 1.0).to(dtype)


def cosine_matrix(
    a: torch.Tensor, b: torch.Tensor | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Cosine between every row of ``a [k, d]`` and every row of ``b [m, d]`` (default: ``a``):
    ``[k, m]`` in ``dtype``, the same formula as :func:`cosine` (0 where a row is zero). Raises
    SteerlabError when the last dimensions differ."""
    x = torch.as_tensor(a)
    y = x if b is None else torch.as_tensor(b)
    if x.ndim != 2 or y.ndim != 2 or x.shape[-1] != y.shape[-1]:
        raise SteerlabError(f"cosine_matrix needs [k, d] and [m, d] rows; got {tuple(x.shape)} and {tuple(y.shape)}")
    ux = unit_directions(x)
    uy = ux if b is None else unit_directions(y)
    return (ux @ uy.T).clamp(-1.0, 1.0).to(dtype)


def random_cosine_baseline(d_model: int) -> float:
    """Expected |cos| between two random directions in d dimensions (≈ sqrt(2 / (π d)))."""
    return math.sqrt(2.0 / (math.pi * d_model))
