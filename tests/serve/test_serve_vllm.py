"""steerlab serve on the vllm engine (vLLM's continuous batching): real HTTP on loopback with the official
openai client; the same API, and every answer equals the engine's own generation of that request alone
(and the hf engine's), whatever else runs beside it."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest
import torch
from serve_helpers import chat, post_error

from steerlab import SteeringVector
from steerlab.serve import background_server, create_app
from steerlab.steering.steerer import SteeringSpec

pytestmark = pytest.mark.vllm

PROMPTS = ["how should I store fresh bread so it stays soft", "is water wet", "answer briefly: the quick brown fox"]


@pytest.fixture(scope="module")
def steer_vector():
    gen = torch.Generator().manual_seed(3)
    return SteeringVector(torch.randn(4, 128, generator=gen) * 3, {"method": "test"})


@pytest.fixture(scope="module")
def vllm_url(vllm_llama, steer_vector, tmp_path_factory):
    vectors = tmp_path_factory.mktemp("vllm-vectors")
    steer_vector.save(vectors / "v.safetensors")
    with background_server(create_app(vllm_llama, vectors, max_batch=8, max_queue=16, api_key=None)) as url:
        yield url


@pytest.fixture(scope="module")
def vllm_client(vllm_url):
    return openai.OpenAI(base_url=f"{vllm_url}/v1", api_key="unused", max_retries=0)


def _alone(engine, prompt, specs=(), **kwargs):
    kwargs.setdefault("max_new_tokens", 8)
    return engine.generate([prompt], steering=list(specs), **kwargs)[0]


def test_health_and_models_name_the_engine(vllm_url, vllm_client):
    health = httpx.get(f"{vllm_url}/health").json()
    assert health["status"] == "ok" and health["engine"] == "vllm"
    (model,) = vllm_client.models.list().data
    assert model.model_extra["n_layers"] == 4 and model.model_extra["device"] == "vllm"


@pytest.mark.parametrize(
    ("steering", "specs"),
    [
        (None, lambda v: []),
        ([{"vector": "v", "layer": 2, "coeff": 3.0}], lambda v: [SteeringSpec(v, 2, 3.0)]),
        (
            [{"vector": "v", "layer": "1-2", "coeff": 4.0, "scale": "unit", "positions": "response"}],
            lambda v: [SteeringSpec(v, [1, 2], 4.0, scale="unit", positions="response")],
        ),
        (
            [{"vector": "v", "layer": "all", "operator": "ablate"}, {"vector": "v", "layer": 3, "coeff": -2.0}],
            lambda v: [SteeringSpec(v, "all", 1.0, operator="ablate"), SteeringSpec(v, 3, -2.0)],
        ),
    ],
)
def test_answers_equal_the_request_run_alone(vllm_client, vllm_llama, hf_llama, steer_vector, steering, specs):
    got = chat(vllm_client, PROMPTS[0], steering, max_tokens=8).choices[0].message.content
    assert got == _alone(vllm_llama, PROMPTS[0], specs(steer_vector)).text
    assert got == _alone(hf_llama, PROMPTS[0], specs(steer_vector)).text


def test_concurrent_requests_with_different_steering_each_get_their_own_answer(vllm_client, vllm_llama, steer_vector):
    cases = [(p, c) for p in PROMPTS for c in (None, 2.0, -3.0)]
    expected = [
        _alone(vllm_llama, p, [] if c is None else [SteeringSpec(steer_vector, 2, c)], max_new_tokens=10).text
        for p, c in cases
    ]
    got: dict[int, str] = {}

    def ask(i: int) -> None:
        prompt, coeff = cases[i]
        steering = None if coeff is None else [{"vector": "v", "layer": 2, "coeff": coeff}]
        got[i] = chat(vllm_client, prompt, steering, max_tokens=10).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [got.get(i) for i in range(len(cases))] == expected


def test_streams_logprobs_stop_and_n(vllm_url, vllm_client, vllm_llama, steer_vector):
    steering = [{"vector": "v", "layer": 2, "coeff": 2.0}]
    whole = chat(vllm_client, PROMPTS[1], steering, max_tokens=12).choices[0].message.content
    stream = vllm_client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": PROMPTS[1]}], max_tokens=12, temperature=0,
        stream=True, extra_body={"steering": steering},
    )  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == whole
    answer = chat(vllm_client, PROMPTS[1], steering, max_tokens=6, logprobs=True, top_logprobs=2).choices[0]
    reference = _alone(vllm_llama, PROMPTS[1], [SteeringSpec(steer_vector, 2, 2.0)], max_new_tokens=6, top_logprobs=2)
    lps = [t.logprob for t in answer.logprobs.content]
    torch.testing.assert_close(torch.tensor(lps), torch.tensor(reference.logprobs[: len(lps)]), atol=1e-5, rtol=0)
    assert all(len(t.top_logprobs) == 2 for t in answer.logprobs.content)
    stop = whole[3:6]
    if stop.strip():
        cut = chat(vllm_client, PROMPTS[1], steering, max_tokens=12, stop=[stop]).choices[0]
        assert cut.message.content == whole[: whole.find(stop)] and cut.finish_reason == "stop"
    body = {"model": "tiny", "prompt": PROMPTS[2], "max_tokens": 5, "temperature": 0, "n": 2}
    choices = httpx.post(f"{vllm_url}/v1/completions", json=body, timeout=60).json()["choices"]
    assert len(choices) == 2 and choices[0]["text"] == choices[1]["text"]  # greedy: the same twice


def test_bad_steering_is_answered_before_any_generation(vllm_url):
    messages = [{"role": "user", "content": "hi"}]
    status, error = post_error(
        vllm_url, "/v1/chat/completions", {"messages": messages, "steering": [{"vector": "nope", "layer": 1}]}
    )
    assert status == 404 and "nope" in error["message"]
    status, error = post_error(
        vllm_url, "/v1/chat/completions", {"messages": messages, "steering": [{"vector": "v", "layer": 9}]}
    )
    assert status == 400 and error["param"] == "steering[0].layer"
    assert json.loads(httpx.get(f"{vllm_url}/health").text)["status"] == "ok"


def test_a_burst_past_the_queue_bound_gets_429_and_the_rest_their_answers(vllm_llama, steer_vector, vllm_url):
    """max_batch=1, max_queue=1: one request runs in the engine, one waits, the others get 429 with
    Retry-After at once; every accepted request gets exactly its answer alone. (This app steps the same
    engine as the module's server, which is idle meanwhile.)"""
    app = create_app(vllm_llama, None, max_batch=1, max_queue=1, api_key=None)
    body = {"model": "tiny", "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 24, "temperature": 0}
    expected = _alone(vllm_llama, PROMPTS[0], max_new_tokens=24).text
    answers: dict[int, httpx.Response] = {}
    with background_server(app) as url:

        def ask(i: int) -> None:
            answers[i] = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        health = httpx.get(f"{url}/health").json()
    codes = sorted(r.status_code for r in answers.values())
    assert codes.count(200) >= 1 and set(codes) <= {200, 429} and 429 in codes, codes
    for r in answers.values():
        if r.status_code == 200:
            assert r.json()["choices"][0]["message"]["content"] == expected
        else:
            assert int(r.headers["Retry-After"]) >= 1
    assert health["rejected"] == codes.count(429) and health["queue_depth"] == 0
