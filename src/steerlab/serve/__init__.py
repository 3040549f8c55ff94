"""``steerlab serve``: an OpenAI-compatible HTTP server with per-request steering (see
:mod:`steerlab.serve.app` for the endpoints). Names load lazily, so importing this package (or the
CLI) does not import FastAPI or torch.

- :class:`ServeConfig` (``config``): every setting, defaults written once, shared with the CLI.
- :func:`create_app` (``app``), :func:`serve` / :func:`background_server` (``runner``).
- :class:`APIError` and the request models (``protocol``), :class:`VectorStore` (``store``),
  :class:`Batcher` (``batcher``), :func:`max_positions` (``admission``)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "APIError": "protocol",
    "Batcher": "batcher",
    "ChatCompletionRequest": "protocol",
    "CompletionRequest": "protocol",
    "ServeConfig": "config",
    "SteeringItem": "protocol",
    "VectorStore": "store",
    "background_server": "runner",
    "create_app": "app",
    "max_positions": "admission",
    "serve": "runner",
}

__all__ = [
    "APIError",
    "Batcher",
    "ChatCompletionRequest",
    "CompletionRequest",
    "ServeConfig",
    "SteeringItem",
    "VectorStore",
    "background_server",
    "create_app",
    "max_positions",
    "serve",
]

if TYPE_CHECKING:
    from .admission import max_positions
    from .app import create_app
    from .batcher import Batcher
    from .config import ServeConfig
    from .protocol import APIError, ChatCompletionRequest, CompletionRequest, SteeringItem
    from .runner import background_server, serve
    from .store import VectorStore


def __getattr__(name: str) -> Any:
    """Import an exported name from its module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, exported ones included."""
    return sorted(set(globals()) | set(__all__))
