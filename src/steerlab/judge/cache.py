"""The judge's on-disk answer cache: one sqlite table keyed by sha256(judge identity, prompt).

A rerun with the same judge and prompts makes no request and no forward pass. The cache keeps the
expected score and the probability mass on numbers, not the thresholded score, so the threshold
(``min_mass``) is applied when reading. Failed requests (``JudgeResult.cacheable`` False) are not
stored; a ``None`` that the judge itself produced (too little mass on numbers) is.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import SteerlabError
from ..model import embedded
from .score import JudgeResult


class ScoreCache:
    """Judge answers on disk: ``<directory>/judge.sqlite``, keyed by sha256(judge identity, prompt).

    Thread-safe (one connection behind a lock). Raises SteerlabError naming the file when it cannot
    be opened.
    """

    def __init__(self, directory: str | os.PathLike[str]):
        self.path = Path(directory) / "judge.sqlite"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
            with self._conn:
                self._conn.execute(
                    "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, judge TEXT, "
                    "expected REAL, mass REAL, created REAL)"
                )
        except (OSError, sqlite3.Error) as exc:
            raise SteerlabError(f"judge cache {self.path}: cannot open it ({exc})") from None
        self._lock = threading.Lock()

    @staticmethod
    def key(identity: str, prompt: str) -> str:
        """The row key: sha256 hex digest of ``identity``, a NUL byte and ``prompt``."""
        return hashlib.sha256(f"{identity}\x00{prompt}".encode()).hexdigest()

    def get_many(self, identity: str, prompts: Sequence[str]) -> dict[str, JudgeResult]:
        """Cached results by prompt for those ``prompts`` the cache holds (score not yet thresholded)."""
        keys = {self.key(identity, p): p for p in prompts}
        found: dict[str, JudgeResult] = {}
        items = list(keys)
        with self._lock:
            for start in range(0, len(items), 500):
                chunk = items[start : start + 500]
                rows = self._conn.execute(
                    f"SELECT key, expected, mass FROM answers WHERE key IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                for key, expected, mass in rows:
                    found[keys[key]] = JudgeResult(None, mass, expected)
        return found

    def put_many(self, identity: str, results: Mapping[str, JudgeResult]) -> None:
        """Store ``{prompt: result}`` for the cacheable results (replacing older rows)."""
        rows = [
            (self.key(identity, p), identity, r.expected, r.mass, time.time())
            for p, r in results.items()
            if r.cacheable
        ]
        if not rows:
            return
        with self._lock, self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        """Close the sqlite connection."""
        self._conn.close()


def default_cache_dir() -> Path:
    """``<steerlab cache>/judge``: where judges cache their answers unless told otherwise."""
    return embedded.cache_dir() / "judge"
