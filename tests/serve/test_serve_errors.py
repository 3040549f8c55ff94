"""steerlab serve, errors: every bad request gets one OpenAI-shaped error naming the field, with the
right status and code, and the server keeps serving."""

from __future__ import annotations

import httpx
import openai
import pytest
from serve_helpers import MAX_BATCH, chat, post_error

CHAT = "/v1/chat/completions"


def test_error_shapes_and_codes(client, url):
    def steer_body(steering, **kw):
        return {
            "model": "tiny",
            "messages": [{"role": "user", "content": "yes"}],
            "max_tokens": 4,
            "steering": steering,
            **kw,
        }

    status, err = post_error(url, CHAT, steer_body([{"vector": "nope", "layer": 1}]))
    assert status == 404 and err["code"] == "vector_not_found" and "'nope'" in err["message"]
    assert "rand" in err["message"] and "other" in err["message"] and err["param"] == "steering[0].vector"
    status, err = post_error(url, CHAT, steer_body([{"vector": "rand", "layer": 9}]))
    assert status == 400 and "steering[0].layer 9 is out of range" in err["message"]
    assert err["param"] == "steering[0].layer"
    status, err = post_error(url, CHAT, steer_body([{"vector": "rand", "layer": "ten"}]))
    assert status == 400 and "expected 'all'" in err["message"]
    status, err = post_error(url, CHAT, steer_body([{"vector": "rand", "layer": 1, "positions": "middle"}]))
    assert status == 400 and "steering[0].positions" in err["message"] and err["type"] == "invalid_request_error"
    assert err["param"] == "steering[0].positions"
    status, err = post_error(url, CHAT, steer_body([{"vector": "rand", "layer": 1, "operator": "cap"}]))
    assert status == 400 and "ceiling" in err["message"]
    status, err = post_error(url, CHAT, steer_body([{"vector": "narrow", "layer": 1}]))
    assert status == 400 and "d_model 7 does not match" in err["message"]
    status, err = post_error(url, CHAT, steer_body([{"vector": "broken", "layer": 1}]))
    assert status == 400 and "broken.safetensors" in err["message"]
    status, err = post_error(url, CHAT, steer_body([{"vector": "rand", "layer": 1, "coeff": "big"}]))
    assert status == 400
    status, err = post_error(url, CHAT, {"model": "tiny"})
    assert status == 400 and "messages" in err["message"]
    status, err = post_error(url, CHAT, None, raw=b'{"model": "tiny", "messages": [')
    assert status == 400 and "JSON" in err["message"]
    status, err = post_error(url, CHAT, steer_body(None, temperature="hot"))
    assert status == 400 and "temperature" in err["message"]
    status, err = post_error(url, CHAT, steer_body(None, max_tokens=1000))
    assert status == 400 and err["code"] == "context_length_exceeded" and "256" in err["message"]
    status, err = post_error(url, "/v1/completions", {"model": "tiny", "prompt": "yes " * 300})
    assert status == 400 and err["code"] == "context_length_exceeded"
    status, err = post_error(url, CHAT, steer_body(None, n=MAX_BATCH + 1))
    assert status == 400 and err["param"] == "n"
    status, err = post_error(url, CHAT, steer_body(None, top_logprobs=2))
    assert status == 400 and err["param"] == "top_logprobs"
    status, err = post_error(url, CHAT, {"model": "t", "messages": [{"role": "tool", "content": "x"}]})
    assert status == 400
    status, err = post_error(url, "/v1/completions", {"model": "tiny", "prompt": ""})
    assert status == 400 and "empty" in err["message"]
    assert httpx.get(f"{url}/v1/nothing").status_code == 404
    assert httpx.get(f"{url}/v1/chat/completions").json()["error"]["message"]
    # the openai client maps them to its exception types
    with pytest.raises(openai.NotFoundError):
        chat(client, "yes", [{"vector": "nope", "layer": 1}])
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, "yes", [{"vector": "rand", "layer": 9}])
    assert info.value.status_code == 400 and "out of range" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        chat(client, "yes", stream=True, max_tokens=5000)
    # and the server still answers
    assert chat(client, "yes", [{"vector": "rand", "layer": 1, "coeff": 1.0}]).choices[0].message.content is not None
