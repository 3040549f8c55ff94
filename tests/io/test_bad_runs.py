"""Bad run directories: the files a pipeline reads back (stage markers, artifacts, partial results)
truncated, emptied, wrongly typed, non-UTF-8 or huge, and run paths with odd names. A stage either
recomputes or fails with one clear SteerlabError naming the file; it never trusts a damaged artifact
and never crashes (SPEC §7, §8)."""

import json
import logging

import pytest
from bad_inputs import (
    BAD_INPUT,
    LONG_NAME,
    check_message,
    corruptions,
    damages,
    huge_json_texts,
    json_values,
    scratch,
    write,
)
from hypothesis import given
from hypothesis import strategies as st

from steerlab.errors import SteerlabError
from steerlab.io.runs import RunDir, read_jsonl_rows

CONFIG = {"model": "tiny", "layers": [1, 2]}
DOC = {"mean": 0.5, "per_layer": [0.1, 0.2], "note": "été"}
ROWS = [{"key": "q0", "text": "réponse"}, {"key": "q1", "text": "answer"}]


def finished(tmp, kind):
    """A run with one finished stage: ``kind`` "json" (doc.json) or "rows" (rows.jsonl)."""
    run = RunDir(tmp / "run")
    if kind == "json":
        stage = run.stage("doc", "doc.json", CONFIG)
        stage.save_json(DOC)
    else:
        stage = run.stage("rows", "rows.jsonl", CONFIG)
        stage.save_rows(ROWS)
    return stage


def reopen(stage):
    return RunDir(stage.run.path).stage(stage.name, stage.path.name, CONFIG)


def load(stage):
    return stage.load_json() if stage.path.suffix == ".json" else stage.load_rows()


def expected(stage):
    return DOC if stage.path.suffix == ".json" else ROWS


@BAD_INPUT
@given(data=st.data(), kind=st.sampled_from(["json", "rows"]))
def test_a_damaged_artifact_is_recomputed(data, kind, caplog):
    """Truncated, emptied or non-UTF-8 artifacts do not match their recorded digest: recompute."""
    with scratch() as tmp:
        stage = finished(tmp, kind)
        valid = stage.path.read_bytes()
        write(stage.path, data.draw(corruptions(valid).filter(lambda b: b != valid)))
        again = reopen(stage)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="steerlab"):
            assert not again.done()
        assert "does not match what stage" in caplog.text and str(stage.path) in caplog.text
        assert not again.meta_path.exists()  # the marker no longer vouches for anything
        again.save_json(DOC) if kind == "json" else again.save_rows(ROWS)
        assert reopen(stage).done() and load(reopen(stage)) == expected(stage)


@BAD_INPUT
@given(data=st.data(), kind=st.sampled_from(["json", "rows"]))
def test_a_damaged_marker_means_not_done(data, kind):
    with scratch() as tmp:
        stage = finished(tmp, kind)
        valid = stage.meta_path.read_bytes()  # holds timings: damaged independently of its length
        content = data.draw(damages().map(lambda damage: damage(valid))
                            | json_values().map(lambda v: json.dumps(v).encode()) | huge_json_texts().map(str.encode))
        write(stage.meta_path, content)
        again = reopen(stage)
        if again.done():  # only a marker that still records this config and the artifact's digest
            recorded = json.loads(content)
            assert recorded["config_hash"] == stage.hash and load(again) == expected(stage)
        else:
            again.save_json(DOC) if kind == "json" else again.save_rows(ROWS)
            assert reopen(stage).done()


@BAD_INPUT
@given(data=st.data(), kind=st.sampled_from(["json", "rows"]))
def test_an_artifact_damaged_under_an_old_marker_is_a_clear_error(data, kind):
    """Markers written before digests were recorded vouch for the config only: loading a damaged
    artifact then fails with one message naming the file and how to recompute."""
    with scratch() as tmp:
        stage = finished(tmp, kind)
        meta = json.loads(stage.meta_path.read_text())
        del meta["artifact_sha256"]
        stage.meta_path.write_text(json.dumps(meta))
        valid = stage.path.read_bytes()
        write(stage.path, data.draw(corruptions(valid).filter(lambda b: b != valid)))
        again = reopen(stage)
        assert again.done()
        try:
            rows = load(again)
        except SteerlabError as exc:
            check_message(str(exc), stage.path, "delete it (or the run directory) to recompute it")
        else:
            assert kind == "rows" and isinstance(rows, list)  # e.g. the last row cut at a line end


@BAD_INPUT
@given(data=st.data())
def test_damaged_partial_results_are_dropped_not_fatal(data):
    with scratch() as tmp:
        stage = RunDir(tmp / "run").stage("answers", "answers.jsonl", CONFIG)
        with pytest.raises(KeyboardInterrupt):
            stage.run_items([{"key": "a"}, {"key": "b"}], _work_until("b"), chunk=1)
        valid = stage.partial_path.read_bytes()
        content = data.draw(corruptions(valid) | json_values().map(lambda v: json.dumps(v).encode() + b"\n")
                            | st.builds(lambda v: valid + json.dumps(v).encode() + b"\n", json_values()))
        write(stage.partial_path, content)
        again = reopen(stage)
        assert set(again.finished_items()) <= {"a"}
        rows = again.run_items([{"key": "a"}, {"key": "b"}], _work_until(None), chunk=1)
        assert [r["key"] for r in rows] == ["a", "b"]


def _work_until(stop):
    def work(chunk):
        if any(item["key"] == stop for item in chunk):
            raise KeyboardInterrupt
        return [{"key": item["key"], "answer": item["key"].upper()} for item in chunk]

    return work


def test_a_kill_inside_a_multibyte_character_keeps_the_rows_before(tmp_path):
    """Before: UnicodeDecodeError when the torn last line ended inside a UTF-8 character."""
    path = write(tmp_path / "p.jsonl", (json.dumps(ROWS[0], ensure_ascii=False) + "\n").encode()
                 + '{"key": "q1", "text": "ré'.encode()[:-1])
    assert read_jsonl_rows(path) == [ROWS[0]]
    line_separator = write(tmp_path / "u2028.jsonl", json.dumps({"text": "a\u2028b"}, ensure_ascii=False) + "\n")
    assert read_jsonl_rows(line_separator) == [{"text": "a\u2028b"}]  # not split at U+2028


@pytest.mark.parametrize("which", ["artifact", "marker"])
def test_a_directory_where_a_file_belongs_is_a_clear_error(tmp_path, which):
    stage = finished(tmp_path, "json")
    target = stage.path if which == "artifact" else stage.meta_path
    target.unlink()
    target.mkdir()
    with pytest.raises(SteerlabError) as exc:
        reopen(stage).done()
    check_message(str(exc.value), target, "should be a file but is not; remove it to recompute")


@pytest.mark.parametrize("name", [LONG_NAME, f"ok/{LONG_NAME}/run", "file/run"])
def test_run_directories_with_unusable_names(tmp_path, name):
    (tmp_path / "file").write_text("x")
    path = tmp_path / name
    with pytest.raises(SteerlabError) as exc:
        RunDir(path)
    reason = "file name too long (300 bytes in one name" if LONG_NAME in name else "cannot create the run directory"
    check_message(str(exc.value), path, "--out", reason)
    assert not (tmp_path / "ok").exists()
