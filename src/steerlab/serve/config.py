"""The settings of ``steerlab serve``, defaults written once: the CLI's flags and ``create_app`` both use
:class:`ServeConfig`. This module imports nothing heavy, so ``steerlab --help`` stays fast."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SteerlabError

API_KEY_ENV = "STEERLAB_API_KEY"


def env_api_key() -> str | None:
    """The API key from ``$STEERLAB_API_KEY`` (None when unset or empty)."""
    return os.environ.get(API_KEY_ENV) or None


@dataclass(frozen=True)
class ServeConfig:
    """Every setting of the server; each field is the CLI flag of the same name (``max_batch`` is
    ``--max-batch``). Token counts are tokens of the served model's tokenizer.

    - ``vectors_dir``: directory of ``*.safetensors`` / ``*.gguf`` steering vectors (None: no steering).
    - ``host``, ``port``: where :func:`steerlab.serve.serve` listens; 127.0.0.1 (loopback only) by default.
    - ``max_batch``: most rows (prompts x ``n``) generated together; a request with more is refused.
    - ``batch_window_ms``: how long the worker waits for more requests (at most 5 windows), milliseconds.
    - ``max_context``: prompt + ``max_tokens`` limit (None: the model's context length; the smaller wins).
    - ``default_max_tokens``: a chat request's ``max_tokens`` when it gives none (completions: 16).
    - ``api_key``: when set, every request but ``GET /health`` needs ``Authorization: Bearer <key>``
      (401 otherwise). Default: ``$STEERLAB_API_KEY``; pass ``api_key=None`` to serve without a key.
    - ``max_queue``: most accepted requests waiting for the model; beyond it 429 with ``Retry-After``.
    - ``max_prompt_tokens``: longest prompt, tokens (each prompt of a completions list on its own).
    - ``max_tokens_limit``: largest ``max_tokens`` (chat: ``max_completion_tokens``) a request may ask for.
    - ``max_n``: largest ``n`` (choices per prompt).
    - ``max_steering_items``: most items in a request's ``steering`` list.

    Raises SteerlabError naming the flag when a value is out of range or ``vectors_dir`` is not a directory."""

    vectors_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32
    batch_window_ms: float = 10.0
    max_context: int | None = None
    default_max_tokens: int = 256
    api_key: str | None = field(default_factory=env_api_key, repr=False)
    max_queue: int = 64
    max_prompt_tokens: int = 4096
    max_tokens_limit: int = 2048
    max_n: int = 16
    max_steering_items: int = 8

    def __post_init__(self) -> None:
        if self.vectors_dir is not None:
            object.__setattr__(self, "vectors_dir", Path(self.vectors_dir))
            if not self.vectors_dir.is_dir():
                raise SteerlabError(f"--vectors {self.vectors_dir}: not a directory")
        at_least = {
            "max_batch": 1,
            "max_queue": 1,
            "max_prompt_tokens": 1,
            "max_tokens_limit": 1,
            "max_n": 1,
            "max_steering_items": 0,
            "default_max_tokens": 1,
        }
        for name, low in at_least.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SteerlabError(f"{flag(name)} {value!r}: expected an integer of at least {low}")
        if self.max_context is not None and (not isinstance(self.max_context, int) or self.max_context < 2):
            raise SteerlabError(f"--max-context {self.max_context!r}: expected at least 2 tokens")
        if not self.batch_window_ms >= 0:  # also NaN
            raise SteerlabError(f"--batch-window-ms {self.batch_window_ms!r}: expected a number >= 0")
        if self.default_max_tokens > self.max_tokens_limit:
            raise SteerlabError(
                f"--default-max-tokens {self.default_max_tokens}: expected at most "
                f"--max-tokens-limit {self.max_tokens_limit}"
            )
        if not 0 <= self.port <= 65535:
            raise SteerlabError(f"--port {self.port}: expected 0..65535")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()):
            raise SteerlabError(
                f"--api-key: expected a non-empty key (or none, to serve without one; ${API_KEY_ENV} sets it too)"
            )

    def replace(self, **changes: object) -> ServeConfig:
        """A copy with ``changes`` applied (validated again). Raises SteerlabError naming an unknown
        setting or a value out of range."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise SteerlabError(
                f"unknown serve setting(s) {', '.join(unknown)}; expected one of {', '.join(sorted(names))}"
            )
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def flag(name: str) -> str:
    """The CLI flag of a :class:`ServeConfig` field: ``max_n`` -> ``--max-n`` (``vectors_dir`` -> ``--vectors``)."""
    return "--vectors" if name == "vectors_dir" else "--" + name.replace("_", "-")


DEFAULTS = ServeConfig(api_key=None)
"""The defaults (without the environment's API key), for the CLI's help."""


def make_config(config: ServeConfig | None = None, vectors_dir: Path | None = None, **settings: object) -> ServeConfig:
    """``config`` (default: ``ServeConfig()``) with ``vectors_dir`` (when given) and ``settings`` (field
    names) applied. Raises SteerlabError naming an unknown setting or a value out of range."""
    config = config if config is not None else ServeConfig()
    if vectors_dir is not None:
        settings["vectors_dir"] = vectors_dir
    return config.replace(**settings) if settings else config
