"""SIGTERM handled like Ctrl-C, so ``finally``/``except`` clean-up runs when a job is terminated.

``kill PID``, a batch scheduler's time limit and ``docker stop`` send SIGTERM, whose default action
ends the process at once: temp files and directories (:mod:`steerlab.io.atomic`) would stay behind.
Inside :func:`sigterm_as_interrupt` SIGTERM raises :class:`Terminated`, a ``KeyboardInterrupt``, so
the same clean-up as for Ctrl-C runs and the process still exits as interrupted.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM received inside :func:`sigterm_as_interrupt` (a ``KeyboardInterrupt``)."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Raise :class:`Terminated` on SIGTERM while the block runs; the previous handler is restored.

    Python delivers signals to the main thread only, so in any other thread this does nothing.
    SIGKILL cannot be caught.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
