"""SteeringVector: one direction per decoder block output, with metadata.

``data[L]`` is the direction for layer L, i.e. it is added to the **output of decoder block L**
(``hidden_states[L + 1]``). Saved as ``.safetensors`` (tensor ``vector``, metadata as JSON in the
header); GGUF control vectors (llama.cpp) via :mod:`steerlab.vectors.gguf`.
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
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import SteerlabError
from ..io.atomic import atomic_path
from ..io.files import FILE_NOT_FOUND, file_problem, json_type, parse_json

FORMAT = "steerlab.steering_vector/1"


def steerlab_version() -> str:
    """The installed steerlab version, stamped into every vector's metadata."""
    from ..version import __version__

    return __version__


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def format_layers(layers: Sequence[int]) -> str:
    """Layer indices in the layer grammar's compact form: ``[1, 2, 3, 7]`` → ``"1-3,7"``."""
    parts: list[str] = []
    values = sorted(set(int(layer) for layer in layers))
    start = prev = None
    for layer in [*values, None]:
        if start is not None and (layer is None or layer != prev + 1):
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if layer is not None and start is None:
            start = layer
        prev = layer
    return ",".join(parts) or "(none)"


def _check_present(value: Any, n_rows: int) -> list[int]:
    """Validate ``metadata["layers_present"]``: distinct integer layers within the vector's rows."""
    if not isinstance(value, list | tuple) or not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        raise SteerlabError(f"metadata 'layers_present' must be a list of layer indices, got {value!r}")
    present = sorted(set(value))
    if present and not 0 <= present[0] <= present[-1] < n_rows:
        raise SteerlabError(f"metadata 'layers_present' {format_layers(present)} is outside the vector's {n_rows} rows")
    return present


def _union_present(vectors: Sequence[Any]) -> list[int] | None:
    """Layers present in any of ``vectors`` when one of them is partial, else None (all complete)."""
    vectors = [v for v in vectors if isinstance(v, SteeringVector)]
    if not any(v.is_partial for v in vectors):
        return None
    return sorted(set().union(*(v.layers_present for v in vectors)))


@dataclass
class SteeringVector:
    """A ``[n_layers, d_model]`` float32 tensor plus metadata (model, method, reduction, ...).

    ``data[L]`` is the direction for layer L, the output of decoder block L (``hidden_states[L + 1]``;
    docs/design.md §2), in activation units (a steering coefficient multiplies it as is). ``data`` may be given
    as ``[n_layers, d_model]`` or ``[d_model]`` (one layer); it is stored as float32 on the CPU.
    ``metadata`` is JSON-able: ``model``, ``model_type``, ``method`` (``contrastive``, ``persona``,
    ``model_diff``, ``blend``, ``imported``, ...), ``reduction``, ``n_samples`` and what the method
    adds; ``steerlab_version`` and ``created`` (ISO 8601, UTC) are filled in when absent, and
    :meth:`save` adds the per-layer ``norms``.

    Algebra (the result's metadata records ``derived``): ``a + b``, ``a - b`` (same shape),
    ``c * a``, ``-a``, :meth:`normalized` (unit norm per layer), :meth:`blend` (Σ w_i v_i), in the
    manner of repeng's ``ControlVector`` (github.com/vgel/repeng).

    Raises SteerlabError at construction for a shape other than 1-D/2-D, an empty dimension, NaN/inf
    values (naming the layers), or an invalid ``layers_present``.

    **Partial vectors.** A vector read from a file that holds directions for only some layers (a
    llama.cpp control vector written by repeng or llama.cpp's generator) records them in
    ``metadata["layers_present"]`` (sorted layer indices); its other rows are zero, as llama.cpp
    treats absent layers, and its row count is not the model's layer count. Such a vector fits any
    model of the same d_model with more than ``max(layers_present)`` layers, and only its present
    layers can be steered (:meth:`check_compatible`, :meth:`__getitem__`). ``metadata["source"]``
    names the file it was loaded from.
    """

    data: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        data = torch.as_tensor(self.data).detach()
        if data.is_complex():
            raise SteerlabError(f"a steering vector must be real, got dtype {str(data.dtype).removeprefix('torch.')}")
        if data.ndim == 1:
            data = data[None, :]
        if data.ndim != 2 or data.shape[0] == 0 or data.shape[1] == 0:
            raise SteerlabError(f"a steering vector must be [n_layers, d_model], got {tuple(data.shape)}")
        wide = data.dtype == torch.float64
        data = data.to(torch.float32).cpu().contiguous()  # values beyond float32's range become inf: refused
        if not torch.isfinite(data).all():
            bad = sorted({int(i) for i in (~torch.isfinite(data)).nonzero()[:, 0]})
            raise SteerlabError(
                f"steering vector has NaN/inf values at layers {bad[:10]}"
                + (" (float64 values beyond float32's range count as inf)" if wide else "")
            )
        self.data = data
        self.metadata = dict(self.metadata)
        self.metadata.setdefault("steerlab_version", steerlab_version())
        self.metadata.setdefault("created", _now())
        if "layers_present" in self.metadata:
            self.metadata["layers_present"] = _check_present(self.metadata["layers_present"], self.n_layers)

    # --- shape and access -------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        """Number of rows of ``data`` (for a partial vector, not necessarily the model's layer count)."""
        return self.data.shape[0]

    @property
    def d_model(self) -> int:
        """Width of each direction (the model's hidden size)."""
        return self.data.shape[1]

    @property
    def is_partial(self) -> bool:
        """True when the vector holds directions for only some layers (``metadata["layers_present"]``)."""
        return "layers_present" in self.metadata

    @property
    def layers_present(self) -> list[int]:
        """Layers this vector holds a direction for: every row, or ``metadata["layers_present"]``."""
        if self.is_partial:
            return list(self.metadata["layers_present"])
        return list(range(self.n_layers))

    def _describe(self) -> str:
        source = self.metadata.get("source")
        return str(source) if source else "the vector"

    def __getitem__(self, layer: int) -> torch.Tensor:
        """The direction for layer ``layer``, ``[d_model]``; raises SteerlabError for a layer a
        partial vector does not hold."""
        if self.is_partial and isinstance(layer, int):
            self.check_layers([layer % self.n_layers if -self.n_layers <= layer < 0 else layer])
        return self.data[layer]

    def norms(self) -> torch.Tensor:
        """Per-layer L2 norms, ``[n_layers]``."""
        return self.data.norm(dim=-1)

    def check_layers(self, layers: Sequence[int]) -> None:
        """Raise SteerlabError naming the file and the layers it holds if any of ``layers`` is absent."""
        present = set(self.layers_present)
        absent = [int(layer) for layer in layers if int(layer) not in present]
        if absent:
            raise SteerlabError(
                f"{self._describe()} holds directions only for layers {format_layers(self.layers_present)}; "
                f"layer{'s' if len(absent) > 1 else ''} {format_layers(absent)} "
                f"{'are' if len(absent) > 1 else 'is'} absent (llama.cpp treats absent layers as zero); "
                f"steer layers it holds, e.g. {format_layers(self.layers_present)}"
            )

    def check_compatible(
        self, n_layers: int, d_model: int, what: str = "the model", layers: Sequence[int] | None = None
    ) -> None:
        """Check that the vector fits a model of ``n_layers`` blocks and width ``d_model``.

        A complete vector must have exactly ``n_layers`` rows; a partial one (see the class
        docstring) only needs its highest present layer below ``n_layers``. With ``layers``, each
        must also be held by the vector. Raises SteerlabError naming ``what`` otherwise.
        """
        if self.d_model != d_model:
            raise SteerlabError(
                f"vector d_model {self.d_model} does not match {what}'s d_model {d_model}"
                f"{' (vector made for ' + str(self.metadata.get('model')) + ')' if self.metadata.get('model') else ''}"
            )
        if not self.is_partial:
            if self.n_layers != n_layers:
                raise SteerlabError(f"vector has {self.n_layers} layers but {what} has {n_layers}")
        elif self.layers_present and max(self.layers_present) >= n_layers:
            raise SteerlabError(
                f"{self._describe()} holds directions for layers {format_layers(self.layers_present)} "
                f"but {what} has {n_layers} layers (0..{n_layers - 1})"
            )
        if layers is not None:
            self.check_layers(layers)

    # --- algebra ----------------------------------------------------------------------------
    def _derived(self, data: torch.Tensor, op: str, *others: SteeringVector) -> SteeringVector:
        meta = {k: v for k, v in self.metadata.items() if k not in ("created", "norms", "layers_present")}
        meta["derived"] = op
        present = _union_present([self, *others])
        if present is not None:
            meta["layers_present"] = present
        return SteeringVector(data, meta)

    def _other(self, other: SteeringVector) -> torch.Tensor:
        if not isinstance(other, SteeringVector):
            return NotImplemented  # type: ignore[return-value]
        if other.data.shape != self.data.shape:
            raise SteerlabError(f"shape mismatch: {tuple(self.data.shape)} vs {tuple(other.data.shape)}")
        return other.data

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._derived(self.data + self._other(other), "add", other)

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._derived(self.data - self._other(other), "sub", other)

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
        meta = {
            "method": "blend",
            "sources": [v.metadata.get("method") for v in vectors],
            "weights": [float(w) for w in weights],
            "model": vectors[0].metadata.get("model"),
        }
        present = _union_present(vectors)
        if present is not None:
            meta["layers_present"] = present
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
        persona-vectors ``.pt`` tensor ``[n_layers + 1, d]`` (row 0 = embeddings, dropped).

        Raises:
            SteerlabError: naming the file and what was expected, for a path that is not a regular
                file (missing, a directory, a name too long...), a file that is not of its format
                (truncated, another format), a tensor that is not a floating-point
                ``[n_layers, d_model]`` matrix of finite values, or unusable metadata.
        """
        problem = file_problem(path)
        if problem == FILE_NOT_FOUND:
            raise SteerlabError(f"vector file not found: {path}")
        if problem is not None:
            raise SteerlabError(f"vector file {path}: {problem}")
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".gguf":
            from .gguf import import_gguf

            return import_gguf(path)
        if suffix == ".pt":
            return cls._load_persona_vectors_pt(path)
        return cls._load_safetensors(path)

    @classmethod
    def _load_safetensors(cls, path: Path) -> SteeringVector:
        try:
            with safe_open(str(path), "pt") as f:
                header = f.metadata() or {}
                names = list(f.keys())
                if "vector" not in names:
                    shown = ", ".join(repr(n) for n in sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
                    raise SteerlabError(
                        f"{path}: no tensor named 'vector' (found {len(names)} tensor(s): {shown or 'none'}); "
                        "expected a steering vector saved by steerlab"
                    )
                tensor = f.get_tensor("vector")
        except (SafetensorError, OSError, ValueError, TypeError) as exc:
            raise SteerlabError(
                f"{path}: not a readable .safetensors file ({exc}); expected a steerlab .safetensors vector, "
                "a llama.cpp .gguf control vector or a persona-vectors .pt tensor"
            ) from None
        text = header.get("steerlab", "{}")
        try:
            meta = parse_json(text, "")
        except SteerlabError:
            raise SteerlabError(f"{path}: header field 'steerlab' is not valid JSON") from None
        if not isinstance(meta, dict):
            raise SteerlabError(f"{path}: header field 'steerlab' must be a JSON object, got {json_type(meta)}")
        meta.pop("norms", None)
        if "layers_present" in meta:
            meta["source"] = str(path)
        return cls._from_file(path, tensor, meta)

    @classmethod
    def _from_file(cls, path: Path, tensor: Any, meta: dict[str, Any]) -> SteeringVector:
        """A vector from a file's tensor; every problem a SteerlabError naming ``path``."""
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            got = (
                f"dtype {str(tensor.dtype).removeprefix('torch.')}"
                if isinstance(tensor, torch.Tensor)
                else (type(tensor).__name__)
            )
            raise SteerlabError(f"{path}: expected a floating-point tensor, got {got}")
        try:
            return cls(tensor, meta)
        except SteerlabError as exc:
            raise SteerlabError(f"{path}: {exc}") from None

    @classmethod
    def _load_persona_vectors_pt(cls, path: Path) -> SteeringVector:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling errors of many types on corrupt files
            raise SteerlabError(
                f"{path}: not a readable torch .pt file ({type(exc).__name__}); expected a persona-vectors "
                "tensor [n_layers + 1, d_model] saved with torch.save"
            ) from None
        if not isinstance(data, torch.Tensor) or data.ndim != 2 or data.shape[0] < 2:
            got = f"a tensor of shape {list(data.shape)}" if isinstance(data, torch.Tensor) else type(data).__name__
            raise SteerlabError(
                f"{path}: expected a [n_layers + 1, d_model] tensor (persona-vectors layout), got {got}"
            )
        warnings.warn(
            f"{path}: persona-vectors layout assumed (row 0 = embedding output, dropped)",
            stacklevel=3,
        )
        return cls._from_file(path, data[1:], {"method": "imported", "source": str(path)})

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


def cosine_matrix(a: torch.Tensor, b: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
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
