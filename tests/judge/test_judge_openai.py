"""steerlab.judge.openai_compat: real HTTP exchanges with a fake OpenAI-compatible server on 127.0.0.1."""

import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from steerlab.errors import SteerlabError
from steerlab.judge import make_judge


def completion(top: dict[str, float], model: str = "judge-model") -> dict:
    first = max(top, key=top.get)
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "length",
                "message": {"role": "assistant", "content": first},
                "logprobs": {
                    "content": [
                        {
                            "token": first,
                            "logprob": top[first],
                            "bytes": None,
                            "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in top.items()],
                        }
                    ]
                },
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
    }


class FakeServer:
    """Counts requests and in-flight requests; fails the first `fail_first` with `fail_status`."""

    def __init__(self, fail_first=0, fail_status=500, delay=0.0, logprobs=True):
        self.fail_first, self.fail_status, self.delay, self.logprobs = fail_first, fail_status, delay, logprobs
        self.hits = 0
        self.inflight = self.max_inflight = 0
        self.bodies = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.hits += 1
                    hit = server.hits
                    server.bodies.append(body)
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                try:
                    time.sleep(server.delay)
                    if hit <= server.fail_first:
                        self._send(server.fail_status, {"error": {"message": "boom", "type": "server_error"}})
                        return
                    prompt = body["messages"][0]["content"]
                    if "refuse" in prompt:
                        top = {"REFUSAL": math.log(0.9), "0": math.log(0.05)}
                    else:
                        top = {"80": math.log(0.5), " 80": math.log(0.1), "90": math.log(0.3), "The": math.log(0.1)}
                    payload = completion(top)
                    if not server.logprobs:
                        payload["choices"][0]["logprobs"] = None
                    self._send(200, payload)
                finally:
                    with server.lock:
                        server.inflight -= 1

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


EXPECTED = (80 * 0.6 + 90 * 0.3) / 0.9


def _judge(url, tmp_path, **kwargs):
    kwargs.setdefault("retry_base_delay", 0.01)
    return make_judge("openai:judge-model", base_url=url, api_key="sk-test", cache_dir=tmp_path, **kwargs)


def test_openai_request_and_score(tmp_path):
    with FakeServer() as server:
        judge = _judge(server.url, tmp_path)
        assert judge.score(["rate this", "please refuse"]) == [pytest.approx(EXPECTED), None]
    body = server.bodies[0]
    assert body["messages"] == [{"role": "user", "content": body["messages"][0]["content"]}]
    assert (body["max_tokens"], body["logprobs"], body["top_logprobs"], body["temperature"]) == (1, True, 20, 0)
    assert body["model"] == "judge-model"


def test_openai_retries_5xx_then_scores(tmp_path):
    with FakeServer(fail_first=2) as server:
        judge = _judge(server.url, tmp_path)
        assert judge.score(["rate this"]) == [pytest.approx(EXPECTED)]
    assert server.hits == 3 and judge.requests == 3


def test_openai_retries_429(tmp_path):
    with FakeServer(fail_first=1, fail_status=429) as server:
        assert _judge(server.url, tmp_path).score(["rate this"]) == [pytest.approx(EXPECTED)]
    assert server.hits == 2


def test_openai_gives_up_with_none_and_keeps_the_run(tmp_path, caplog):
    with FakeServer(fail_first=4) as server:
        judge = _judge(server.url, tmp_path, max_retries=1, concurrency=1)
        scores = judge.score(["first", "second", "third"])
    # "first" and "second" use up the 4 failures (2 tries each), "third" succeeds
    assert scores == [None, None, pytest.approx(EXPECTED)]
    assert "scored None" in caplog.text
    assert len(judge.cache) == 1  # failures are not cached: a rerun asks again


def test_openai_unreachable_endpoint_gives_none(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    judge = _judge(f"http://127.0.0.1:{port}/v1", tmp_path, max_retries=2, timeout=5)
    assert judge.score(["a", "b", "c"]) == [None, None, None]
    assert judge.requests == 9
    # a dead endpoint is not asked again and again: after `give_up_after` failed prompts in a
    # row, the rest are None without requests
    judge = _judge(f"http://127.0.0.1:{port}/v1", tmp_path, max_retries=1, concurrency=2, give_up_after=2)
    assert judge.score([f"p{i}" for i in range(50)]) == [None] * 50
    assert judge.requests <= 8


def test_openai_auth_error_is_a_clear_error(tmp_path):
    with (
        FakeServer(fail_first=5, fail_status=401) as server,
        pytest.raises(SteerlabError, match="HTTP 401, authentication failed"),
    ):
        _judge(server.url, tmp_path).score(["a"])


def test_openai_without_logprobs_gives_none(tmp_path):
    with FakeServer(logprobs=False) as server:
        assert _judge(server.url, tmp_path).score(["a"]) == [None]


def test_openai_disk_cache_makes_no_requests(tmp_path):
    prompts = [f"rate answer {i}" for i in range(5)] + ["please refuse"]
    with FakeServer() as server:
        first = _judge(server.url, tmp_path).score(prompts + prompts[:2])
        assert server.hits == 6  # duplicates asked once
        again = _judge(server.url, tmp_path)
        assert again.score(prompts) == first[:6]
        assert server.hits == 6 and again.requests == 0
        other_model = make_judge("openai:other", base_url=server.url, api_key="k", cache_dir=tmp_path)
        other_model.score(prompts[:1])
        assert server.hits == 7  # the cache key includes the judge


def test_openai_bounded_concurrency(tmp_path):
    with FakeServer(delay=0.15) as server:
        judge = _judge(server.url, tmp_path, concurrency=3)
        start = time.perf_counter()
        scores = judge.score([f"rate answer {i}" for i in range(9)])
        elapsed = time.perf_counter() - start
    assert scores == [pytest.approx(EXPECTED)] * 9
    assert server.max_inflight == 3
    assert elapsed < 9 * 0.15  # it did run in parallel
