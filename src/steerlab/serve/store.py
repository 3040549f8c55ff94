"""The vectors directory of a server: every ``*.safetensors`` / ``*.gguf`` in it, listed on demand,
loaded lazily on first use and cached until the file changes on disk (mtime or size). When a stem
exists in both formats, ``.safetensors`` wins."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from ..errors import SteerlabError
from ..model.loading import LoadedModel
from ..vectors.vector import SteeringVector
from .protocol import APIError

VECTOR_SUFFIXES = (".safetensors", ".gguf")


class VectorStore:
    """The vectors directory (``None``: no vectors; every steered request is then refused with 404).
    Safe to use from several threads."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._cache: dict[Path, tuple[tuple[int, int], SteeringVector | SteerlabError]] = {}
        self._lock = threading.Lock()

    def files(self) -> dict[str, Path]:
        """Stem -> file, sorted by stem; ``.safetensors`` wins over ``.gguf`` of the same stem."""
        if self.directory is None or not self.directory.is_dir():
            return {}
        found: dict[str, Path] = {}
        for suffix in reversed(VECTOR_SUFFIXES):
            for path in sorted(self.directory.glob(f"*{suffix}")):
                if path.is_file():
                    found[path.stem] = path
        return dict(sorted(found.items()))

    def _load(self, path: Path) -> SteeringVector | SteerlabError:
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._cache.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        try:
            value: SteeringVector | SteerlabError = SteeringVector.load(path)
        except SteerlabError as exc:
            value = exc
        with self._lock:
            self._cache[path] = (stamp, value)
        return value

    def get(self, name: str, param: str = "vector") -> SteeringVector:
        """The vector whose file stem is ``name``. Raises APIError 404 (``vector_not_found``, listing
        the available names) when there is none, 400 (``invalid_vector``) when the file does not
        load; ``param`` names the request field in the message."""
        files = self.files()
        path = files.get(name)
        if path is None:
            if self.directory is None:
                where = "no vectors directory is configured (start the server with --vectors DIR)"
            else:
                where = (
                    f"available in {self.directory}: {', '.join(files)}"
                    if files
                    else f"{self.directory} holds no .safetensors or .gguf vectors"
                )
            raise APIError(
                404, f"{param}: unknown steering vector {name!r}; {where}", param=param, code="vector_not_found"
            )
        try:
            value = self._load(path)
        except OSError as exc:  # removed between listing and loading
            raise APIError(
                404, f"{param}: vector file {path} cannot be read ({exc})", param=param, code="vector_not_found"
            ) from None
        if isinstance(value, SteerlabError):
            raise APIError(400, f"{param}: {value}", param=param, code="invalid_vector")
        return value

    def describe(self, lm: LoadedModel) -> list[dict[str, Any]]:
        """The ``GET /v1/vectors`` entries: name (stem), file, format, n_layers, d_model, method,
        metadata and whether the vector fits ``lm`` (same n_layers and d_model), or the load error."""
        out = []
        for name, path in self.files().items():
            entry: dict[str, Any] = {
                "id": name,
                "object": "steering_vector",
                "name": name,
                "file": path.name,
                "format": path.suffix.lstrip("."),
            }
            try:
                value = self._load(path)
            except OSError as exc:
                value = SteerlabError(str(exc))
            if isinstance(value, SteerlabError):
                entry.update(error=str(value), compatible=False)
            else:
                entry.update(
                    n_layers=value.n_layers,
                    d_model=value.d_model,
                    method=value.metadata.get("method"),
                    metadata=json.loads(json.dumps(value.metadata, default=str)),
                    compatible=value.n_layers == lm.n_layers and value.d_model == lm.d_model,
                )
            out.append(entry)
        return out
