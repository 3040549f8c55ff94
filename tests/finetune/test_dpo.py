"""DPO: the loss is eq. 7 of Rafailov et al. 2023 computed by hand, the reference is the base model,
a step moves the margin the intended way, the adapter is a stage keyed on objective and beta."""

import copy
import json
import math

import pytest
import torch
from finetune_data import EXAMPLES, PAIRS
from peft import PeftModel

import steerlab.finetune.preference as pref
import steerlab.finetune.stage as stage_module
from steerlab.errors import SteerlabError
from steerlab.finetune.config import FinetuneConfig
from steerlab.finetune.examples import IGNORE
from steerlab.finetune.fingerprint import read_finetune_info
from steerlab.finetune.preference import DpoObjective, build_preference_example, reference_logprobs
from steerlab.finetune.training import run_finetune, run_finetune_pairs
from steerlab.formats.conversations import pairs_to_chat
from steerlab.formats.pairs import Pair

pytestmark = pytest.mark.usefixtures("one_thread")

DPO = dict(objective="dpo", batch_size=5)


def _examples(lm, pairs=PAIRS):
    pairs = [Pair.model_validate(p) for p in pairs]
    chosen, rejected = pairs_to_chat(pairs, "positive"), pairs_to_chat(pairs, "negative")
    return [build_preference_example(lm.tokenizer, c, r) for c, r in zip(chosen, rejected, strict=True)]


def _hand_logp(model, example):
    """log p(answer | prompt) by hand: one unpadded sequence, log-softmax of the logits in float64,
    the log-probability of each labelled token read at the position before it, summed."""
    ids = torch.tensor([example.input_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    labelled = [(t, y) for t, y in enumerate(example.labels) if y != IGNORE]
    assert labelled and labelled[0][0] > 0
    return sum(float(logp[t - 1, y]) for t, y in labelled)


def _hand_pairs(model, examples):
    """[pairs, 2] float64: hand log-likelihoods of the chosen and the rejected answer."""
    rows = [[_hand_logp(model, e.chosen), _hand_logp(model, e.rejected)] for e in examples]
    return torch.tensor(rows, dtype=torch.float64)


def _perturbed(model, seed=3, scale=0.05):
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return other.eval()


# float32 forward passes, padded (training) vs unpadded (by hand), log-likelihoods of magnitude ~60
# summed over ~10 tokens: float32 rounding (1.2e-7 relative) puts them ~1e-5 apart at most.
TOL = dict(rtol=1e-5, atol=5e-5)


def test_dpo_loss_equals_a_hand_computation(tiny_llama):
    examples = _examples(tiny_llama)
    for e in examples:  # the same prompt tokens, then each answer's (labelled) tokens
        start = next(t for t, y in enumerate(e.chosen.labels) if y != IGNORE)
        assert e.chosen.input_ids[:start] == e.rejected.input_ids[:start]
        assert all(y == IGNORE for y in e.rejected.labels[:start]) and e.rejected.labels[start] != IGNORE
    reference = reference_logprobs(tiny_llama, examples, batch_size=2)
    # The reference is the base model: its log-likelihoods, however batched.
    base = _hand_pairs(tiny_llama.model, examples)
    torch.testing.assert_close(reference.double(), base, **TOL)

    policy = _perturbed(tiny_llama.model)
    beta = 0.3
    objective = DpoObjective(examples, reference, beta, tiny_llama.tokenizer.pad_token_id, "cpu")
    step = objective.step(policy, [4, 0, 2, 1, 3])

    pi = _hand_pairs(policy, examples)
    by_hand, margins = [], []
    for (pc, pr), (rc, rr) in zip(pi.tolist(), base.tolist(), strict=True):
        z = beta * ((pc - rc) - (pr - rr))
        margins.append(z)
        by_hand.append(-math.log(1 / (1 + math.exp(-z))))  # -log sigmoid(z), eq. 7
    assert max(abs(m) for m in margins) > 0.05  # the policy really differs from the reference
    assert float(step.loss.detach()) == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-4, abs=1e-4)
    assert step.metrics["reward_margin"] == pytest.approx(sum(margins) / len(margins), rel=1e-4, abs=1e-4)
    assert step.metrics["chosen_reward"] == pytest.approx(float(beta * (pi[:, 0] - base[:, 0]).mean()), abs=1e-4)
    assert step.metrics["reward_accuracy"] == pytest.approx(sum(m > 0 for m in margins) / len(margins))
    assert step.weight == 5 and step.counts["pairs"] == 5
    step.loss.backward()  # the loss reaches the policy's parameters
    assert policy.lm_head.weight.grad is not None and policy.lm_head.weight.grad.abs().sum() > 0


def test_one_step_moves_the_margin_the_intended_way(tiny_llama, tmp_path):
    examples = _examples(tiny_llama)
    base = _hand_pairs(tiny_llama.model, examples)
    out = tmp_path / "dpo"
    result = run_finetune_pairs(tiny_llama, PAIRS, out, FinetuneConfig(**DPO, lr=1e-2, seed=1))
    assert result.n_steps == 1 and result.n_examples == 5
    # At the first step the policy is the base (LoRA's B starts at zero) and so is the reference:
    # every log-ratio is 0 and the loss is -log sigmoid(0) = log 2.
    assert result.losses[0] == pytest.approx(math.log(2), abs=1e-5)
    assert result.epochs[0]["reward_margin"] == pytest.approx(0, abs=1e-5)

    tuned = PeftModel.from_pretrained(copy.deepcopy(tiny_llama.model), str(out)).eval()
    after = _hand_pairs(tuned, examples)
    ratio_margin = ((after[:, 0] - base[:, 0]) - (after[:, 1] - base[:, 1])).mean()
    assert ratio_margin > 0.1  # the policy's chosen-vs-rejected log-ratio difference grew from 0
    plain_before = (base[:, 0] - base[:, 1]).mean()
    plain_after = (after[:, 0] - after[:, 1]).mean()
    assert plain_after - plain_before == pytest.approx(float(ratio_margin), rel=1e-6)
    assert plain_after > plain_before + 0.1  # chosen gained log-likelihood relative to rejected

    info = read_finetune_info(out)
    assert info["config"]["objective"] == "dpo" and info["config"]["beta"] == 0.1
    assert info["config"]["loss"] == "dpo_sigmoid" and info["data"]["n_examples"] == 5
    assert [e["epoch"] for e in info["epochs"]] == [0]
    assert info["epochs"][0]["loss"] == pytest.approx(info["final_loss"], abs=1e-6)
    steps = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(steps) == 1 and steps[0]["pairs"] == 5
    assert {"reward_margin", "reward_accuracy", "chosen_reward", "rejected_reward"} <= set(steps[0])


def test_the_reference_stays_the_base_model_while_training(tiny_llama, tmp_path, monkeypatch):
    """Every step, also after the policy has moved, compares with the base model's log-likelihoods."""
    seen = []
    real = pref.dpo_loss

    def spy(pc, pr, rc, rr, beta):
        seen.append((pc.detach().clone(), rc.clone(), rr.clone()))
        return real(pc, pr, rc, rr, beta)

    monkeypatch.setattr(pref, "dpo_loss", spy)
    run_finetune_pairs(tiny_llama, PAIRS, tmp_path / "dpo", FinetuneConfig(**DPO, epochs=3, lr=2e-2))
    base = _hand_pairs(tiny_llama.model, _examples(tiny_llama))
    base = base[base[:, 0].argsort()]
    assert len(seen) == 3
    for _, rc, rr in seen:  # each step holds all 5 pairs, in its own order
        ref = torch.stack([rc, rr], -1).double()
        torch.testing.assert_close(ref[ref[:, 0].argsort()], base, **TOL)
    # ...while the policy did move away from it.
    assert (seen[-1][0].sort().values.double() - base[:, 0].sort().values).abs().max() > 1e-3


def test_rerun_keeps_the_adapter_and_objective_or_beta_retrain(tiny_llama, tmp_path, monkeypatch):
    trained = []
    real = stage_module.train_adapter
    monkeypatch.setattr(stage_module, "train_adapter", lambda *a: trained.append(1) or real(*a))
    out = tmp_path / "ft"
    first = run_finetune_pairs(tiny_llama, PAIRS, out, FinetuneConfig(**DPO))
    weights = (out / "adapter_model.safetensors").read_bytes()
    kept = run_finetune_pairs(tiny_llama, PAIRS, out, FinetuneConfig(**DPO))
    assert kept.reused and len(trained) == 1 and kept.config_hash == first.config_hash
    assert kept.epochs == [pytest.approx(e, abs=1e-6) for e in first.epochs]
    assert (out / "adapter_model.safetensors").read_bytes() == weights

    beta = run_finetune_pairs(tiny_llama, PAIRS, out, FinetuneConfig(**DPO, beta=0.5))
    assert not beta.reused and len(trained) == 2 and beta.config_hash != first.config_hash
    assert read_finetune_info(out)["config"]["beta"] == 0.5
    swapped = run_finetune_pairs(tiny_llama, PAIRS, out, FinetuneConfig(**DPO, beta=0.5), use="negative")
    assert not swapped.reused and len(trained) == 3  # chosen and rejected exchanged: other data

    sft = run_finetune_pairs(tiny_llama, PAIRS, out, FinetuneConfig(batch_size=5))
    assert not sft.reused and len(trained) == 4 and read_finetune_info(out)["config"]["objective"] == "sft"
    assert "beta" not in sft.config and sft.config["loss"] == "assistant_only"
    # SFT on pairs is SFT on their chosen conversations, and beta has no part in it.
    same = run_finetune(
        tiny_llama, pairs_to_chat([Pair(**p) for p in PAIRS]), out, FinetuneConfig(batch_size=5, beta=0.7)
    )
    assert same.reused and same.config_hash == sft.config_hash and len(trained) == 4
    back = run_finetune_pairs(tiny_llama, PAIRS, out, FinetuneConfig(**DPO))
    assert not back.reused and len(trained) == 5 and back.config_hash == first.config_hash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]


def test_dpo_bad_input(tiny_llama, tmp_path):
    dpo = FinetuneConfig(**DPO)
    with pytest.raises(SteerlabError, match=r"--objective dpo trains on pairs.*run_finetune_pairs"):
        run_finetune(tiny_llama, EXAMPLES, tmp_path / "a", dpo)
    with pytest.raises(SteerlabError, match="at least one pair"):
        run_finetune_pairs(tiny_llama, [], tmp_path / "a", dpo)
    with pytest.raises(SteerlabError, match=r"^pair 1: field 'negative': Field required$"):
        run_finetune_pairs(tiny_llama, [PAIRS[0], {"question": "q", "positive": "a"}], tmp_path / "a", dpo)
    with pytest.raises(SteerlabError, match=r"^pair 0: field 'positive': .*non-empty"):
        run_finetune_pairs(tiny_llama, [{**PAIRS[0], "positive": " "}], tmp_path / "a", dpo)
    with pytest.raises(SteerlabError, match="pair 0: expected a Pair or a mapping, got str"):
        run_finetune_pairs(tiny_llama, ["question"], tmp_path / "a", dpo)
    with pytest.raises(SteerlabError, match="--use 'both'"):
        run_finetune_pairs(tiny_llama, PAIRS, tmp_path / "a", dpo, use="both")
    with pytest.raises(SteerlabError, match="no pair keeps tokens of both answers within --max-length 4"):
        run_finetune_pairs(tiny_llama, PAIRS, tmp_path / "a", FinetuneConfig(**DPO, max_length=4))
    assert not (tmp_path / "a").exists()
