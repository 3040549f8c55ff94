"""The resume contract of run directories (docs/design.md §9): skip on the same config, recompute on another,
reuse finished items after a kill, never trust a marker that does not match its artifact."""

import json

import pytest

from steerlab.errors import SteerlabError
from steerlab.io.runs import ROWS, RunDir, config_hash, read_jsonl_rows


def test_config_hash_is_the_config_itself():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2}) and len(config_hash({})) == 16


def test_stage_is_skipped_on_the_same_config_and_redone_on_another(tmp_path):
    run = RunDir(tmp_path / "run")
    stage = run.stage("scores", "scores.json", {"n": 3})
    assert not stage.done()
    stage.save_json({"mean": 0.5}, note="first")
    assert run.timings["scores"] >= 0
    meta = json.loads((tmp_path / "run" / "scores.json.meta.json").read_text())
    assert meta["config"] == {"n": 3} and meta["config_hash"] == stage.hash and meta["note"] == "first"
    assert meta["stage"] == "scores" and meta["steerlab_version"]

    again = RunDir(tmp_path / "run").stage("scores", "scores.json", {"n": 3})
    assert again.done() and again.load_json() == {"mean": 0.5}
    changed = RunDir(tmp_path / "run").stage("scores", "scores.json", {"n": 4})
    assert not changed.done()
    changed.save_json({"mean": 0.7})
    assert changed.done() and not RunDir(tmp_path / "run").stage("scores", "scores.json", {"n": 3}).done()


def test_a_stale_marker_never_vouches_for_new_contents(tmp_path):
    """A recompute killed after writing the new artifact but before its marker must not leave the new
    contents looking finished for the old config."""
    run = RunDir(tmp_path)
    run.stage("rows", "rows.jsonl", {"v": 1}).save_rows([{"x": 1}])
    newer = run.stage("rows", "rows.jsonl", {"v": 2})
    assert not newer.done()
    assert run.stage("rows", "rows.jsonl", {"v": 1}).done()  # asking whether a stage is done changes nothing
    newer.invalidate()  # about to recompute: the old marker goes now
    (tmp_path / "rows.jsonl").write_text('{"x": 2}\n')  # the new artifact is written, then a kill
    assert not run.stage("rows", "rows.jsonl", {"v": 1}).done()


def test_cached_runs_a_stage_in_one_call(tmp_path):
    """Load when done, else withdraw the old marker, compute (files beside first), save and mark done."""
    run = RunDir(tmp_path)
    calls = []

    def compute(stage):
        calls.append(stage.name)
        (tmp_path / "beside.txt").write_text("made with the stage")
        return {"n": len(calls)}

    first = run.cached("doc", "doc.json", {"v": 1}, compute, beside=["beside.txt"])
    assert first.value == {"n": 1} and not first.reused and first.path == tmp_path / "doc.json"
    again = run.cached("doc", "doc.json", {"v": 1}, compute, beside=["beside.txt"])
    assert again.value == {"n": 1} and again.reused and again.hash == first.hash and calls == ["doc"]
    (tmp_path / "beside.txt").unlink()  # a file the stage wrote beside its artifact is gone: recompute
    assert run.cached("doc", "doc.json", {"v": 1}, compute, beside=["beside.txt"]).value == {"n": 2}

    def killed(stage):
        (tmp_path / "beside.txt").write_text("new contents, then a kill")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run.cached("doc", "doc.json", {"v": 2}, killed, beside=["beside.txt"])
    # the old marker was withdrawn before the new files were written: nothing vouches for them
    assert not run.stage("doc", "doc.json", {"v": 1}).done(["beside.txt"])
    rows = run.cached("rows", "rows.jsonl", {"v": 1}, lambda s: [{"key": "a"}], codec=ROWS)
    assert rows.value == [{"key": "a"}] and run.stage("rows", "rows.jsonl", {"v": 1}).load_rows() == rows.value


def test_a_stage_hashes_its_settings_but_the_fields_declared_irrelevant(tmp_path):
    from dataclasses import dataclass, field

    @dataclass
    class Inner:
        n_bootstrap: int = 1000
        coeffs: list = field(default_factory=lambda: [1.0])

    @dataclass
    class Settings:
        seed: int = 0
        batch_size: int = 16
        inner: Inner = field(default_factory=Inner)

    run = RunDir(tmp_path)
    stage = run.stage("s", "s.json", {"data": [1, 2]}, settings=Settings(), ignore=("batch_size", "inner.coeffs"))
    assert stage.config == {"data": [1, 2], "seed": 0, "inner": {"n_bootstrap": 1000}}
    assert stage.hash == config_hash({"data": [1, 2], "seed": 0, "inner": {"n_bootstrap": 1000}})
    same = run.stage(
        "s", "s.json", {"data": [1, 2]}, settings=Settings(batch_size=4), ignore=("batch_size", "inner.coeffs")
    )
    assert same.hash == stage.hash  # an ignored field changes nothing...
    other = run.stage("s", "s.json", {"data": [1, 2]}, settings=Settings(seed=1), ignore=("batch_size", "inner.coeffs"))
    assert other.hash != stage.hash  # ...every other field does
    stage.save_json({})
    assert json.loads(stage.meta_path.read_text())["ignored"] == ["batch_size", "inner.coeffs"]
    with pytest.raises(ValueError, match="no field 'batchsize'"):
        run.stage("s", "s.json", {}, settings=Settings(), ignore=("batchsize",))
    with pytest.raises(ValueError, match=r"\['seed'\] are also inputs"):
        run.stage("s", "s.json", {"seed": 3}, settings=Settings())


def test_missing_artifact_or_torn_marker_is_not_done(tmp_path):
    run = RunDir(tmp_path)
    stage = run.stage("rows", "rows.jsonl", {"v": 1})
    stage.save_rows([{"x": 1}, {"x": 2}])
    assert stage.load_rows() == [{"x": 1}, {"x": 2}]
    (tmp_path / "rows.jsonl").unlink()
    assert not run.stage("rows", "rows.jsonl", {"v": 1}).done()
    stage.save_rows([{"x": 1}])
    (tmp_path / "rows.jsonl.meta.json").write_text('{"config_hash": ')
    assert not run.stage("rows", "rows.jsonl", {"v": 1}).done()


def test_run_items_reuses_finished_items_after_a_kill_with_a_torn_last_line(tmp_path):
    items = [{"key": f"q{i}", "text": f"question {i}"} for i in range(7)]
    seen = []
    kill_at = ["q4"]

    def work(chunk):
        seen.extend(item["key"] for item in chunk)
        if any(item["key"] in kill_at for item in chunk):
            raise KeyboardInterrupt  # killed in the third chunk
        return [{"key": item["key"], "answer": item["text"].upper()} for item in chunk]

    stage = RunDir(tmp_path).stage("answers", "answers.jsonl", {"model": "m"})
    with pytest.raises(KeyboardInterrupt):
        stage.run_items(items, work, chunk=2)
    partial = tmp_path / ".partial" / "answers.jsonl"
    with partial.open("a") as fh:
        fh.write('{"key": "q4", "answ')  # the kill tore the line being written
    assert [r["key"] for r in read_jsonl_rows(partial)[1:]] == ["q0", "q1", "q2", "q3"]

    seen.clear()
    kill_at[:] = ["q6"]  # killed again, in the chunk after the one that followed the torn line
    resumed = RunDir(tmp_path).stage("answers", "answers.jsonl", {"model": "m"})
    assert sorted(resumed.finished_items()) == ["q0", "q1", "q2", "q3"]
    with pytest.raises(KeyboardInterrupt):
        resumed.run_items(items, work, chunk=2)
    assert seen == ["q4", "q5", "q6"]
    assert [r["key"] for r in read_jsonl_rows(partial)[1:]] == ["q0", "q1", "q2", "q3", "q4", "q5"]

    seen.clear()
    kill_at.clear()
    resumed = RunDir(tmp_path).stage("answers", "answers.jsonl", {"model": "m"})
    rows = resumed.run_items(items, work, chunk=2)
    assert seen == ["q6"] and resumed.reused == 6
    assert [r["key"] for r in rows] == [i["key"] for i in items]
    assert [r["answer"] for r in rows] == [i["text"].upper() for i in items]
    resumed.save_rows(rows)
    assert not partial.exists() and resumed.load_rows() == rows


def test_run_items_ignores_partial_results_of_another_config(tmp_path):
    items = [{"key": "a"}, {"key": "b"}]
    first = RunDir(tmp_path).stage("s", "s.jsonl", {"v": 1})
    first.run_items(items[:1], lambda chunk: [{"key": i["key"], "v": 1} for i in chunk], chunk=1)
    other = RunDir(tmp_path).stage("s", "s.jsonl", {"v": 2})
    assert other.finished_items() == {}
    rows = other.run_items(items, lambda chunk: [{"key": i["key"], "v": 2} for i in chunk], chunk=1)
    assert rows == [{"key": "a", "v": 2}, {"key": "b", "v": 2}] and other.reused == 0


def test_mark_done_errors_when_the_artifact_is_missing(tmp_path):
    run = RunDir(tmp_path)
    stage = run.stage("vectors", "vectors/manifest.json", {"v": 1})
    with pytest.raises(SteerlabError, match=r"stage vectors: expected artifact file .*manifest.json is missing"):
        stage.mark_done()
    assert not stage.meta_path.exists()
    folder = run.stage("adapter", "adapter", {"v": 1}, directory=True)
    (tmp_path / "adapter").write_text("not a directory")
    with pytest.raises(SteerlabError, match=r"stage adapter: expected artifact directory .*adapter is missing"):
        folder.mark_done()
    stage.path.parent.mkdir()
    stage.path.write_text("{}")
    stage.mark_done(n=2)
    assert stage.done() and json.loads(stage.meta_path.read_text())["n"] == 2


def test_directory_stage_keeps_its_marker_inside(tmp_path):
    """A directory artifact carries its marker: replacing the directory replaces the marker."""
    run = RunDir(tmp_path)
    stage = run.stage("adapter", "adapter", {"rank": 8}, directory=True)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "weights.bin").write_bytes(b"w8")
    stage.mark_done()
    assert stage.meta_path == tmp_path / "adapter" / "stage.meta.json" and stage.done()
    other = run.stage("adapter", "adapter", {"rank": 4}, directory=True)
    assert not other.done() and stage.meta_path.is_file()  # the old adapter stays finished until replaced
    assert run.stage("adapter", "adapter", {"rank": 8}, directory=True).done()


def test_run_dir_on_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SteerlabError, match=r"--out .*f: exists and is not a directory"):
        RunDir(tmp_path / "f")


def test_read_jsonl_rows_stops_at_a_torn_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3, "b\n')
    assert read_jsonl_rows(path) == [{"a": 1}, {"a": 2}]


def test_input_paths_inside_a_run_are_relative_to_it(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.input_path(tmp_path / "run" / "adapter") == "adapter"
    assert run.input_path(tmp_path / "run" / "sub" / ".." / "vectors" / "v.safetensors") == "vectors/v.safetensors"
    outside = tmp_path / "elsewhere" / "adapter"
    assert run.input_path(outside) == str(outside.resolve())  # outside the run: where it is, absolute
    moved = RunDir(tmp_path / "moved")
    assert moved.input_path(tmp_path / "moved" / "adapter") == run.input_path(tmp_path / "run" / "adapter")
