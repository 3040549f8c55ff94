"""Run directories: resumable, skippable pipeline stages (docs/design.md §9).

A run is a directory; each :class:`Stage` produces one artifact in it, written atomically, and
records its completion in a meta file holding the stage's config hash (the config itself: inputs and
settings), the steerlab version, timings and, for a file artifact, the artifact's SHA-256. A stage
whose recorded hash equals the current one (and whose file artifact still has the recorded digest)
is done and is skipped; any other config, or a truncated or edited artifact, recomputes it. A marker
or partial file that cannot be read counts as absent; a finished artifact that cannot be parsed
(possible only under a marker written before digests were recorded) is a SteerlabError naming it.
Where the meta file lives:

- a file artifact ``A`` (``.json``/``.jsonl``...): ``A.meta.json`` beside it;
- a directory artifact ``D`` (``directory=True``): ``D/stage.meta.json`` inside it, so replacing the
  directory (:func:`steerlab.io.atomic.atomic_dir`) removes the old marker with the old contents.

Item-level work (generation, judging) goes through :meth:`Stage.run_items`, which appends finished
items to ``.partial/<stage>.jsonl`` as it goes (first line: the config hash), so a killed run resumes
without redoing finished items; a torn last line from a kill is dropped.

**One call per stage.** :meth:`RunDir.cached` is the way to run a stage: it loads the artifact when
the stage is done, and otherwise withdraws the old marker, computes, saves and marks it done::

    directions = run.cached(
        "compare", "directions.json", {"vectors": vectors.hash}, lambda stage: compare(...),
        settings=config, ignore=("rank", "epochs", ...),   # config fields this stage does not read
    )
    directions.value, directions.hash   # the document, and the hash later stages depend on

What a stage hashes: its ``config`` (the inputs: data, upstream stages' hashes, the model's
fingerprint), always whole, plus every field of its ``settings`` dataclass (merged in as top-level
keys, nested dataclasses as dicts) except the fields named in ``ignore`` — declared at the stage's
one call, each a field that cannot change the artifact (it only matters to other stages, or it is
already covered by an input's hash, or it changes results by float rounding only, like a batch
size). So a new setting makes old runs recompute until someone declares it irrelevant; never the
reverse. The marker records the hashed config and the ignored fields.

Asking whether a stage is done (:meth:`Stage.done`) changes nothing; :meth:`Stage.invalidate` (called
by :meth:`RunDir.cached` before computing) removes a stale marker, so a recompute killed half-way
never leaves new files under the old config's marker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..errors import SteerlabError
from ..version import __version__
from .atomic import write_json, write_jsonl
from .files import (
    IS_DIRECTORY,
    file_problem,
    input_file,
    iter_lines,
    json_type,
    name_problem,
    os_error_reason,
    parse_json,
    read_json,
)

DIR_META = "stage.meta.json"
log = logging.getLogger("steerlab")
T = TypeVar("T")


_RECOMPUTE = "; delete it (or the run directory) to recompute it"


def json_sha256(obj: Any) -> str:
    """SHA-256 (hex) of ``obj`` as canonical JSON (sorted keys; other values through ``str``): equal
    values give equal hashes across processes and runs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def config_hash(config: Any) -> str:
    """A stage's config hash: the first 16 hex digits of :func:`json_sha256` of ``config``."""
    return json_sha256(config)[:16]


def _plain(value: Any) -> Any:
    """``value`` with dataclasses as dicts (recursively), for hashing and the marker."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def stage_config(config: Mapping[str, Any], settings: Any = None, ignore: Iterable[str] = ()) -> dict[str, Any]:
    """What a stage hashes: ``config`` (inputs) whole, merged with every field of ``settings`` (a
    dataclass or mapping) except those in ``ignore`` (field names; ``"a.b"`` for field b of the
    nested settings a). See the module docstring.

    Raises:
        ValueError: an ignored name that is not a field of ``settings``, or a settings field that
            is also an input (a programming error, not bad input).
    """
    merged = _plain(dict(config))
    fields = _plain(settings) if settings is not None else {}
    for name in ignore:
        *parents, leaf = name.split(".")
        holder = fields
        for part in parents:
            holder = holder.get(part) if isinstance(holder, dict) else None
        if not isinstance(holder, dict) or leaf not in holder:
            raise ValueError(f"stage settings have no field {name!r} to ignore")
        del holder[leaf]
    clash = sorted(set(fields) & set(merged))
    if clash:
        raise ValueError(f"stage settings fields {clash} are also inputs: ignore them or rename the input")
    return {**merged, **fields}


def read_jsonl_rows(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON Lines file, blank lines skipped, up to the first line that is not
    one (a torn last line from a kill, which may end inside a UTF-8 character: everything before it
    is intact). Lenient by design, for partial results and reports; see :meth:`Stage.load_rows` for
    finished artifacts.

    Raises:
        SteerlabError: ``path`` is not a readable regular file.
    """
    rows = []
    try:
        data = input_file(path, "run file").read_bytes()
    except OSError as exc:
        raise SteerlabError(f"run file {path}: cannot read it ({exc.strerror or exc})") from None
    for raw in data.split(b"\n"):
        try:
            line = raw.decode("utf-8")
            if not line.strip():
                continue
            row = parse_json(line, str(path), 1)
        except (UnicodeDecodeError, SteerlabError):
            break
        if not isinstance(row, dict):
            break
        rows.append(row)
    return rows


def file_digest(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Stage:
    """One stage of a run: its ``artifact`` (a file, or a directory with ``directory=True``), the
    ``config`` that determines it, and where its completion marker and partial results live.

    Attributes: ``path`` (the artifact), ``meta_path`` (the completion marker), ``partial_path``
    (``.partial/<name>.jsonl``), ``config`` (what is hashed: :func:`stage_config` of the inputs,
    ``settings`` and ``ignore``), ``hash`` (:func:`config_hash` of it), and after :meth:`run_items`,
    ``reused`` (how many items an earlier attempt had finished). Run it with :meth:`cached`.
    """

    def __init__(
        self,
        run: RunDir,
        name: str,
        artifact: str,
        config: Mapping[str, Any],
        *,
        directory: bool = False,
        settings: Any = None,
        ignore: Iterable[str] = (),
    ) -> None:
        self.ignored = sorted(ignore)
        self.run, self.name, self.directory = run, name, directory
        self.config = stage_config(config, settings, self.ignored)
        self.path = run.path / artifact
        self.meta_path = self.path / DIR_META if directory else self.path.with_name(self.path.name + ".meta.json")
        self.partial_path = run.path / ".partial" / f"{name}.jsonl"
        self.hash = config_hash(self.config)
        self.started = time.perf_counter()
        self.reused = 0

    def done(self, beside: Iterable[str | Path] = ()) -> bool:
        """Whether the artifact exists and was made with this config (recorded hash == ``hash``),
        for a file artifact is byte for byte what the stage wrote (its recorded SHA-256: a truncated
        or edited artifact is recomputed, with a warning), and the files ``beside`` it (paths
        relative to the run directory, written by the stage before its artifact) exist.

        A marker that cannot be read (not UTF-8, not JSON, not an object) counts as absent. Asking
        changes nothing; see :meth:`invalidate`.

        Raises:
            SteerlabError: the artifact or its marker is the wrong kind of file (a directory where
                a file belongs, or the reverse).
        """
        self._check_paths()
        meta = self._recorded()
        return (
            meta is not None
            and meta.get("config_hash") == self.hash
            and self._artifact_intact(meta)
            and all((self.run.path / p).is_file() for p in beside)
        )

    def invalidate(self) -> None:
        """Withdraw the completion marker of a file artifact, before recomputing it: a kill half-way
        through writing new contents (the artifact, or files beside it) must not leave them under
        the old config's marker. A directory artifact's marker lives inside it and goes with the old
        contents when the directory is replaced, so it is kept."""
        if not self.directory:
            self.meta_path.unlink(missing_ok=True)

    def cached(
        self, compute: Callable[[Stage], T], codec: Codec[T] | None = None, beside: Iterable[str | Path] = ()
    ) -> Cached[T]:
        """Run the stage: load its artifact when :meth:`done` (with ``beside``), else
        :meth:`invalidate`, ``compute(stage)`` (which may use :meth:`run_items` and write the files
        ``beside``), save the value with ``codec`` (default :data:`JSON`) and mark the stage done.
        Returns a :class:`Cached` (value, hash, path, whether it was reused)."""
        codec = codec or JSON
        beside = list(beside)
        if self.done(beside):
            return Cached(codec.load(self), self.hash, self.path, True)
        self.invalidate()
        value = compute(self)
        codec.save(self, value)
        return Cached(value, self.hash, self.path, False)

    def _check_paths(self) -> None:
        """Refuse a run directory where the artifact or its marker is the wrong kind of thing (a
        directory where a file belongs, or the reverse): it cannot be replaced atomically."""
        for path, want_dir in ((self.path, self.directory), (self.meta_path, False)):
            problem = file_problem(path)
            is_dir, is_file = problem == IS_DIRECTORY, problem is None
            if (is_dir and not want_dir) or (is_file and want_dir) or problem == "not a regular file":
                kind = "a directory" if want_dir else "a file"
                raise SteerlabError(f"stage {self.name}: {path} should be {kind} but is not; remove it to recompute")

    def _recorded(self) -> dict[str, Any] | None:
        """The completion marker's content, or None when it is absent or unreadable."""
        try:
            meta = read_json(self.meta_path, "stage marker")
        except SteerlabError:
            return None
        return meta if isinstance(meta, dict) else None

    def _artifact_intact(self, meta: dict[str, Any]) -> bool:
        if self.directory:
            return self.path.is_dir()
        if not self.path.is_file():
            return False
        recorded = meta.get("artifact_sha256")
        if recorded is None:  # a marker written before digests were recorded
            return True
        try:
            if file_digest(self.path) == recorded:
                return True
        except OSError:
            pass
        log.warning(
            "%s does not match what stage %s wrote (changed or truncated since); recomputing it", self.path, self.name
        )
        return False

    def load_rows(self) -> list[dict[str, Any]]:
        """The rows of a finished JSON Lines artifact.

        Raises:
            SteerlabError: naming the file, when it is not UTF-8 JSON Lines of objects (delete it,
                or the run directory, to recompute).
        """
        rows = []
        try:
            for number, line in iter_lines(self.path, f"stage {self.name}: artifact"):
                if line.strip():
                    row = parse_json(line, str(self.path), number)
                    if not isinstance(row, dict):
                        raise SteerlabError(f"{self.path}:{number}: expected a JSON object, got {json_type(row)}")
                    rows.append(row)
        except SteerlabError as exc:
            raise SteerlabError(f"{exc}{_RECOMPUTE}") from None
        return rows

    def load_json(self) -> Any:
        """The content of a finished JSON artifact.

        Raises:
            SteerlabError: naming the file, when it is not UTF-8 JSON (delete it, or the run
                directory, to recompute).
        """
        try:
            return read_json(self.path, f"stage {self.name}: artifact")
        except SteerlabError as exc:
            raise SteerlabError(f"{exc}{_RECOMPUTE}") from None

    def finished_items(self) -> dict[str, dict[str, Any]]:
        """Items finished by an earlier, interrupted attempt with the same config (by ``key``).

        The partial file is a cache: when it cannot be read, or was written for another config,
        nothing is reused; rows without a ``key`` (a string or number) are dropped.
        """
        try:
            rows = read_jsonl_rows(self.partial_path)
        except SteerlabError:
            return {}
        if not rows or rows[0].get("config_hash") != self.hash:
            return {}
        return {r["key"]: r for r in rows[1:] if isinstance(r.get("key"), str | int | float)}

    def run_items(
        self,
        items: Sequence[dict[str, Any]],
        work: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
        chunk: int,
    ) -> list[dict[str, Any]]:
        """Process ``items`` (each with a unique ``key``) in chunks of ``chunk``, appending each
        chunk's results (rows with the item's ``key``) to the partial file; items finished by an
        earlier attempt with the same config are reused, not passed to ``work``. Sets ``reused``.

        Returns one result row per item, in item order.
        """
        finished = self.finished_items()
        todo = [item for item in items if item["key"] not in finished]
        self.reused = len(items) - len(todo)
        # Start the partial file afresh with the rows kept: a line torn by a kill is dropped here,
        # so rows appended from now on stay readable.
        write_jsonl(self.partial_path, [{"config_hash": self.hash}, *finished.values()])
        with self.partial_path.open("a", encoding="utf-8") as fh:
            for start in range(0, len(todo), chunk):
                for row in work(todo[start : start + chunk]):
                    finished[row["key"]] = row
                    fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                fh.flush()
        return [finished[item["key"]] for item in items]

    def _meta(self, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "stage": self.name,
            "config_hash": self.hash,
            "config": self.config,
            **({"ignored": self.ignored} if self.ignored else {}),
            "steerlab_version": __version__,
            "seconds": round(time.perf_counter() - self.started, 3),
            **extra,
        }

    def save_rows(self, rows: Iterable[dict[str, Any]], **extra: Any) -> None:
        """Write the artifact as JSON Lines (atomically) and mark the stage done (``extra`` goes
        into the meta file)."""
        write_jsonl(self.path, rows)
        self._finish(extra)

    def save_json(self, data: Any, **extra: Any) -> None:
        """Write the artifact as JSON (atomically) and mark the stage done (``extra`` goes into the
        meta file)."""
        write_json(self.path, data)
        self._finish(extra)

    def mark_done(self, **extra: Any) -> None:
        """Record completion for an artifact another function already wrote (atomically).

        Raises:
            SteerlabError: the artifact (a directory for a directory stage) is missing.
        """
        present = self.path.is_dir() if self.directory else self.path.is_file()
        if not present:
            kind = "directory" if self.directory else "file"
            raise SteerlabError(f"stage {self.name}: expected artifact {kind} {self.path} is missing")
        self._finish(extra)

    def _finish(self, extra: dict[str, Any]) -> None:
        if not self.directory:
            extra = {**extra, "artifact_sha256": file_digest(self.path)}
        write_json(self.meta_path, self._meta(extra))
        self.partial_path.unlink(missing_ok=True)
        self.run.timings[self.name] = round(time.perf_counter() - self.started, 3)


class RunDir:
    """A pipeline run directory (created if missing); ``timings`` holds the seconds of each stage
    completed in this process, by stage name.

    Raises:
        SteerlabError: ``path`` exists and is not a directory.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        problem = file_problem(self.path)
        if problem is None or problem == "not a regular file":
            raise SteerlabError(f"--out {self.path}: exists and is not a directory")
        if problem != IS_DIRECTORY:
            unusable = name_problem(self.path)
            if unusable:  # refused before creating any parent
                raise SteerlabError(f"--out {self.path}: cannot create the run directory ({unusable})")
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except (OSError, ValueError) as exc:
                raise SteerlabError(
                    f"--out {self.path}: cannot create the run directory ({os_error_reason(exc, self.path)})"
                ) from None
        self.timings: dict[str, float] = {}

    def input_path(self, path: str | Path) -> str:
        """``path`` as a stage input: relative to the run directory when it lies inside it (so a run
        directory moved or copied elsewhere keeps its finished stages), else absolute."""
        resolved = Path(path).resolve()
        try:
            return resolved.relative_to(self.path.resolve()).as_posix()
        except ValueError:
            return str(resolved)

    def stage(
        self,
        name: str,
        artifact: str,
        config: Mapping[str, Any],
        *,
        directory: bool = False,
        settings: Any = None,
        ignore: Iterable[str] = (),
    ) -> Stage:
        """The stage ``name`` whose artifact is ``artifact`` (relative to the run directory) and
        whose completion depends on ``config`` and ``settings`` less ``ignore`` (see
        :func:`stage_config`). Nothing is read or written until it runs."""
        return Stage(self, name, artifact, config, directory=directory, settings=settings, ignore=ignore)

    def cached(
        self,
        name: str,
        artifact: str,
        config: Mapping[str, Any],
        compute: Callable[[Stage], T],
        *,
        codec: Codec[T] | None = None,
        settings: Any = None,
        ignore: Iterable[str] = (),
        beside: Iterable[str | Path] = (),
        directory: bool = False,
    ) -> Cached[T]:
        """A stage in one call: its artifact loaded when it is done, else computed and saved.

        Args:
            name: the stage's name (its timing key and partial file).
            artifact: the artifact's path relative to the run directory.
            config: the inputs the artifact depends on (data, hashes of earlier stages, the model),
                all hashed.
            compute: ``compute(stage) -> value``; it may checkpoint items with
                ``stage.run_items`` and write the files ``beside``.
            codec: how the value is saved and loaded: :data:`JSON` (default), :data:`ROWS` (JSON
                Lines), or a :class:`Codec` of your own (e.g. a CSV written then ``mark_done``).
            settings: the pipeline's config dataclass: every field is hashed...
            ignore: ...except these, which cannot change this artifact (declared here, once).
            beside: files the stage writes next to its artifact; it is done only when they exist.
            directory: the artifact is a directory (its marker inside it).

        Returns:
            :class:`Cached`: ``value``, ``hash`` (for the configs of later stages), ``path`` and
            ``reused`` (True when loaded from an earlier run).
        """
        stage = self.stage(name, artifact, config, directory=directory, settings=settings, ignore=ignore)
        return stage.cached(compute, codec, beside)


@dataclass(frozen=True)
class Codec(Generic[T]):
    """How a stage's value is saved (``save(stage, value)``, which must mark the stage done) and
    loaded back (``load(stage)``)."""

    load: Callable[[Stage], T]
    save: Callable[[Stage, T], None]


@dataclass(frozen=True)
class Cached(Generic[T]):
    """A stage's value, its config ``hash``, its artifact ``path`` and whether it was ``reused``."""

    value: T
    hash: str
    path: Path
    reused: bool


JSON: Codec[Any] = Codec(Stage.load_json, lambda stage, value: stage.save_json(value))
ROWS: Codec[list[dict[str, Any]]] = Codec(
    Stage.load_rows, lambda stage, rows: stage.save_rows(rows, reused_items=stage.reused)
)
