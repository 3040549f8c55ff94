"""Run directories: resumable, skippable pipeline stages (SPEC §7).

Each stage writes one artifact atomically. Next to it, ``<artifact>.meta.json`` records the stage's
config hash (inputs + settings), the steerlab version and timings; a stage whose hash matches is
skipped. Item-level work (generation, judging) appends finished items to
``.partial/<stage>.jsonl`` as it goes, so a killed run resumes without redoing finished items.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import SteerlabError
from ..io.atomic import write_json, write_jsonl
from ..version import __version__


def config_hash(config: Any) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_jsonl_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from a kill: everything before it is intact
    return rows


class Stage:
    """One stage of a run: ``artifact`` (a .jsonl or .json file) and its recorded config."""

    def __init__(self, run: RunDir, name: str, artifact: str, config: dict[str, Any]) -> None:
        self.run, self.name, self.config = run, name, config
        self.path = run.path / artifact
        self.meta_path = self.path.with_name(self.path.name + ".meta.json")
        self.partial_path = run.path / ".partial" / f"{name}.jsonl"
        self.hash = config_hash(config)
        self.started = time.perf_counter()

    def done(self) -> bool:
        if not (self.path.exists() and self.meta_path.is_file()):
            return False
        try:
            return json.loads(self.meta_path.read_text())["config_hash"] == self.hash
        except (json.JSONDecodeError, KeyError):
            return False

    def load_rows(self) -> list[dict[str, Any]]:
        return read_jsonl_rows(self.path)

    def load_json(self) -> Any:
        return json.loads(self.path.read_text(encoding="utf-8"))

    def finished_items(self) -> dict[str, dict[str, Any]]:
        """Items finished by an earlier, interrupted attempt with the same config (by ``key``)."""
        if not self.partial_path.is_file():
            return {}
        rows = read_jsonl_rows(self.partial_path)
        if not rows or rows[0].get("config_hash") != self.hash:
            return {}
        return {r["key"]: r for r in rows[1:]}

    def run_items(
        self,
        items: Sequence[dict[str, Any]],
        work: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
        chunk: int,
    ) -> list[dict[str, Any]]:
        """Process ``items`` (each with a unique ``key``) in chunks, appending results to the
        partial file; items finished earlier are reused. Returns results in item order."""
        finished = self.finished_items()
        todo = [item for item in items if item["key"] not in finished]
        self.reused = len(items) - len(todo)
        self.partial_path.parent.mkdir(parents=True, exist_ok=True)
        if not finished:
            self.partial_path.write_text(json.dumps({"config_hash": self.hash}) + "\n")
        with self.partial_path.open("a", encoding="utf-8") as fh:
            for start in range(0, len(todo), chunk):
                for row in work(todo[start : start + chunk]):
                    finished[row["key"]] = row
                    fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                fh.flush()
        return [finished[item["key"]] for item in items]

    def _meta(self, extra: dict[str, Any]) -> dict[str, Any]:
        return {"stage": self.name, "config_hash": self.hash, "config": self.config,
                "steerlab_version": __version__, "seconds": round(time.perf_counter() - self.started, 3),
                **extra}

    def save_rows(self, rows: Iterable[dict[str, Any]], **extra: Any) -> None:
        write_jsonl(self.path, rows)
        self._finish(extra)

    def save_json(self, data: Any, **extra: Any) -> None:
        write_json(self.path, data)
        self._finish(extra)

    def mark_done(self, **extra: Any) -> None:
        """Record completion for an artifact another function already wrote (atomically)."""
        if not self.path.exists():
            raise SteerlabError(f"stage {self.name}: expected artifact {self.path} is missing")
        self._finish(extra)

    def _finish(self, extra: dict[str, Any]) -> None:
        write_json(self.meta_path, self._meta(extra))
        self.partial_path.unlink(missing_ok=True)
        self.run.timings[self.name] = round(time.perf_counter() - self.started, 3)


class RunDir:
    """A pipeline run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise SteerlabError(f"--out {self.path}: exists and is not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}

    def stage(self, name: str, artifact: str, config: dict[str, Any]) -> Stage:
        return Stage(self, name, artifact, config)
