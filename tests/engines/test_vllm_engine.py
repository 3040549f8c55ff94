"""The vllm engine on a tiny random Llama (vLLM on CPU, fp32): the same block outputs, the same steering at
the same positions, and the same results as the hf engine, under chunked prefill and prefix-cache hits."""

from __future__ import annotations

import pytest
import torch

from steerlab.activations.capture import ChatSample
from steerlab.engines.base import EngineConfig
from steerlab.errors import SteerlabError
from steerlab.model.chat import encode_chat
from steerlab.steering.steerer import SteeringSpec

pytestmark = pytest.mark.vllm

QUESTIONS = [
    "how should I store fresh bread so it stays soft for the whole week",
    "the quick brown fox jumps over the lazy dog and then what",
    "is water wet",
    "always back up your files before updating the system, why",
    "answer yes or no: is the sky blue",
    "drink water rest and see a doctor if the fever lasts more than three days, then store your files and "
    "answer the question about the lazy dog",
]
LAYER = 2


def _vector(seed: int, norm: float = 4.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(128, generator=gen)
    return v / v.norm() * norm


def _steered(p: int, positions: str, prompt_len: int) -> bool:
    return positions == "all" or (p < prompt_len if positions == "prompt" else p >= prompt_len - 1)


def test_block_outputs_equal_hf_hidden_states(vllm_llama, hf_llama):
    lm = hf_llama.lm
    caps = vllm_llama.capture([ChatSample(q) for q in QUESTIONS[:3]], range(4), full=True)
    for q, cap in zip(QUESTIONS[:3], caps, strict=True):
        ids = torch.tensor([encode_chat(lm.tokenizer, q).ids])
        last: list[torch.Tensor] = []
        handle = lm.blocks[3].register_forward_hook(
            lambda _m, _i, out, last=last: last.append(out[0] if isinstance(out, tuple) else out)
        )
        try:
            with torch.no_grad():
                hidden = lm.model(ids, output_hidden_states=True).hidden_states
        finally:
            handle.remove()
        for layer in range(4):
            # layer L = output of block L = hidden_states[L + 1] (HF norms its last entry: compare the raw block)
            want = last[0][0] if layer == 3 else hidden[layer + 1][0]
            got = torch.stack([cap.layers[layer]["full"][p] for p in range(ids.shape[1])])
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    long_prompt = caps[0].layers[0]
    assert long_prompt["forwards"] >= 2  # its prompt was prefilled in chunks of 16 tokens


@pytest.mark.parametrize("positions", ["all", "prompt", "response"])
def test_steered_minus_unsteered_is_c_v_exactly_at_the_steered_positions(vllm_llama, positions):
    v, c, new = _vector(1), 3.0, 4
    samples = [ChatSample(q) for q in QUESTIONS[:4]]
    spec = SteeringSpec(v, LAYER, c, positions=positions)
    caps = vllm_llama.capture(samples, [LAYER], steering=[spec], max_new_tokens=new, full=True, pre=True)
    for sample, cap in zip(samples, caps, strict=True):
        prompt_len = len(encode_chat(vllm_llama.tokenizer, sample.prompt).ids)
        entry = cap.layers[LAYER]
        # every prompt position and every decode step's input (the last new token is never fed back)
        assert sorted(entry["full"]) == list(range(prompt_len + new - 1))
        assert entry["forwards"] >= new - 1 + (2 if prompt_len > 16 else 1)  # chunked prefill, then decode steps
        for p, after in entry["full"].items():
            diff = after - entry["pre"][p]
            if _steered(p, positions, prompt_len):
                torch.testing.assert_close(diff, c * v, atol=2e-5, rtol=0)
            else:
                assert torch.equal(diff, torch.zeros_like(diff)), (positions, p)


def test_steering_is_exact_after_a_prefix_cache_hit(vllm_llama):
    v, c = _vector(2), -2.0
    sample = ChatSample(QUESTIONS[5])  # 50+ tokens: its first full block of 32 can be served from the cache
    prompt_len = len(encode_chat(vllm_llama.tokenizer, sample.prompt).ids)
    spec = SteeringSpec(v, LAYER, c, positions="response")
    kwargs = dict(steering=[spec], max_new_tokens=3, full=True, pre=True, salt="steered-hit-test")
    (first,) = vllm_llama.capture([sample], [LAYER], **kwargs)
    (second,) = vllm_llama.capture([sample], [LAYER], **kwargs)
    assert first.num_cached_tokens == 0 and second.num_cached_tokens >= 32
    entry = second.layers[LAYER]
    assert min(entry["full"]) == second.num_cached_tokens  # cached tokens never reach the hooks
    for p, after in entry["full"].items():
        diff = after - entry["pre"][p]
        if p >= prompt_len - 1:
            torch.testing.assert_close(diff, c * v, atol=2e-5, rtol=0)
        else:
            assert torch.equal(diff, torch.zeros_like(diff))
        torch.testing.assert_close(after, first.layers[LAYER]["full"][p], atol=1e-5, rtol=1e-5)
    assert second.token_ids == first.token_ids


def test_operators_and_scales_act_on_the_block_output(vllm_llama, hf_llama):
    v = _vector(3)
    unit = v / v.norm()
    sample = [ChatSample(QUESTIONS[2])]
    norms = hf_llama.mean_residual_norms([ChatSample(q) for q in QUESTIONS])

    def run(spec):
        (cap,) = vllm_llama.capture(sample, [LAYER], steering=[spec], full=True, pre=True)
        entry = cap.layers[LAYER]
        return torch.stack([entry["pre"][p] for p in sorted(entry["pre"])]), torch.stack(
            [entry["full"][p] for p in sorted(entry["full"])]
        )

    pre, after = run(SteeringSpec(v, LAYER, 1.0, operator="ablate"))
    assert (after @ unit).abs().max() < 1e-5 < (pre @ unit).abs().max()
    torch.testing.assert_close(
        after - (after @ unit)[:, None] * unit, pre - (pre @ unit)[:, None] * unit, atol=1e-5, rtol=0
    )
    ceiling = float((pre @ unit).median())
    pre, after = run(SteeringSpec(v, LAYER, operator="cap", ceiling=ceiling))
    torch.testing.assert_close(after @ unit, (pre @ unit).clamp(max=ceiling), atol=1e-5, rtol=0)
    pre, after = run(SteeringSpec(v, LAYER, 2.0, scale="unit"))
    torch.testing.assert_close(after - pre, (2.0 * unit).expand_as(pre), atol=1e-5, rtol=0)
    spec = SteeringSpec(v, LAYER, 0.5, scale="relative")
    with pytest.raises(SteerlabError, match="relative"):
        vllm_llama.generate([QUESTIONS[0]], steering=spec, max_new_tokens=2)
    (ours,) = vllm_llama.generate([QUESTIONS[0]], steering=spec, max_new_tokens=4, reference_norms=norms)
    (theirs,) = hf_llama.generate([QUESTIONS[0]], steering=spec, max_new_tokens=4, reference_norms=norms)
    assert ours.token_ids == theirs.token_ids


def _specs() -> list[SteeringSpec]:
    """Rows 0-2: one vector at per-row coefficients; row 3: ablation of another vector at all layers; row 4:
    a cap at two layers; row 5: two specs stacked at one layer; row 6: unsteered."""
    v1, v2 = _vector(4, 6.0), _vector(5, 6.0)
    return [
        SteeringSpec(v1, LAYER, [4.0, -4.0, 0.5, 0, 0, 1.0, 0], positions="response", rows=[0, 1, 2, 5]),
        SteeringSpec(v2, "all", 1.0, operator="ablate", positions="all", rows=[3]),
        SteeringSpec(v2, "1,3", operator="cap", ceiling=0.1, floor=-0.1, rows=[4]),
        SteeringSpec(v2, LAYER, 3.0, positions="prompt", rows=[5]),
    ]


def test_greedy_generations_and_margins_equal_the_hf_engine(vllm_llama, hf_llama):
    prompts = [*QUESTIONS, QUESTIONS[0]]
    kwargs = dict(steering=_specs(), max_new_tokens=12, top_logprobs=3)
    ours, reference = vllm_llama.generate(prompts, **kwargs), hf_llama.generate(prompts, **kwargs)
    for a, b in zip(ours, reference, strict=True):
        assert a.token_ids == b.token_ids and a.text == b.text and a.finish_reason == b.finish_reason
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0)
        assert [t for t, _ in a.top_logprobs[0]] == [t for t, _ in b.top_logprobs[0]]
    samples = [ChatSample(q, "yes it is the answer you wanted") for q in prompts]
    for positions in ("response", "all", "prompt"):
        specs = [SteeringSpec(_vector(6), LAYER, 1.0, positions=positions)]
        coeffs = [0.0, 2.0, -2.0, 4.0, -4.0, 1.0, 0.5]
        torch.testing.assert_close(
            vllm_llama.response_logprobs(samples, specs, coeffs),
            hf_llama.response_logprobs(samples, specs, coeffs),
            atol=1e-4,
            rtol=0,
        )


def test_a_mixed_batch_equals_each_row_run_alone(vllm_llama):
    prompts = [*QUESTIONS, QUESTIONS[0]]
    specs = _specs()
    batch = vllm_llama.generate(prompts, steering=specs, max_new_tokens=10, top_logprobs=1)
    for i, prompt in enumerate(prompts):
        own = [s.select_rows([i], len(prompts)) for s in specs]
        own = [s for s in own if s.rows is None or bool(torch.as_tensor(s.rows).any())]
        (alone,) = vllm_llama.generate([prompt], steering=own, max_new_tokens=10, top_logprobs=1)
        assert alone.token_ids == batch[i].token_ids, i
        torch.testing.assert_close(torch.tensor(alone.logprobs), torch.tensor(batch[i].logprobs), atol=1e-5, rtol=0)


def test_a_cast_condition_gates_rows_as_on_the_hf_engine(vllm_llama, hf_llama):
    """The gate is decided host-side from the workers' prompt activations: the hf engine's similarities;
    gated rows equal vLLM's plain steering, the others its unsteered generation; margins as on hf."""
    from steerlab.steering.conditions import Condition, condition_similarities, gate_samples

    probe = Condition(_vector(9), LAYER, 0.0)
    sims = condition_similarities(vllm_llama, [probe], gate_samples(QUESTIONS))[0]
    torch.testing.assert_close(
        sims, condition_similarities(hf_llama, [probe], gate_samples(QUESTIONS))[0], atol=1e-5, rtol=0
    )
    ordered = sims.sort().values
    cond = Condition(probe.vector, LAYER, float(ordered[2] + ordered[3]) / 2)  # between two prompts, far from both
    met = cond.passes(sims).tolist()
    spec = SteeringSpec(_vector(1), LAYER, 3.0)
    plain = vllm_llama.generate(QUESTIONS, steering=[spec], max_new_tokens=8)
    unsteered = vllm_llama.generate(QUESTIONS, max_new_tokens=8)
    gated = vllm_llama.generate(
        QUESTIONS, steering=[SteeringSpec(_vector(1), LAYER, 3.0, condition=cond)], max_new_tokens=8
    )
    for passed, p, u, g in zip(met, plain, unsteered, gated, strict=True):
        assert g.token_ids == (p.token_ids if passed else u.token_ids)
    samples = [ChatSample(q, "yes it is the answer you wanted") for q in QUESTIONS]
    conditional = [SteeringSpec(_vector(6), LAYER, 2.0, positions="response", condition=cond)]
    torch.testing.assert_close(
        vllm_llama.response_logprobs(samples, conditional),
        hf_llama.response_logprobs(samples, conditional),
        atol=1e-4,
        rtol=0,
    )


def test_steered_requests_never_share_cache_blocks_with_unsteered_ones(vllm_llama):
    prompt = [QUESTIONS[5]]
    baseline = vllm_llama.generate(prompt, max_new_tokens=8)[0]
    steered = vllm_llama.generate(prompt, steering=SteeringSpec(_vector(7), 1, 20.0), max_new_tokens=8)[0]
    again = vllm_llama.generate(prompt, max_new_tokens=8)[0]
    assert steered.token_ids != baseline.token_ids  # the steering changes the text ...
    assert steered.cached_tokens == 0  # ... and its blocks are its own
    assert again.token_ids == baseline.token_ids and again.cached_tokens >= 32  # unsteered rows still share
    other = vllm_llama.generate(prompt, steering=SteeringSpec(_vector(7), 1, 21.0), max_new_tokens=8)[0]
    same = vllm_llama.generate(prompt, steering=SteeringSpec(_vector(7), 1, 20.0), max_new_tokens=8)[0]
    assert other.cached_tokens == 0 and same.cached_tokens >= 32 and same.token_ids == steered.token_ids


def test_an_adapter_runs_as_lora_rows_beside_the_base(vllm_llama, hf_llama, tiny_vllm_llama_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_vllm_llama_dir)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(tmp_path / "adapter")
    spec = SteeringSpec(_vector(8), LAYER, 2.0, positions="response")
    with vllm_llama.adapter(str(tmp_path / "adapter")) as tuned, hf_llama.adapter(str(tmp_path / "adapter")) as ref:
        for ours, theirs in ((tuned, ref), (vllm_llama, hf_llama)):  # the base engines run the base inside
            a = ours.generate(QUESTIONS[:3], steering=spec, max_new_tokens=8)
            b = theirs.generate(QUESTIONS[:3], steering=spec, max_new_tokens=8)
            assert [g.token_ids for g in a] == [g.token_ids for g in b]
        assert tuned.generate(QUESTIONS[:1], max_new_tokens=8) != vllm_llama.generate(QUESTIONS[:1], max_new_tokens=8)


def test_bad_input_is_refused_before_any_generation(vllm_llama):
    before = sum(s["forwards"] for s in vllm_llama.llm.collective_rpc("steerlab_status"))
    with pytest.raises(SteerlabError, match="d_model"):
        vllm_llama.generate(QUESTIONS[:2], steering=SteeringSpec(torch.ones(64), LAYER, 1.0))
    with pytest.raises(SteerlabError, match="layer 9"):
        vllm_llama.generate(QUESTIONS[:2], steering=SteeringSpec(_vector(9), 9, 1.0))
    with pytest.raises(SteerlabError, match="per-row coefficients"):
        vllm_llama.generate(QUESTIONS[:2], steering=SteeringSpec(_vector(9), 1, [1.0, 2.0, 3.0]))
    with pytest.raises(SteerlabError, match="NaN"):
        vllm_llama.response_logprobs([ChatSample("q", "a")], [SteeringSpec(torch.full((128,), float("nan")), 1)])
    after = sum(s["forwards"] for s in vllm_llama.llm.collective_rpc("steerlab_status"))
    assert after == before  # nothing reached the model
    assert vllm_llama.generate(QUESTIONS[:1], max_new_tokens=2)  # and the engine still serves


def test_settings_that_would_bypass_the_hooks_are_refused(tiny_vllm_llama_dir, monkeypatch):
    from steerlab.engines.vllm.engine import VllmEngine

    with pytest.raises(SteerlabError, match=r"vLLM 0\.32.*enforce_eager=False"):
        VllmEngine(str(tiny_vllm_llama_dir), EngineConfig("vllm", options={"enforce_eager": False}))
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    with pytest.raises(SteerlabError, match=r"VLLM_USE_V2_MODEL_RUNNER=1.*V2 model runner"):
        VllmEngine(str(tiny_vllm_llama_dir))
