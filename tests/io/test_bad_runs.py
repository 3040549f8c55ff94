"""Bad run directories: the files a pipeline reads back (stage markers, artifacts, partial results)
truncated, emptied, wrongly typed, non-UTF-8 or huge, and run paths with odd names. A stage either
recomputes or fails with one clear SteerlabError naming the file; it never trusts a damaged artifact
and never crashes (docs/design.md §9, §10)."""

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
from cli_helpers import assert_user_error, invoke
from hypothesis import given, settings
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
        assert again.meta_path.exists()  # asking changes nothing...
        again.invalidate()  # ...recomputing withdraws the marker first
        assert not again.meta_path.exists()  # the marker no longer vouches for anything
        again.save_json(DOC) if kind == "json" else again.save_rows(ROWS)
        assert reopen(stage).done() and load(reopen(stage)) == expected(stage)


@BAD_INPUT
@given(data=st.data(), kind=st.sampled_from(["json", "rows"]))
def test_a_damaged_marker_means_not_done(data, kind):
    with scratch() as tmp:
        stage = finished(tmp, kind)
        valid = stage.meta_path.read_bytes()  # holds timings: damaged independently of its length
        content = data.draw(
            damages().map(lambda damage: damage(valid))
            | json_values().map(lambda v: json.dumps(v).encode())
            | huge_json_texts().map(str.encode)
        )
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
        content = data.draw(
            corruptions(valid)
            | json_values().map(lambda v: json.dumps(v).encode() + b"\n")
            | st.builds(lambda v: valid + json.dumps(v).encode() + b"\n", json_values())
        )
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
    path = write(
        tmp_path / "p.jsonl",
        (json.dumps(ROWS[0], ensure_ascii=False) + "\n").encode() + '{"key": "q1", "text": "ré'.encode()[:-1],
    )
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


# --- `steerlab report DIR` on a damaged run directory -------------------------------------------------
def _csv(header: str, *rows: str) -> str:
    return "\n".join([header, *rows]) + "\n"


RUN_FILES = {  # the files a report reads, small, in the shapes the pipelines write them
    "summary.json": json.dumps({"model": "tiny", "judge": "local", "reading": ["é"], "timings": {"load": 1.0}}),
    "diff/compare.json": json.dumps(
        {
            "n_layers": 3,
            "baseline": {"band": 0.1},
            "cosine": {"a|b": [0.1, 0.2, 0.3]},
            "reliability": {"a": {"mean": [0.5, 0.5, 0.5]}},
        }
    ),
    "diff/study.json": json.dumps(
        {
            "reference": {"base": 0.1, "finetuned": 0.5},
            "best_layer": 1,
            "rows": [
                {
                    "stage": "sweep",
                    "model": "finetuned",
                    "vector": "model_diff",
                    "scale": "raw",
                    "layers": "1",
                    "coeff": 1.0,
                    "margin": 0.3,
                    "direction": "-",
                    "undone": 0.5,
                    "induced": 0.1,
                    "fluency_drop": 0.0,
                }
            ],
            "samples": [{"model": "base", "question": "q", "text": "t"}],
        }
    ),
    "persona/judged.jsonl": json.dumps({"kind": "pos", "trait_score": 80, "coherence": 90}) + "\n",
    "persona/pairs.json": json.dumps({"counts": {"effective": 1}, "filter": "none"}),
    "persona/vectors/manifest.json": json.dumps(
        {
            "metadata": {"filter": "none", "n_effective": 1},
            "n_pairs": 1,
            "vectors": {"response_avg": "response_avg.safetensors"},
        }
    ),
    "monitor.json": json.dumps({"title": "t", "groups": {"a": [0.1]}, "summary": [{"group": "a", "mean": 0.1}]}),
    "sweep/margins.csv": _csv("layer,coeff,margin,std,n_pairs", "1,0.0,0.1,0.0,2"),
    "sweep/scores.csv": _csv("layer,coeff,trait_mean,trait_std,coherence_mean,coherence_std", "1,0.0,10,1,90,2"),
    "sweep/generations.jsonl": json.dumps({"layer": 1, "coeff": 0.0, "question": "q", "text": "t"}) + "\n",
}
WRONG_TYPE = {".json": "[1, 2]", ".jsonl": '{"kind": 5, "x": []}\n', ".csv": "a,b\n1,2\n"}


def make_run(root):
    for name, text in RUN_FILES.items():
        write_to = root / name
        write_to.parent.mkdir(parents=True, exist_ok=True)
        write(write_to, text)
    return root


def report_or_clear_error(run):
    """`steerlab report RUN`: exit 0 (the damaged part listed as missing) or exit 2 with one error line."""
    result = invoke("report", run)
    assert not (result.exception and not isinstance(result.exception, SystemExit)), repr(result.exception)
    if result.exit_code != 0:
        assert_user_error(result)
    return result


def test_report_renders_the_synthetic_run(tmp_path):
    result = report_or_clear_error(make_run(tmp_path / "run"))
    assert result.exit_code == 0 and "not in this run" not in result.output


@settings(BAD_INPUT, max_examples=6)  # each example renders a whole report (~0.25 s)
@given(damage=damages(), name=st.sampled_from(["persona/judged.jsonl", "sweep/generations.jsonl"]))
def test_report_reads_damaged_jsonl_up_to_the_damage(damage, name):
    with scratch() as tmp:
        run = make_run(tmp / "run")
        write(run / name, damage((run / name).read_bytes()))
        assert report_or_clear_error(run).exit_code == 0


@pytest.mark.parametrize(
    ("name", "damage"), [(name, damage) for name in RUN_FILES for damage in ("not UTF-8", "wrong type")]
)
def test_report_on_a_damaged_run_file(tmp_path, name, damage):
    run = make_run(tmp_path / "run")
    path = run / name
    if damage == "not UTF-8":
        write(path, path.read_bytes() + "été".encode("latin-1"))
    else:
        write(path, WRONG_TYPE[path.suffix])
    result = report_or_clear_error(run)
    # the report is still written, and says which part it could not use (a JSONL file whose last
    # line is torn, as a kill leaves it, keeps its intact rows: that is not a problem to report)
    assert result.exit_code == 0 and (run / "report.html").is_file()
    if not (path.suffix == ".jsonl" and damage == "not UTF-8"):
        assert "not in this run" in result.output or "unreadable" in result.output, result.output


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b'{"base_model": "\xe9"}', "not UTF-8 text: byte 0xe9 at line 1"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b"[" * 50_000, "nested deeper than the parser allows"),
    ],
)
def test_a_damaged_fine_tune_record(tmp_path, content, needle):
    """An adapter directory's steerlab_finetune.json (read back by diff extract and the diff study)."""
    from steerlab.finetune.fingerprint import INFO_FILE, read_finetune_info

    path = write(tmp_path / INFO_FILE, content)
    with pytest.raises(SteerlabError) as exc:
        read_finetune_info(tmp_path)
    check_message(str(exc.value), path, "fine-tune record", needle)
