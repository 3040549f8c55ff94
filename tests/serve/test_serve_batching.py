"""steerlab serve, batching: merged steering orders, concurrent requests each getting their result
alone, groups within the context, disconnects, a failing batch, and a mixed load."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from serve_helpers import ERROR_FIELDS, PROMPTS, chat, reference

from steerlab.serve import background_server, create_app
from steerlab.serve.batcher import merge_order
from steerlab.steering.generation import generate_batch
from steerlab.steering.steerer import SteeringSpec

# --- batching -------------------------------------------------------------------------------------


def testmerge_order():
    assert merge_order([], ["a", "b"]) == ["a", "b"]
    assert merge_order(["a", "b"], ["b", "c"]) == ["a", "b", "c"]
    assert merge_order(["a", "b"], ["c", "b"]) == ["c", "a", "b"]
    assert merge_order(["a", "b"], ["b", "a"]) is None


def test_concurrent_requests_each_get_their_alone_result(client, server, tiny_llama, vec, other):
    """Requests arriving together (different coefficients, vectors, operators, orders, max_tokens,
    n, sampling) are batched, and each gets exactly what it gets alone."""
    v, o = vec, other
    add_other = {"vector": "other", "layer": 1, "coeff": 5.0}
    ablate_rand = {"vector": "rand", "layer": 1, "operator": "ablate"}
    cases = [
        (PROMPTS[0], None, [], {}),
        (PROMPTS[1], [{"vector": "rand", "layer": 2, "coeff": -4.0}], [SteeringSpec(v, 2, -4.0)], {}),
        (PROMPTS[2], [{"vector": "rand", "layer": 2, "coeff": 4.0}], [SteeringSpec(v, 2, 4.0)], {"max_tokens": 3}),
        (PROMPTS[0], [{"vector": "rand", "layer": 2, "coeff": 1.5}], [SteeringSpec(v, 2, 1.5)], {"n": 2}),
        (
            PROMPTS[1],
            [{"vector": "rand", "layer": "1-2", "coeff": 8.0, "scale": "unit"}],
            [SteeringSpec(v, [1, 2], 8.0, scale="unit")],
            {"max_tokens": 5},
        ),
        (
            PROMPTS[2],
            [{"vector": "other", "layer": 1, "coeff": 3.0, "positions": "response"}],
            [SteeringSpec(o, 1, 3.0, positions="response")],
            {},
        ),
        (
            PROMPTS[0],
            [{"vector": "rand", "layer": 1, "operator": "ablate"}],
            [SteeringSpec(v, 1, operator="ablate")],
            {},
        ),
        # the same two items in both orders (they do not commute at one layer)
        (PROMPTS[1], [add_other, ablate_rand], [SteeringSpec(o, 1, 5.0), SteeringSpec(v, 1, operator="ablate")], {}),
        (PROMPTS[1], [ablate_rand, add_other], [SteeringSpec(v, 1, operator="ablate"), SteeringSpec(o, 1, 5.0)], {}),
        (
            PROMPTS[2],
            [{"vector": "rand", "layer": 3, "operator": "cap", "floor": 2.0}],
            [SteeringSpec(v, 3, operator="cap", floor=2.0)],
            {},
        ),
        (
            PROMPTS[0],
            [{"vector": "rand", "layer": 2, "coeff": -2.0}],
            [SteeringSpec(v, 2, -2.0)],
            {"temperature": 0.8, "seed": 11},
        ),
        (
            PROMPTS[2],
            [{"vector": "rand", "layer": 0, "coeff": 2.5}],
            [SteeringSpec(v, 0, 2.5)],
            {"stop": ["zzz"], "max_tokens": 6},
        ),
    ] * 2
    wants = []
    for prompt, _, specs, kw in cases:
        gen_kw = {
            "max_new_tokens": kw.get("max_tokens", 8),
            "temperature": kw.get("temperature", 0.0),
            "seed": kw.get("seed"),
            "stop": kw.get("stop", ()),
        }
        wants.append(reference(tiny_llama, prompt, specs, **gen_kw))
    before = dict(server[1].batcher.stats)
    barrier = threading.Barrier(len(cases))

    def run(case):
        prompt, steering, _, kw = case
        barrier.wait()
        return chat(client, prompt, steering, **kw)

    with ThreadPoolExecutor(len(cases)) as pool:
        results = list(pool.map(run, cases))
    for case, got, want in zip(cases, results, wants, strict=True):
        for c in got.choices:
            assert c.message.content == want.text, case
            assert c.finish_reason == want.finish_reason, case
        assert got.usage.completion_tokens == len(got.choices) * want.n_new_tokens, case
    stats = server[1].batcher.stats
    assert stats["batches"] - before["batches"] < stats["requests"] - before["requests"]  # requests were grouped
    assert stats["max_batch_rows"] > 2


def test_groups_stay_within_the_context():
    """A long prompt and a long generation arriving together must not be batched past the context
    (GPT-2 has learned positions: past them it fails, it does not just degrade)."""
    from tiny import make_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    from steerlab.model.loading import wrap_model

    tok = make_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=48, bos_token_id=3, eos_token_id=2)
    ).eval()
    lm = wrap_model(model, tok, name="tiny-gpt2-48")
    words = ["the quick brown fox"]
    while len(tok(" ".join(words))["input_ids"]) < 30:
        words.append("the quick brown fox")
    jobs = [(" ".join(words), 4), ("yes", 40)]  # each fits alone; together they would not
    app = create_app(lm, None, batch_window_ms=200)
    with background_server(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)
        barrier = threading.Barrier(2)

        def run(job):
            barrier.wait()
            return client.completions.create(model="t", prompt=job[0], max_tokens=job[1], temperature=0)

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(run, jobs))
    for (prompt, max_tokens), got in zip(jobs, results, strict=True):
        want = generate_batch(lm, [prompt], chat=False, max_new_tokens=max_tokens)[0]
        assert got.choices[0].text == want.text


def test_client_disconnect_mid_stream(url, client):
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "yes"}],
        "max_tokens": 200,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
        first = next(r.iter_lines())
        assert first.startswith("data: ")
    assert chat(client, "yes", max_tokens=3).choices[0].message.content is not None


def test_failing_batch_fails_only_its_requests(client, monkeypatch):
    import steerlab.serve.batcher as batcher_module

    real = batcher_module.generate_batch

    def flaky(lm, prompts, **kwargs):
        if "EXPLODE" in json.dumps(prompts):
            raise RuntimeError("simulated failure")
        return real(lm, prompts, **kwargs)

    monkeypatch.setattr(batcher_module, "generate_batch", flaky)
    with pytest.raises(openai.InternalServerError) as info:
        chat(client, "EXPLODE now")
    assert "simulated failure" in info.value.body["message"] and info.value.body["type"] == "server_error"
    with pytest.raises(openai.APIError, match="simulated failure"):
        list(chat(client, "EXPLODE again", stream=True))
    assert chat(client, "yes", max_tokens=2).choices[0].finish_reason in ("stop", "length")


# --- load -----------------------------------------------------------------------------------------


def test_load_mixed_requests(client, url, tiny_llama):
    """200 requests, 16 at a time: steered, unsteered, streamed, completions and malformed ones."""
    coeffs = [-4.0, -1.0, 0.0, 2.0, 5.0]
    expected = {}
    for p in PROMPTS:  # what each valid request must answer (computed alone, through the server)
        expected[(p, None)] = chat(client, p, max_tokens=4).choices[0].message.content
        for c in coeffs:
            expected[(p, c)] = (
                chat(client, p, [{"vector": "rand", "layer": 2, "coeff": c}], max_tokens=4).choices[0].message.content
            )
    bad_bodies = [
        {"messages": [{"role": "user", "content": "x"}], "steering": [{"vector": "rand", "layer": 99}]},
        {"messages": [{"role": "user", "content": "x"}], "steering": [{"vector": "missing", "layer": 1}]},
        {"messages": "not a list"},
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000},
    ]
    http = httpx.Client(base_url=url, timeout=60)

    def one(i):
        prompt = PROMPTS[i % 3]
        coeff = coeffs[i % 5] if i % 4 else None
        body = {"model": "tiny", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4, "temperature": 0}
        if coeff is not None:
            body["steering"] = [{"vector": "rand", "layer": 2, "coeff": coeff}]
        if i % 10 == 9:
            r = http.post("/v1/chat/completions", json={"model": "tiny", **bad_bodies[i % 4]})
            return "bad", r.status_code, r.json()
        if i % 10 == 7:
            body["stream"] = True
            with http.stream("POST", "/v1/chat/completions", json=body) as r:
                lines = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in lines if c["choices"])
            return (prompt, coeff), r.status_code, text
        r = http.post("/v1/chat/completions", json=body)
        return (prompt, coeff), r.status_code, r.json()["choices"][0]["message"]["content"]

    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(200)))
    elapsed = time.monotonic() - start
    http.close()
    n_bad = 0
    for key, status, payload in results:
        if key == "bad":
            n_bad += 1
            assert status in (400, 404, 422) and set(payload["error"]) == ERROR_FIELDS
        else:
            assert status == 200 and payload == expected[key], key
    assert n_bad == 20
    assert elapsed < 60
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    assert chat(client, "yes", max_tokens=2).choices[0].message.content is not None
