"""steerlab serve exposed and under load (as vLLM's OpenAI server): the API key (401), the bounded queue
(429 with Retry-After; every accepted request still completes correctly), GET /health, and size limits
answered with 400 before any model work. Real HTTP on 127.0.0.1 only; every loop is bounded."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from serve_helpers import ERROR_FIELDS, PROMPTS, chat, post_error, reference

from steerlab.errors import SteerlabError
from steerlab.serve import ServeConfig, background_server, create_app
from steerlab.serve.config import API_KEY_ENV
from steerlab.serve.runner import is_loopback
from steerlab.steering.steerer import SteeringSpec

KEY = "test-key-123"
CHAT = "/v1/chat/completions"


def _body(prompt="yes", **kw):
    return {"model": "tiny", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4, "temperature": 0, **kw}


# --- API key --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(tiny_llama, vectors_dir):
    app = create_app(tiny_llama, vectors_dir, api_key=KEY, batch_window_ms=5)
    with background_server(app) as url:
        yield url


def test_requests_without_the_key_get_401(keyed, tiny_llama, vec):
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": KEY},
        {"Authorization": "Basic " + KEY},
        {"Authorization": "Bearer"},
    ):
        status, err = post_error(keyed, CHAT, _body(), headers=headers)
        assert status == 401, headers
        assert err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error", err
        assert KEY not in err["message"]  # the key is never echoed
    r = httpx.post(f"{keyed}{CHAT}", json=_body(), timeout=30)
    assert r.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in r.json()["error"]["message"]
    # every route but GET /health, unknown ones included (routes are not revealed to strangers)
    for method, path in [
        ("GET", "/v1/models"),
        ("GET", "/v1/vectors"),
        ("POST", "/v1/completions"),
        ("GET", "/v1/nothing"),
        ("POST", "/health"),
        ("GET", "/docs"),
    ]:
        r = httpx.request(method, f"{keyed}{path}", timeout=30)
        assert r.status_code == 401 and set(r.json()["error"]) == ERROR_FIELDS, (method, path)
    health = httpx.get(f"{keyed}/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    # the openai client: wrong key -> AuthenticationError; right key -> the same answer as alone
    with pytest.raises(openai.AuthenticationError):
        chat(openai.OpenAI(base_url=f"{keyed}/v1", api_key="nope", max_retries=0, timeout=30), "yes")
    client = openai.OpenAI(base_url=f"{keyed}/v1", api_key=KEY, max_retries=0, timeout=60)
    steering = [{"vector": "rand", "layer": 2, "coeff": 3.0}]
    got = chat(client, PROMPTS[0], steering)
    assert got.choices[0].message.content == reference(tiny_llama, PROMPTS[0], [SteeringSpec(vec, 2, 3.0)]).text
    stream = list(chat(client, PROMPTS[1], stream=True))
    assert (
        "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == reference(tiny_llama, PROMPTS[1]).text
    )
    assert [m.id for m in client.models.list().data] == ["tiny-llama"]
    r = httpx.post(f"{keyed}{CHAT}", json=_body(), headers={"authorization": f"bearer {KEY}"}, timeout=60)
    assert r.status_code == 200  # header name and scheme are case-insensitive


def test_api_key_from_the_environment(monkeypatch, tiny_llama):
    monkeypatch.setenv(API_KEY_ENV, "env-key")
    assert ServeConfig().api_key == "env-key"
    assert ServeConfig(api_key=None).api_key is None  # explicitly off
    app = create_app(tiny_llama)
    with background_server(app) as url:
        assert httpx.get(f"{url}/v1/models", timeout=30).status_code == 401
        assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer env-key"}, timeout=30).status_code == 200
    monkeypatch.setenv(API_KEY_ENV, "")
    assert ServeConfig().api_key is None  # empty means unset
    with pytest.raises(SteerlabError, match="--api-key"):
        ServeConfig(api_key="  ")


# --- bounded queue --------------------------------------------------------------------------------


def _burst(url, cases):
    """Send every (prompt, steering, stream) case at once (a barrier releases them together); returns
    (status, headers, body) per case, a stream's text gathered into a chat-shaped body."""
    barrier = threading.Barrier(len(cases))
    with httpx.Client(base_url=url, timeout=60) as http:

        def send(case):
            prompt, steering, stream = case
            body = _body(prompt, steering=steering, stream=stream)
            barrier.wait(30)
            if not stream:
                r = http.post(CHAT, json=body)
                return r.status_code, r.headers, r.json()
            with http.stream("POST", CHAT, json=body) as r:
                raw = [line for line in r.iter_lines() if line]
            if r.status_code != 200:
                return r.status_code, r.headers, json.loads(raw[0])
            assert raw[-1] == "data: [DONE]"
            chunks = [json.loads(line[6:]) for line in raw[:-1]]
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
            return 200, r.headers, {"choices": [{"message": {"content": text}}]}

        with ThreadPoolExecutor(len(cases)) as pool:
            return list(pool.map(send, cases))


def _check_burst(lm, vec, cases, results):
    """Each refused request got 429 in OpenAI's shape with Retry-After; each accepted one got exactly
    its result alone. Returns (accepted, refused) counts."""
    n_ok = 0
    for (prompt, steering, _), (status, headers, body) in zip(cases, results, strict=True):
        if status == 200:
            n_ok += 1
            want = reference(lm, prompt, [SteeringSpec(vec, 2, steering[0]["coeff"])], max_new_tokens=4)
            assert body["choices"][0]["message"]["content"] == want.text
        else:
            assert status == 429 and set(body["error"]) == ERROR_FIELDS, body
            assert body["error"]["code"] == "rate_limit_exceeded" and "--max-queue" in body["error"]["message"]
            assert int(headers["retry-after"]) >= 1
    return n_ok, len(results) - n_ok


def _cases(n):
    return [(PROMPTS[i % 3], [{"vector": "rand", "layer": 2, "coeff": float(i - 5)}], i % 4 == 3) for i in range(n)]


def test_burst_past_the_queue_bound_gets_429_and_every_accepted_request_completes(tiny_llama, vectors_dir, vec):
    """max_queue=3 with a 2 s batch window: the worker holds the first arrivals while it waits for
    more, so of a burst of 10 exactly 3 wait and 7 are refused at once; the 3 then run as one batch
    and each gets exactly its result alone."""
    app = create_app(tiny_llama, vectors_dir, api_key=None, max_queue=3, batch_window_ms=2000)
    cases = _cases(10)
    with background_server(app) as url:
        results = _burst(url, cases)
        assert _check_burst(tiny_llama, vec, cases, results) == (3, 7), [r[0] for r in results]
        # the server keeps serving, and /health shows the counts
        assert httpx.post(f"{url}{CHAT}", json=_body(), timeout=60).status_code == 200
        health = httpx.get(f"{url}/health", timeout=30).json()
        assert health["status"] == "ok" and health["queue_depth"] == 0 and health["max_queue"] == 3
        assert health["rejected"] == 7 and health["submitted"] == 4
    assert app.state.steerlab.batcher.stats["requests"] == 4


def test_burst_while_the_worker_generates(tiny_llama, vectors_dir, vec):
    """max_batch=1, max_queue=2, no batch window: the worker runs one request at a time while the burst
    arrives. However the timing falls, every request is answered: 429, or exactly its result alone."""
    app = create_app(tiny_llama, vectors_dir, api_key=None, max_queue=2, max_batch=1, batch_window_ms=0)
    cases = _cases(12)
    with background_server(app) as url:
        n_ok, n_refused = _check_burst(tiny_llama, vec, cases, _burst(url, cases))
        health = httpx.get(f"{url}/health", timeout=30).json()
    assert n_ok >= 1 and health["rejected"] == n_refused and health["submitted"] == n_ok
    assert health["queue_depth"] == 0


# --- size limits ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(tiny_llama, vectors_dir):
    app = create_app(
        tiny_llama,
        vectors_dir,
        api_key=None,
        max_n=2,
        max_tokens_limit=10,
        max_prompt_tokens=24,
        max_steering_items=2,
        default_max_tokens=8,
    )
    with background_server(app) as url:
        yield url, app.state.steerlab


def test_size_limits_answer_400_naming_the_field_before_model_work(limited, tiny_llama):
    url, state = limited
    long_prompt = " ".join(["the quick brown fox"] * 10)
    assert len(tiny_llama.tokenizer(long_prompt)["input_ids"]) > 24
    three = [{"vector": "rand", "layer": 1, "coeff": 1.0}] * 2 + [{"vector": "missing", "layer": 1}]
    cases = [
        (CHAT, _body(n=3), "n", "--max-n", "2"),
        (CHAT, _body(n=3, stream=True), "n", "--max-n", "2"),
        (CHAT, _body(max_tokens=11), "max_tokens", "--max-tokens-limit", "10"),
        (CHAT, _body(max_completion_tokens=50), "max_completion_tokens", "--max-tokens-limit", "10"),
        (CHAT, _body(steering=three), "steering", "--max-steering-items", "2"),  # before 'missing' is looked up
        (CHAT, _body(long_prompt), "messages", "--max-prompt-tokens", "24"),
        ("/v1/completions", {"prompt": "yes", "max_tokens": 1000}, "max_tokens", "--max-tokens-limit", "10"),
        ("/v1/completions", {"prompt": ["yes", long_prompt]}, "prompt[1]", "--max-prompt-tokens", "24"),
        ("/v1/completions", {"prompt": long_prompt, "stream": True}, "prompt", "--max-prompt-tokens", "24"),
    ]
    before = state.batcher.health()
    for path, body, param, flag, limit in cases:
        status, err = post_error(url, path, body)
        assert status == 400 and err["param"] == param and err["code"] == "limit_exceeded", (body, err)
        assert err["message"].startswith(f"{param}: ") and flag in err["message"], err
        assert f"limit of {limit} " in err["message"], err
    assert state.batcher.health() == before  # no job reached the batcher
    # at the limits, requests are served; without max_tokens a chat gets the default
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=60)
    got = chat(client, "yes", [{"vector": "rand", "layer": 1}] * 2, n=2, max_tokens=10)
    assert len(got.choices) == 2
    got = client.chat.completions.create(model="t", messages=[{"role": "user", "content": PROMPTS[0]}], temperature=0)
    assert got.choices[0].message.content == reference(tiny_llama, PROMPTS[0], max_new_tokens=8).text


def test_the_context_bounds_the_prompt_beyond_the_token_limit(url, server):
    """With --max-prompt-tokens above the model's 256 positions, the context still refuses."""
    before = server[1].batcher.health()
    status, err = post_error(url, "/v1/completions", {"model": "t", "prompt": "yes " * 300})
    assert status == 400 and err["code"] == "context_length_exceeded" and "256" in err["message"]
    assert server[1].batcher.health() == before


def test_health_reports_ok_and_the_queue(url):
    health = httpx.get(f"{url}/health", timeout=30).json()
    assert health["status"] == "ok" and health["model"] == "tiny-llama"
    assert health["queue_depth"] == 0 and health["max_queue"] == ServeConfig().max_queue
    assert {"batches", "rows", "requests", "submitted", "rejected", "running"} <= set(health)


# --- settings -------------------------------------------------------------------------------------


def test_settings_are_validated_naming_the_flag(tiny_llama, tmp_path):
    assert ServeConfig().host == "127.0.0.1"
    for kwargs, needle in [
        ({"max_queue": 0}, "--max-queue"),
        ({"max_n": 0}, "--max-n"),
        ({"max_prompt_tokens": 0}, "--max-prompt-tokens"),
        ({"max_batch": 0}, "--max-batch"),
        ({"max_tokens_limit": 100, "default_max_tokens": 200}, "--default-max-tokens"),
        ({"max_steering_items": -1}, "--max-steering-items"),
        ({"max_context": 1}, "--max-context"),
        ({"batch_window_ms": float("nan")}, "--batch-window-ms"),
        ({"port": -1}, "--port"),
        ({"vectors_dir": tmp_path / "absent"}, "--vectors"),
    ]:
        with pytest.raises(SteerlabError, match=needle):
            ServeConfig(**kwargs)
        with pytest.raises(SteerlabError, match=needle):
            create_app(tiny_llama, **kwargs)
    with pytest.raises(SteerlabError, match=r"unknown serve setting.*max_queues"):
        create_app(tiny_llama, max_queues=3)
    config = ServeConfig(max_queue=7, api_key=None)
    app = create_app(tiny_llama, config=config, max_n=4)
    assert app.state.steerlab.config == ServeConfig(max_queue=7, max_n=4, api_key=None)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
