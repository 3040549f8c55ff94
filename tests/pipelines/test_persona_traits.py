"""The multi-trait persona study (run_persona_traits) on tiny models with a tiny judge that scores."""

import json
from dataclasses import replace

import pytest
import torch
from tiny import make_number_judge

import steerlab.pipelines.persona_traits as persona_traits_module
from steerlab import SteeringVector
from steerlab.errors import SteerlabError
from steerlab.evaluate.controls import random_directions
from steerlab.evaluate.geometry import trait_matrix
from steerlab.evaluate.margin import behaviour_margin
from steerlab.evaluate.persona_eval import persona_margin_pairs
from steerlab.formats.traits import list_traits, load_trait
from steerlab.judge import make_judge
from steerlab.pipelines.persona import PersonaConfig
from steerlab.pipelines.persona_traits import PersonaTraitsConfig, resolve_traits, run_persona_traits
from steerlab.pipelines.trait_steering import eval_pairs
from steerlab.steering.generation import generate_batch
from steerlab.steering.steerer import SteeringSpec

TRAITS = ["evil", "humorous"]
CONFIG = PersonaTraitsConfig(
    persona=PersonaConfig(
        max_questions=2, max_instructions=2, max_new_tokens=4, threshold=0.0, min_coherence=0.0, batch_size=2
    ),
    coeffs=[-2.0, 2.0, 4.0],
    scan_coeff=2.0,
    eval_questions=3,
    eval_new_tokens=4,
    controls=3,
    n_resamples=200,
    judge_scores=False,
)


@pytest.fixture(scope="module")
def judge():
    return make_judge(make_number_judge())


@pytest.fixture(scope="module")
def study(tiny_llama, judge, tmp_path_factory):
    """Two traits with judged steered answers (K=2 controls for the judged part)."""
    out = tmp_path_factory.mktemp("traits")
    config = replace(CONFIG, judge_scores=True, score_controls=2)
    return run_persona_traits(tiny_llama, TRAITS, judge, out, config), config


def assert_close(a, b, tol=1e-5):
    """Nested dicts / lists of numbers equal within ``tol`` (strings and None exactly)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_close(a[k], b[k], tol)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_close(x, y, tol)
    elif isinstance(a, float):
        assert b == pytest.approx(a, abs=tol)
    else:
        assert a == b


class ForwardCounter:
    """Counts forward passes of a model (a real forward pre-hook; nothing replaced)."""

    def __init__(self, *models):
        self.n = 0
        self.handles = [m.register_forward_pre_hook(self._count) for m in models]

    def _count(self, *_):
        self.n += 1

    def remove(self):
        for h in self.handles:
            h.remove()


def test_every_trait_gets_its_evidence_and_the_schema(study, tiny_llama):
    result, config = study
    doc = json.loads(result.path.read_text())
    assert set(doc) == {*TRAITS, "cosine", "steerlab_version", "model", "judge", "config", "table"}
    assert result.failed == {} and result.summary == {**{t: doc[t] for t in TRAITS}, "cosine": doc["cosine"]}
    for trait in TRAITS:
        entry = doc[trait]
        for name in (
            "responses.jsonl",
            "judged.jsonl",
            "pairs.json",
            "vectors/manifest.json",
            "eval_answers.jsonl",
            "layer_scan.json",
            "margins.json",
            "steered_generations.jsonl",
            "steered_judged.jsonl",
        ):
            assert (result.run_dir / trait / name).is_file(), (trait, name)
        assert entry["status"] == "ok" and entry["effective_pairs"] == entry["pairs_averaged"] > 0
        assert entry["best_layer"] in {r["layer"] for r in entry["layer_scan"]["rows"]}
        assert [r["coeff"] for r in entry["rows"]] == config.coeffs
        lo, hi = entry["unsteered"]["margin_ci95"]
        assert lo <= entry["unsteered"]["margin"] <= hi
        for row in entry["rows"]:
            # every number with its interval: the effect (change from unsteered) and the margin itself
            assert row["ci95"][0] <= row["effect"] <= row["ci95"][1]
            assert row["margin_ci95"][0] <= row["margin"] <= row["margin_ci95"][1]
            assert len(row["per_pair"]) == entry["n_eval_pairs"]
            assert set(row["random"]) == {"mean", "lo", "hi", "p", "k", "alternative"} and row["random"]["k"] == 3
            assert row["random"]["lo"] <= row["random"]["mean"] <= row["random"]["hi"]
            assert 1 / 4 <= row["random"]["p"] <= 1 and len(row["random_effects"]) == 3
            assert row["steerable_fraction"] + row["anti_steerable_fraction"] <= 1
            assert row["effect"] == pytest.approx(row["margin"] - entry["unsteered"]["margin"], abs=1e-9)
            # one-sided, the coefficient's way: a negative coefficient is meant to lower the margin
            intended = "greater" if row["coeff"] > 0 else "less"
            assert row["alternative"] == row["random"]["alternative"] == intended
            lo, hi, p = row["random"]["lo"], row["random"]["hi"], row["random"]["p"]
            limit = "with 3 controls p cannot go below 0.25 — use --controls 19 or more for a test at 0.05"
            if lo <= row["effect"] <= hi:
                expected = "not distinguishable from random directions"
            elif (row["effect"] < lo) == (intended == "greater"):
                side = "below" if intended == "greater" else "above"
                expected = f"{side} the random band (the wrong way, more than random directions)"
            elif p == 0.25:  # 3 controls cannot reach p = 0.05, and the verdict says so
                expected = f"outside all 3 random directions; {limit}"
            else:
                expected = (
                    f"beyond the random band but not outside all 3 random directions (one-sided p = {p:.2g}); {limit}"
                )
            assert row["verdict"] == expected
            # judged: the mean of the real condition's scores at this coefficient, with an interval
            judged = [json.loads(x) for x in (result.run_dir / trait / "steered_judged.jsonl").read_text().splitlines()]
            scores = [r["trait_score"] for r in judged if r["condition"] == "real" and r["coeff"] == row["coeff"]]
            assert row["score_mean"] == pytest.approx(sum(scores) / len(scores)) and row["score_n"] == 3
            assert row["score_ci95"][0] <= row["score_mean"] <= row["score_ci95"][1]
            assert row["score_random"]["k"] == 2
        assert entry["scores"]["prompting"]["pos"]["score_n"] == 3
        assert entry["reading"].startswith(f"{trait}: adding the persona vector at layer {entry['best_layer']}")
    cosine = doc["cosine"]
    assert cosine["names"] == TRAITS and cosine["layers"] == list(range(tiny_llama.n_layers))
    assert cosine["random_band"]["d_model"] == tiny_llama.d_model and cosine["random_band"]["band"] > 0
    assert set(cosine["ci95"]) == {"evil|humorous"} and len(cosine["ci95"]["evil|humorous"]) == tiny_llama.n_layers
    assert cosine["best_layers"] == {t: doc[t]["best_layer"] for t in TRAITS}
    table = {r["trait"]: r for r in doc["table"]}
    assert table["evil"]["best_layer"] == doc["evil"]["best_layer"] and (result.run_dir / "traits.csv").is_file()


def test_numbers_equal_independent_computations(study, tiny_llama):
    result, config = study
    vectors = {}
    for trait in TRAITS:
        entry = result.traits[trait]
        rows = [json.loads(x) for x in (result.run_dir / trait / "eval_answers.jsonl").read_text().splitlines()]
        pairs = eval_pairs(rows)
        # eval answers generated for both traits as rows of shared batches = persona_margin_pairs on one trait
        alone = persona_margin_pairs(
            tiny_llama, load_trait(trait, "eval"), config.eval_questions, config.eval_new_tokens
        )
        assert [(p.question, p.positive, p.negative) for p in pairs] == [
            (p.question, p.positive, p.negative) for p in alone
        ]
        vector = SteeringVector.load(result.run_dir / entry["vector"])
        vectors[trait] = vector
        best = entry["best_layer"]
        real = behaviour_margin(tiny_llama, pairs, SteeringSpec(vector, best), config.coeffs)
        torch.testing.assert_close(
            torch.tensor([r["per_pair"] for r in entry["rows"]]), real.per_pair, atol=1e-5, rtol=0
        )
        # control 0, run on its own, equals the control run as extra rows
        control = random_directions(vector, config.controls, config.seed)[0]
        alone = behaviour_margin(tiny_llama, pairs, SteeringSpec(control[best], best), config.coeffs)
        unsteered = entry["unsteered"]["margin"]
        assert [r["random_effects"][0] for r in entry["rows"]] == pytest.approx(
            [m - unsteered for m in alone.mean], abs=1e-5
        )
        # steered answers, generated for every condition and both traits as rows of shared batches, equal
        # answers generated for one condition alone
        path = result.run_dir / trait / "steered_generations.jsonl"
        generated = [json.loads(x) for x in path.read_text().splitlines()]
        questions = load_trait(trait, "eval").questions[: config.eval_questions]
        control = random_directions(vector, 2, config.seed)[1]
        for condition, direction in (("real", vector.data), ("control/1", control)):
            texts = [r["text"] for r in generated if r["condition"] == condition and r["coeff"] == 4.0]
            alone = generate_batch(
                tiny_llama,
                questions,
                steering=SteeringSpec(direction[best], best, 4.0),
                max_new_tokens=config.eval_new_tokens,
            )
            assert texts == [g.text for g in alone], condition
        # the best layer has the largest margin increase among coherent layers of the scan
        scan = entry["layer_scan"]["rows"]
        assert max((r for r in scan if r["coherent"]), key=lambda r: r["effect"])["layer"] == best
    for layer in range(tiny_llama.n_layers):
        _, matrix = trait_matrix(vectors, layer)
        assert_close(result.cosine["matrix"][layer], matrix.tolist())


def test_rerun_reuses_every_stage(study, tiny_llama, judge):
    result, config = study
    before = result.path.read_text()
    counter = ForwardCounter(tiny_llama.model, judge.lm.model)
    try:
        again = run_persona_traits(tiny_llama, TRAITS, judge, result.run_dir, config)
    finally:
        counter.remove()
    assert counter.n == 0  # no generation, judging, margin or activation pass
    assert json.loads(again.path.read_text()) == json.loads(before)


def test_a_killed_run_resumes_and_matches(tiny_llama, judge, tmp_path, monkeypatch):
    clean = run_persona_traits(tiny_llama, TRAITS, judge, tmp_path / "clean", CONFIG)
    # the persona answers of both traits are one shared stream of generation calls
    real = persona_traits_module.generate_with_systems
    calls = []

    def killed_on_second_chunk(engine, items, config, description):
        calls.append(len(items))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(engine, items, config, description)

    monkeypatch.setattr(persona_traits_module, "generate_with_systems", killed_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        run_persona_traits(tiny_llama, TRAITS, judge, tmp_path / "run", CONFIG)
    # the shared stream of both traits' answers checkpointed its first chunk (8 of 16 answers)
    partial = (tmp_path / "run" / ".partial" / "persona_responses.jsonl").read_text().splitlines()
    assert calls == [8, 8] and len(partial) == 1 + 8
    assert not (tmp_path / "run" / "evil" / "responses.jsonl").exists()
    calls.clear()
    resumed = run_persona_traits(tiny_llama, TRAITS, judge, tmp_path / "run", CONFIG)
    assert calls == [8]  # only the unfinished chunk
    for trait in TRAITS:
        for name in ("responses.jsonl", "judged.jsonl", "pairs.json", "eval_answers.jsonl"):
            assert (tmp_path / "run" / trait / name).read_text() == (tmp_path / "clean" / trait / name).read_text()
        assert_close(resumed.traits[trait]["rows"], clean.traits[trait]["rows"])
    assert not (tmp_path / "run" / ".partial" / "persona_responses.jsonl").exists()


class TraitBlindJudge:
    """A real judge that cannot score one trait's prompts (as an API judge that refuses some prompts)."""

    def __init__(self, judge, marker):
        self.judge, self.marker = judge, marker

    def score(self, prompts):
        scores = self.judge.score(prompts)
        return [None if self.marker in p else s for p, s in zip(prompts, scores, strict=True)]


def test_one_trait_failing_keeps_the_others(tiny_llama, judge, tmp_path):
    marker = "one specific trait: humorous."
    blind = TraitBlindJudge(judge, marker)
    result = run_persona_traits(tiny_llama, TRAITS, blind, tmp_path / "run", CONFIG)
    assert list(result.failed) == ["humorous"]
    assert "humorous: no effective pairs among 4 candidate pairs" in result.failed["humorous"]
    failed = result.traits["humorous"]
    assert failed["status"] == "failed" and failed["counts"]["unscored"] == 4
    # nothing computed is lost: the failed trait's answers and scores are kept for a rerun
    assert (tmp_path / "run" / "humorous" / "judged.jsonl").is_file()
    assert result.traits["evil"]["status"] == "ok" and result.cosine is None
    doc = json.loads(result.path.read_text())
    assert doc["humorous"]["status"] == "failed" and doc["evil"]["rows"]
    # evil's numbers do not depend on humorous running beside it
    alone = run_persona_traits(tiny_llama, ["evil"], blind, tmp_path / "alone", CONFIG)
    assert_close(alone.traits["evil"]["rows"], result.traits["evil"]["rows"])
    # with fallback_unfiltered (the demo's choice) the failed trait averages every pair instead
    config = replace(CONFIG, fallback_unfiltered=True)
    fallback = run_persona_traits(tiny_llama, TRAITS, blind, tmp_path / "run", config)
    assert fallback.failed == {} and fallback.traits["humorous"]["filter"] == "none"
    assert fallback.traits["humorous"]["effective_pairs"] == 0 and fallback.traits["humorous"]["pairs_averaged"] == 4
    assert fallback.cosine is not None
    # and a rerun resumes the fallback as it is: no stage of the trait runs again
    stamps = {m: m.stat().st_mtime_ns for m in (tmp_path / "run" / "humorous").rglob("*.meta.json")}
    again = run_persona_traits(tiny_llama, TRAITS, blind, tmp_path / "run", config)
    assert again.traits["humorous"]["filter"] == "none"
    assert {m: m.stat().st_mtime_ns for m in stamps} == stamps


def test_controls_are_deterministic_under_the_seed(tiny_llama, judge, tmp_path):
    a = run_persona_traits(tiny_llama, ["evil"], judge, tmp_path / "a", CONFIG)
    b = run_persona_traits(tiny_llama, ["evil"], judge, tmp_path / "b", CONFIG)
    c = run_persona_traits(tiny_llama, ["evil"], judge, tmp_path / "a", replace(CONFIG, seed=1))
    rows_a, rows_b, rows_c = (r.traits["evil"]["rows"] for r in (a, b, c))
    assert [r["random_effects"] for r in rows_a] == [r["random_effects"] for r in rows_b]
    assert [r["random"] for r in rows_a] == [r["random"] for r in rows_b]
    assert [r["random_effects"] for r in rows_a] != [r["random_effects"] for r in rows_c]
    assert_close([r["per_pair"] for r in rows_a], [r["per_pair"] for r in rows_c])  # the vector's own margins
    off = run_persona_traits(tiny_llama, ["evil"], judge, tmp_path / "a", replace(CONFIG, controls=0))
    assert all(
        r["random"] is None and r["verdict"] == "no random-direction controls run" for r in off.traits["evil"]["rows"]
    )


def test_resolving_traits():
    assert [s.name for s in resolve_traits(["all"])] == list_traits()
    specs = resolve_traits(["evil", "humorous"])
    assert [s.eval.questions for s in specs] == [load_trait(t, "eval").questions for t in TRAITS]
    assert all(s.held_out for s in specs)
    with pytest.raises(SteerlabError, match="'evil': trait name given twice"):
        resolve_traits(["evil", "all"])
    with pytest.raises(SteerlabError, match="unknown trait 'nope'"):
        resolve_traits(["nope"])
    with pytest.raises(SteerlabError, match="--trait: no traits given"):
        resolve_traits([])
    reserved = load_trait("evil").model_copy(update={"name": "cosine"})
    with pytest.raises(SteerlabError, match="'cosine': trait name reserved"):
        resolve_traits([reserved])


def test_bad_config_fails_before_model_work(tiny_llama, judge, tmp_path):
    with pytest.raises(SteerlabError, match="--layers 9 is out of range"):
        run_persona_traits(tiny_llama, TRAITS, judge, tmp_path / "x", replace(CONFIG, layers=[9]))
    with pytest.raises(SteerlabError, match="--controls -1"):
        run_persona_traits(tiny_llama, TRAITS, judge, tmp_path / "x", replace(CONFIG, controls=-1))
    with pytest.raises(SteerlabError, match="reduction 'mean': expected one of response_avg, prompt_avg, prompt_last"):
        run_persona_traits(tiny_llama, TRAITS, judge, tmp_path / "x", replace(CONFIG, reduction="mean"))
    with pytest.raises(SteerlabError, match="--positions 'last': expected one of all, prompt, response"):
        run_persona_traits(tiny_llama, TRAITS, judge, tmp_path / "x", replace(CONFIG, positions="last"))
    assert not (tmp_path / "x").exists()


def test_model_diff_directions_join_the_cosine_matrix(tiny_llama, judge, tmp_path):
    """--model-diff: a fine-tune per trait on its persona answers, its model-diff direction in the matrix."""
    from steerlab.extract.model_diff import extract_model_diff, pair_diff_samples
    from steerlab.finetune.config import FinetuneConfig
    from steerlab.formats.pairs import Pair

    config = replace(CONFIG, model_diff=FinetuneConfig(rank=2, epochs=1, lr=5e-3, batch_size=4))
    result = run_persona_traits(tiny_llama, TRAITS, judge, tmp_path, config)
    cosine = result.cosine
    assert cosine["names"] == [*TRAITS, "model_diff:evil", "model_diff:humorous"]
    pairs = json.loads((tmp_path / "evil" / "pairs.json").read_text())["pairs"]
    assert cosine["n_pairs"]["model_diff:evil"] == 2 * cosine["n_pairs"]["evil"] == 2 * len(pairs)
    # the matrix's model-diff direction is the standalone extractor's on the same pairs and adapter
    diff = extract_model_diff(
        tiny_llama,
        tmp_path / "evil" / "adapter",
        pair_diff_samples(
            [Pair(question=p["question"], positive=p["positive"], negative=p["negative"]) for p in pairs]
        ),
    )
    persona = SteeringVector.load(tmp_path / "evil" / "vectors" / "evil_response_avg.safetensors")
    names = cosine["names"]
    for layer in (1, 3):
        want = torch.nn.functional.cosine_similarity(diff.data[layer].double(), persona.data[layer].double(), dim=0)
        got = cosine["matrix"][layer][names.index("model_diff:evil")][names.index("evil")]
        assert got == pytest.approx(float(want), abs=1e-4)
    assert "model_diff:evil|model_diff:humorous" in cosine["ci95"] and "model_diff:evil" in cosine["reliability"]
    # off again: only the cosines are redone; on again: the fine-tunes are reused
    weights = tmp_path / "evil" / "adapter" / "adapter_model.safetensors"
    written = weights.stat().st_mtime_ns
    off = run_persona_traits(tiny_llama, TRAITS, judge, tmp_path, CONFIG)
    assert off.cosine["names"] == TRAITS and "model_diff_finetunes" not in off.timings
    again = run_persona_traits(tiny_llama, TRAITS, judge, tmp_path, config)
    assert again.cosine["names"] == names and weights.stat().st_mtime_ns == written
