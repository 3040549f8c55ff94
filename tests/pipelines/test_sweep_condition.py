"""A sweep with a CAST condition: the vector and its random controls steer only the questions (and the
pairs) that pass; rows record the gate; the condition is part of the run's config."""

from __future__ import annotations

import json
from dataclasses import replace

import torch

from steerlab import SteeringVector
from steerlab.evaluate.margin import behaviour_margin
from steerlab.formats.pairs import Pair
from steerlab.pipelines.sweep import SweepConfig, run_sweep
from steerlab.steering.conditions import Condition, condition_similarities, gate_samples
from steerlab.steering.generation import generate_batch
from steerlab.steering.steerer import SteeringSpec

QUESTIONS = ["how should I store fresh bread", "yes or no", "the quick brown fox", "0 1 2 3 4"]
PAIRS = [Pair(question=q, positive="no maybe", negative="yes the dog") for q in QUESTIONS]


def test_sweep_steers_only_the_questions_that_pass(tiny_llama, tmp_path):
    lm = tiny_llama
    gen = torch.Generator().manual_seed(2)
    vec = SteeringVector(3 * torch.randn(lm.n_layers, lm.d_model, generator=gen))
    probe = Condition(torch.randn(lm.n_layers, lm.d_model, generator=gen), 2, 0.0)
    sims = condition_similarities(lm, [probe], gate_samples(QUESTIONS))[0]
    condition = replace(probe, threshold=float(sims.median()))
    met = condition.passes(sims).tolist()
    assert any(met) and not all(met)
    config = SweepConfig("1", [-3.0, 3.0], max_new_tokens=4, controls=1)
    result = run_sweep(lm, vec, QUESTIONS, tmp_path, config, pairs=PAIRS, condition=condition)

    unsteered = generate_batch(lm, QUESTIONS, max_new_tokens=4)
    for row in result.generations:
        q = row["question_index"]
        assert row["condition_met"] == met[q] and row["condition_similarity"] == float(sims[q])
        alone = [SteeringSpec(vec, 1, row["coeff"])] if met[q] else []
        want = generate_batch(lm, [QUESTIONS[q]], steering=alone, max_new_tokens=4)[0].text
        assert row["text"] == want
    controls = [json.loads(x) for x in (tmp_path / "control_generations.jsonl").read_text().splitlines()]
    for row in controls:  # the random control goes through the same gate
        assert row["condition_met"] == met[row["question_index"]]
        if not row["condition_met"]:
            assert row["text"] == unsteered[row["question_index"]].text

    plain = behaviour_margin(lm, PAIRS, SteeringSpec(vec, 1, 1.0), [-3.0, 3.0]).per_pair
    base = behaviour_margin(lm, PAIRS).per_pair[0]
    mask = torch.tensor(met)
    for i, row in enumerate(result.margins):
        assert row["n_pairs_steered"] == sum(met)
        expected = torch.where(mask, plain[i], base).mean()
        assert abs(row["margin"] - float(expected)) < 1e-5

    meta = json.loads((tmp_path / "sweep.json").read_text())
    assert meta["config"]["condition"]["threshold"] == condition.threshold
    assert run_sweep(lm, vec, QUESTIONS, tmp_path, config, pairs=PAIRS, condition=condition).generations == (
        result.generations
    )
