"""Running the app: :func:`serve` (blocking, as ``steerlab serve`` does) and :func:`background_server`
(on a thread, for tests and benchmarks)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from ..errors import SteerlabError
from ..model.loading import LoadedModel
from .app import create_app
from .config import ServeConfig, make_config

log = logging.getLogger("steerlab.serve")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    lm: LoadedModel | Any,
    vectors_dir: Path | None = None,
    *,
    config: ServeConfig | None = None,
    log_level: str = "info",
    **settings: Any,
) -> None:
    """Serve ``lm`` on ``config.host:config.port`` until interrupted (blocking). Settings as in
    :func:`steerlab.serve.create_app`. Logs a warning when listening beyond loopback without an API key.
    Raises SteerlabError for bad settings."""
    import uvicorn

    cfg = make_config(config, vectors_dir, **settings)
    os.environ.setdefault("STEERLAB_PROGRESS", "0")  # no progress bar per batch
    app = create_app(lm, config=cfg)
    if cfg.api_key is None and not is_loopback(cfg.host):
        log.warning(
            "listening on %s without an API key: anyone who can reach port %d can use the model "
            "(set --api-key or $STEERLAB_API_KEY)",
            cfg.host,
            cfg.port,
        )
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=log_level)


@contextlib.contextmanager
def background_server(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
) -> Iterator[str]:
    """Run ``app`` with uvicorn on a background thread; yields its base URL (``http://host:port``).
    ``port=0`` picks a free port. Raises SteerlabError when it does not start within 60 s. Used by
    the tests and benchmarks."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="steerlab-serve-http", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise SteerlabError(f"the server did not start on {host}:{port}")
            time.sleep(0.01)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()
