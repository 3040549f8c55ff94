"""`steerlab persona extract` with several traits (-t repeated, or -t all): the multi-trait study."""

import json

from cli_helpers import assert_user_error, flat, invoke

from steerlab.formats.traits import list_traits


def test_all_traits_fail_with_a_judge_that_cannot_score_then_no_filter(tmp_path, tiny_dir):
    run = tmp_path / "run"
    args = [
        "persona",
        "extract",
        "-m",
        tiny_dir,
        "-t",
        "all",
        "-j",
        f"local:{tiny_dir}",
        "-o",
        run,
        "--max-questions",
        "1",
        "--max-instructions",
        "1",
        "-n",
        "3",
        "--eval-questions",
        "2",
        "--controls",
        "2",
        "--coeffs",
        "-2,2",
        "--layers",
        "1-2",
        "--scan-coeff",
        "2",
    ]
    names = list_traits()
    # a random tiny judge gives no numbers: every trait fails, is recorded, and the command names them all
    result = invoke(*args)
    assert_user_error(
        result,
        f"{len(names)} of {len(names)} traits failed: {', '.join(names)}",
        "the other traits' results are saved in",
    )
    for name in names:
        assert flat(f"{name}: failed: {name}: no effective pairs") in flat(result.output)
        assert (run / name / "judged.jsonl").is_file()  # kept for the rerun
    doc = json.loads((run / "traits.json").read_text())
    assert all(doc[n]["status"] == "failed" and doc[n]["counts"]["unscored"] == 1 for n in names)
    assert doc["cosine"] is None
    judged_meta = (run / "evil" / "judged.jsonl.meta.json").read_text()

    result = invoke(*args, "--no-filter")
    assert result.exit_code == 0, result.output
    # the table and the readings are results (stdout); what was written is a message (stderr)
    for needle in ("persona extract: traits", "trait x trait cosine per layer", "(random directions: 95% of |cos| <"):
        assert flat(needle) in flat(result.stdout) and flat(needle) not in flat(result.stderr), needle
    assert flat(f"wrote {run / 'traits.json'}") in flat(result.stderr)
    assert (run / "evil" / "judged.jsonl.meta.json").read_text() == judged_meta  # generation and judging reused
    doc = json.loads((run / "traits.json").read_text())
    config = doc["config"]
    assert (config["coeffs"], config["controls"], config["layers"], config["scan_coeff"], config["eval_questions"]) == (
        [-2.0, 2.0],
        2,
        [1, 2],
        2.0,
        2,
    )
    assert config["persona"]["filter"] is False
    for name in names:
        entry = doc[name]
        assert entry["status"] == "ok" and entry["filter"] == "none" and entry["best_layer"] in (1, 2)
        assert [r["coeff"] for r in entry["rows"]] == [-2.0, 2.0]
        assert all(r["ci95"][0] <= r["effect"] <= r["ci95"][1] for r in entry["rows"])  # 2 eval pairs
        assert all(r["random"]["k"] == 2 for r in entry["rows"])
        # the judge scored none of the answers: no judged steering, and it says why
        assert entry["scores"] == {"skipped": "the judge could not score any of the 2 extraction answers"}
    assert doc["cosine"]["names"] == names and len(doc["cosine"]["matrix"]) == 4
    assert (run / "traits.csv").is_file()


def test_several_traits_rejects_bad_flags_before_any_output(tmp_path, tiny_dir):
    base = ["persona", "extract", "-m", tiny_dir, "-j", f"local:{tiny_dir}", "-o", tmp_path / "run"]
    assert_user_error(
        invoke(*base, "-t", "evil", "--controls", "2"), "--controls: only with several traits (repeat -t, or -t all)"
    )
    assert_user_error(invoke(*base, "-t", "evil", "--model-diff"), "--model-diff: only with several traits")
    assert_user_error(
        invoke(*base, "-t", "evil", "-t", "humorous", "--coeffs", "1,x"),
        "--coeffs '1,x': expected comma-separated numbers",
    )
    assert_user_error(invoke(*base, "-t", "evil", "-t", "nope"), "unknown trait 'nope'")
    assert_user_error(invoke(*base, "-t", "evil", "-t", "evil"), "--trait 'evil': trait name given twice")
    assert_user_error(invoke(*base, "-t", "evil", "-t", "humorous", "--layers", "9"), "--layers 9 is out of range")
    assert not (tmp_path / "run").exists()
