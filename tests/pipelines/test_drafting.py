"""`traits new` against a real OpenAI-compatible HTTP endpoint on loopback (a scripted chat model)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from steerlab.errors import SteerlabError
from steerlab.pipelines.drafting import LocalChat, draft_trait, parse_json_object

GOOD = {
    "instruction": [{"pos": f"Be very gloomy {i}.", "neg": f"Be neutral {i}."} for i in range(5)],
    "questions": [f"What do you think about topic number {i}?" for i in range(20)],
    "eval_prompt": "Rate gloom.\n[QUESTION START]\n{question}\n[QUESTION END]\n[ANSWER START]\n{answer}\n"
    "[ANSWER END]\nAnswer with a number from 0 to 100.",
}


@pytest.fixture()
def endpoint():
    """Replies: first a draft without {answer}, then a valid one; records the requests."""
    requests = []
    replies = [json.dumps({**GOOD, "eval_prompt": "Rate {question}."}), "Here you go:\n" + json.dumps(GOOD)]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append(body)
            content = replies[min(len(requests), len(replies)) - 1]
            data = json.dumps(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
                    ],
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1", requests
    server.shutdown()


def test_traits_new_retries_with_the_error_and_writes_a_valid_file(endpoint, tmp_path):
    from steerlab.cli import app
    from steerlab.formats.traits import load_trait

    url, requests = endpoint
    out = tmp_path / "gloomy.json"
    result = CliRunner().invoke(
        app, ["traits", "new", "is gloomy about everything", "-m", "openai:drafter", "--base-url", url, "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert len(requests) == 2
    assert "{answer}" in requests[1]["messages"][-1]["content"]  # the validation error was shown to the model
    trait = load_trait(out)
    assert len(trait.questions) == 20 and trait.name == "gloomy"


def test_local_chat_model_failure_is_clear(tiny_llama):
    with pytest.raises(SteerlabError, match="no valid trait after 1 attempts"):
        draft_trait(LocalChat(tiny_llama), "is gloomy", "gloomy", attempts=1, max_tokens=8)


def test_parse_json_object():
    assert parse_json_object('```json\n{"a": 1}\n```') == {"a": 1}
    with pytest.raises(SteerlabError, match="no JSON object"):
        parse_json_object("nothing here")
