"""steerlab.judge.base: the Judge protocol, make_judge specs, prompt filling; and the package's imports."""

import subprocess
import sys

import pytest

from steerlab.errors import SteerlabError
from steerlab.formats.traits import coherence_prompt, load_trait
from steerlab.judge import (
    BaseJudge,
    Judge,
    JudgeResult,
    LocalJudge,
    OpenAIJudge,
    evaluate_coherence,
    evaluate_prompts,
    evaluate_trait,
    judge_coherence,
    judge_trait,
    make_judge,
)


class FakeJudge:
    def __init__(self):
        self.seen = []

    def score(self, prompts):
        self.seen.extend(prompts)
        return [float(len(p) % 101) for p in prompts]


def test_judge_trait_and_coherence_fill_prompts():
    judge = FakeJudge()
    assert isinstance(judge, Judge)
    trait = load_trait("evil", "eval")
    scores = judge_trait(judge, trait.eval_prompt, ["Q1?", "Q2?"], ["A {x}", "B"])
    assert len(scores) == 2
    assert judge.seen[0] == trait.eval_prompt.format(question="Q1?", answer="A {x}")
    judge_coherence(judge, ["Q1?"], ["A"])
    assert judge.seen[-1] == coherence_prompt().format(question="Q1?", answer="A")
    with pytest.raises(SteerlabError, match="2 questions but 1 answers"):
        judge_trait(judge, trait.eval_prompt, ["a", "b"], ["c"])
    with pytest.raises(SteerlabError, match=r"eval_prompt.*\{answer\}"):
        judge_trait(judge, "only {question}", ["a"], ["b"])


def test_make_judge_specs(tiny_llama, monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    for bad in ("gpt-4", "openai:", "local:", "anthropic:claude"):
        with pytest.raises(SteerlabError, match="--judge"):
            make_judge(bad, cache_dir=tmp_path)
    with pytest.raises(SteerlabError, match="OPENAI_API_KEY"):
        make_judge("openai:gpt-4.1-mini", cache_dir=tmp_path)
    judge = make_judge("openai:m", base_url="http://127.0.0.1:9/v1", cache_dir=tmp_path)
    assert isinstance(judge, OpenAIJudge) and judge.name == "openai:m"
    local = make_judge(tiny_llama)
    assert isinstance(local, LocalJudge) and local.cache is None
    assert make_judge(local) is local
    with pytest.raises(SteerlabError, match="unknown model"):
        make_judge("local:/nonexistent/model/dir", cache_dir=tmp_path)


class MassJudge(BaseJudge):
    """A BaseJudge whose answer distribution is read from the prompt: "mass=0.3 score=70"."""

    def __init__(self, **kwargs):
        super().__init__("mass-judge", **kwargs)
        self.computed = []

    def _compute(self, prompts):
        self.computed.extend(prompts)
        out = []
        for p in prompts:
            fields = dict(item.split("=") for item in p.split())
            out.append(JudgeResult(None, float(fields["mass"]), float(fields["score"])))
        return out


def test_base_judge_dedups_thresholds_and_caches(tmp_path):
    judge = MassJudge(cache_dir=tmp_path)
    prompts = ["mass=0.3 score=70", "mass=0.2 score=40", "mass=0.3 score=70", "mass=0.25 score=10"]
    results = judge.evaluate(prompts)
    assert judge.computed == prompts[:2] + prompts[3:]  # each distinct prompt once
    assert [r.score for r in results] == [70.0, None, 70.0, 10.0]  # None below 0.25, kept at 0.25
    assert [r.mass for r in results] == [0.3, 0.2, 0.3, 0.25]
    assert results[1].expected == 40.0  # the expected score is kept even when thresholded away
    # the cache keeps expected and mass, the threshold is applied when reading
    lenient = MassJudge(cache_dir=tmp_path, min_mass=0.1)
    assert lenient.score(prompts[:2]) == [70.0, 40.0] and lenient.computed == []
    with pytest.raises(TypeError, match="list of prompts"):
        judge.score("one prompt")
    with pytest.raises(SteerlabError, match=r"--judge-min-mass 1\.5"):
        MassJudge(cache_dir=False, min_mass=1.5)


def test_evaluate_helpers_report_the_mass(tmp_path):
    judge = MassJudge(cache_dir=False)
    template = "mass={question} score={answer}"
    results = evaluate_trait(judge, template, ["0.1", "0.9"], ["30", "60"])
    assert [(r.score, r.mass, r.expected) for r in results] == [(None, 0.1, 30.0), (60.0, 0.9, 60.0)]
    assert judge_trait(judge, template, ["0.1", "0.9"], ["30", "60"]) == [None, 60.0]
    assert [r.score for r in evaluate_coherence(judge, ["0.5"], ["20"], prompt=template)] == [20.0]
    # a judge with only score(): the mass is unknown, the score is kept
    fake = FakeJudge()
    results = evaluate_prompts(fake, ["abc", "abcd"])
    assert results == [JudgeResult(3.0, None, 3.0), JudgeResult(4.0, None, 4.0)]
    coherence = evaluate_coherence(fake, ["Q1?"], ["A"])
    assert fake.seen[-1] == coherence_prompt().format(question="Q1?", answer="A") and coherence[0].mass is None


def test_import_loads_no_backend():
    # the OpenAI client (and httpx under it) is imported only when an openai judge is built
    code = (
        "import sys, steerlab.judge as j; assert 'openai' not in sys.modules, 'openai'; "
        "assert 'steerlab.judge.local' not in sys.modules, 'local'; "
        "j.OpenAIJudge; assert 'openai' in sys.modules; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
