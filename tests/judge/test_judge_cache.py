"""steerlab.judge.cache: the sqlite answer cache."""

import pytest

from steerlab.errors import SteerlabError
from steerlab.judge.cache import ScoreCache, default_cache_dir
from steerlab.judge.score import JudgeResult
from steerlab.model import embedded


def test_round_trip_skips_failures_and_keys_by_judge(tmp_path):
    cache = ScoreCache(tmp_path)
    cache.put_many(
        "judge-a",
        {
            "p1": JudgeResult(80.0, 0.9, 80.0),
            "p2": JudgeResult(None, 0.1, 33.0),
            "p3": JudgeResult(None, None, None, cacheable=False),
        },
    )
    assert len(cache) == 2  # the failed request is not stored: a rerun asks again
    cache.close()
    again = ScoreCache(tmp_path)  # persisted on disk
    got = again.get_many("judge-a", ["p1", "p2", "p3"])
    # stored without the threshold applied: score None until BaseJudge applies min_mass
    assert got == {"p1": JudgeResult(None, 0.9, 80.0), "p2": JudgeResult(None, 0.1, 33.0)}
    assert again.get_many("judge-b", ["p1"]) == {}  # another judge's answers are not served
    assert ScoreCache.key("a", "bc") != ScoreCache.key("ab", "c")
    many = [f"prompt {i}" for i in range(1200)]  # more than one sqlite chunk of 500
    again.put_many("judge-a", {p: JudgeResult(None, 0.5, 1.0) for p in many})
    assert len(again.get_many("judge-a", many)) == 1200


def test_unopenable_cache_names_the_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SteerlabError, match=r"judge cache .*judge.sqlite: cannot open it"):
        ScoreCache(blocker)


def test_default_cache_dir_is_under_the_steerlab_cache():
    assert default_cache_dir() == embedded.cache_dir() / "judge"
