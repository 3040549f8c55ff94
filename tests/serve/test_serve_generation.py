"""steerlab serve, results: real HTTP on loopback with the official openai client against the tiny
llama; every answer equals what ``generate_batch`` gives for the request alone (steered, unsteered,
completions, max_tokens/stop/n, seeds, logprobs, streaming)."""

from __future__ import annotations

import json

import httpx
import pytest
from serve_helpers import PROMPTS, chat, reference
from typer.testing import CliRunner

from steerlab.cli.app import app as cli_app
from steerlab.steering.steerer import SteeringSpec

# --- listing --------------------------------------------------------------------------------------


def test_models_and_vectors(client, url, tiny_llama):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny-llama"]
    data = httpx.get(f"{url}/v1/vectors").json()["data"]
    by_name = {d["name"]: d for d in data}
    assert sorted(by_name) == ["broken", "narrow", "other", "rand"]
    assert by_name["rand"]["n_layers"] == 4 and by_name["rand"]["d_model"] == 64
    assert by_name["rand"]["method"] == "test" and by_name["rand"]["metadata"]["model"] == "tiny-llama"
    assert by_name["rand"]["compatible"] and by_name["other"]["compatible"]
    assert by_name["other"]["format"] == "gguf" and by_name["other"]["method"] == "other"
    assert by_name["narrow"]["d_model"] == 7 and not by_name["narrow"]["compatible"]
    assert "not a readable .safetensors file" in by_name["broken"]["error"]
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


# --- results equal generate_batch -----------------------------------------------------------------

STEERINGS = {
    "add": ([{"vector": "rand", "layer": 2, "coeff": 3.0}], lambda v, o: [SteeringSpec(v, 2, 3.0)]),
    "range-unit-response": (
        [{"vector": "rand", "layer": "1-2", "coeff": 6.0, "scale": "unit", "positions": "response"}],
        lambda v, o: [SteeringSpec(v, [1, 2], 6.0, scale="unit", positions="response")],
    ),
    "list-prompt": (
        [{"vector": "rand", "layer": [0, 3], "coeff": -4.0, "positions": "prompt"}],
        lambda v, o: [SteeringSpec(v, [0, 3], -4.0, positions="prompt")],
    ),
    "all-ablate": (
        [{"vector": "rand", "layer": "all", "operator": "ablate"}],
        lambda v, o: [SteeringSpec(v, "all", 1.0, operator="ablate")],
    ),
    "cap": (
        [{"vector": "rand", "layer": 1, "operator": "cap", "ceiling": -1.0}],
        lambda v, o: [SteeringSpec(v, 1, operator="cap", ceiling=-1.0)],
    ),
    "gguf-two-items": (
        [
            {"vector": "other", "layer": 2, "coeff": 4.0},
            {"vector": "rand", "layer": 2, "operator": "ablate", "coeff": 0.5},
        ],
        lambda v, o: [SteeringSpec(o, 2, 4.0), SteeringSpec(v, 2, 0.5, operator="ablate")],
    ),
}


@pytest.mark.parametrize("name", list(STEERINGS))
def test_steered_chat_equals_generate_batch(client, tiny_llama, vec, other, name):
    steering, specs = STEERINGS[name]
    prompt = PROMPTS[0]
    got = chat(client, prompt, steering)
    want = reference(tiny_llama, prompt, specs(vec, other))
    assert got.choices[0].message.content == want.text
    assert got.choices[0].finish_reason == want.finish_reason
    assert got.usage.completion_tokens == want.n_new_tokens
    assert got.usage.prompt_tokens == want.n_prompt_tokens
    assert got.usage.total_tokens == want.n_prompt_tokens + want.n_new_tokens


def test_steering_changes_output_and_none_is_unsteered(client, tiny_llama, vec):
    plain = chat(client, PROMPTS[0]).choices[0].message.content
    assert plain == reference(tiny_llama, PROMPTS[0]).text
    assert chat(client, PROMPTS[0], []).choices[0].message.content == plain
    zero = chat(client, PROMPTS[0], [{"vector": "rand", "layer": 2, "coeff": 0.0}])
    assert zero.choices[0].message.content == plain
    strong = chat(client, PROMPTS[0], [{"vector": "rand", "layer": "all", "coeff": 8.0}])
    assert strong.choices[0].message.content != plain


def test_completions_equal_generate_batch(client, tiny_llama, vec):
    prompt = "the quick brown"
    got = client.completions.create(
        model="tiny",
        prompt=prompt,
        max_tokens=6,
        temperature=0,
        extra_body={"steering": [{"vector": "rand", "layer": 1, "coeff": -3.0}]},
    )
    want = reference(tiny_llama, prompt, [SteeringSpec(vec, 1, -3.0)], chat=False, max_new_tokens=6)
    assert got.object == "text_completion"
    assert got.choices[0].text == want.text and got.usage.completion_tokens == want.n_new_tokens
    assert got.usage.prompt_tokens == want.n_prompt_tokens
    # a list of prompts x n: index = prompt_index * n + j
    many = client.completions.create(model="tiny", prompt=[prompt, "yes"], n=2, max_tokens=6, temperature=0)
    plain = reference(tiny_llama, prompt, chat=False, max_new_tokens=6).text
    other = reference(tiny_llama, "yes", chat=False, max_new_tokens=6).text
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert [c.text for c in many.choices] == [plain, plain, other, other]


def test_cli_generate_equals_server(client, tiny_dir, vectors_dir, tmp_path):
    import steerlab.cli  # noqa: F401 - registers generate

    out = tmp_path / "gen.jsonl"
    result = CliRunner().invoke(
        cli_app,
        [
            "generate",
            "--model",
            str(tiny_dir),
            "--vector",
            str(vectors_dir / "rand.safetensors"),
            "--layer",
            "2",
            "--coeff",
            "3",
            "--max-new-tokens",
            "8",
            "--out",
            str(out),
            PROMPTS[1],
        ],
    )
    assert result.exit_code == 0, result.output
    cli_text = json.loads(out.read_text().splitlines()[0])["text"]
    assert chat(client, PROMPTS[1], [{"vector": "rand", "layer": 2, "coeff": 3}]).choices[0].message.content == cli_text


def test_max_tokens_stop_and_n(client, tiny_llama):
    full = reference(tiny_llama, PROMPTS[0], max_new_tokens=8)
    short = chat(client, PROMPTS[0], max_tokens=3)
    want = reference(tiny_llama, PROMPTS[0], max_new_tokens=3)
    assert short.choices[0].message.content == want.text
    assert short.choices[0].finish_reason == want.finish_reason
    assert short.usage.completion_tokens == want.n_new_tokens
    stop = full.text.strip()[-3:]
    cut = chat(client, PROMPTS[0], stop=[stop, "never-there"])
    assert cut.choices[0].message.content == full.text[: full.text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens <= full.n_new_tokens
    assert cut.choices[0].message.content == reference(tiny_llama, PROMPTS[0], stop=[stop]).text
    three = chat(client, PROMPTS[0], n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert {c.message.content for c in three.choices} == {full.text}
    assert three.usage.completion_tokens == 3 * full.n_new_tokens
    assert three.usage.prompt_tokens == full.n_prompt_tokens


def test_seeded_sampling_is_reproducible(client, tiny_llama):
    a = chat(client, PROMPTS[2], temperature=0.9, seed=7)
    b = chat(client, PROMPTS[2], temperature=0.9, seed=7)
    want = reference(tiny_llama, PROMPTS[2], temperature=0.9, seed=7)
    assert a.choices[0].message.content == b.choices[0].message.content == want.text


# --- logprobs and streaming -----------------------------------------------------------------------


def test_chat_logprobs(client, tiny_llama, vec):
    steering = [{"vector": "rand", "layer": 2, "coeff": 2.0}]
    got = chat(client, PROMPTS[1], steering, logprobs=True, top_logprobs=3)
    want = reference(tiny_llama, PROMPTS[1], [SteeringSpec(vec, 2, 2.0)], top_logprobs=3)
    content = got.choices[0].logprobs.content
    assert len(content) == got.usage.completion_tokens == want.n_new_tokens
    for entry, lp, tok in zip(content, want.logprobs, want.token_ids, strict=True):
        assert entry.token == tiny_llama.tokenizer.decode([tok])
        assert entry.bytes == list(entry.token.encode())
        assert abs(entry.logprob - lp) < 1e-5
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token  # greedy takes the top token
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob >= entry.top_logprobs[2].logprob
    only = chat(client, PROMPTS[1], steering, logprobs=True)
    assert all(e.top_logprobs == [] for e in only.choices[0].logprobs.content)
    assert chat(client, PROMPTS[1], steering).choices[0].logprobs is None


def test_completion_logprobs(client, tiny_llama):
    prompt = "the quick brown"
    got = client.completions.create(model="tiny", prompt=prompt, max_tokens=5, temperature=0, logprobs=2)
    want = reference(tiny_llama, prompt, chat=False, max_new_tokens=5, top_logprobs=2)
    lp = got.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == want.n_new_tokens
    assert all(abs(a - b) < 1e-5 for a, b in zip(lp.token_logprobs, want.logprobs, strict=True))
    assert all(len(top) <= 2 and lp.tokens[i] in top for i, top in enumerate(lp.top_logprobs))
    assert lp.text_offset[0] == len(prompt)


def _stream_text(stream):
    chunks = list(stream)
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    usage = None
    for ch in chunks:
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            piece = c.delta.content if hasattr(c, "delta") else c.text
            texts[c.index] = texts.get(c.index, "") + (piece or "")
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    return chunks, texts, finish, usage


def test_chat_streaming(client, tiny_llama):
    steering = [{"vector": "rand", "layer": 1, "coeff": 2.0}]
    plain = chat(client, PROMPTS[0], steering, max_tokens=10)
    stream = chat(client, PROMPTS[0], steering, max_tokens=10, stream=True, stream_options={"include_usage": True})
    chunks, texts, finish, usage = _stream_text(stream)
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(chunks) >= 3  # incremental: role, several content chunks, finish, usage
    assert texts[0] == plain.choices[0].message.content
    assert finish[0] == plain.choices[0].finish_reason
    assert usage.completion_tokens == plain.usage.completion_tokens
    assert usage.prompt_tokens == plain.usage.prompt_tokens
    # stop strings are never streamed, even in part
    stop = plain.choices[0].message.content.strip()[-3:]
    cut = chat(client, PROMPTS[0], steering, max_tokens=10, stop=stop)
    _, texts, finish, _ = _stream_text(chat(client, PROMPTS[0], steering, max_tokens=10, stop=stop, stream=True))
    assert texts[0] == cut.choices[0].message.content and finish[0] == "stop"
    # n > 1 streams every choice
    _, texts, finish, _ = _stream_text(chat(client, PROMPTS[1], max_tokens=4, n=2, stream=True))
    assert texts[0] == texts[1] == chat(client, PROMPTS[1], max_tokens=4).choices[0].message.content


def test_streaming_with_logprobs(client):
    plain = chat(client, PROMPTS[2], logprobs=True, top_logprobs=2)
    chunks, texts, finish, _ = _stream_text(chat(client, PROMPTS[2], logprobs=True, top_logprobs=2, stream=True))
    streamed = [e for ch in chunks for c in ch.choices if c.logprobs for e in c.logprobs.content]
    assert texts[0] == plain.choices[0].message.content
    assert [e.token for e in streamed] == [e.token for e in plain.choices[0].logprobs.content]
    assert [e.logprob for e in streamed] == [e.logprob for e in plain.choices[0].logprobs.content]
    assert finish[0] == plain.choices[0].finish_reason


def test_completion_streaming(client):
    plain = client.completions.create(model="tiny", prompt="the quick brown", max_tokens=7, temperature=0)
    stream = client.completions.create(model="tiny", prompt="the quick brown", max_tokens=7, temperature=0, stream=True)
    chunks, texts, finish, _ = _stream_text(stream)
    assert all(ch.object == "text_completion" for ch in chunks)
    assert texts[0] == plain.choices[0].text and finish[0] == plain.choices[0].finish_reason
    chunks, texts, _, _ = _stream_text(
        client.completions.create(
            model="tiny", prompt="the quick brown", max_tokens=7, temperature=0, stream=True, logprobs=1
        )
    )
    assert texts[0] == plain.choices[0].text
    n_tokens = sum(len(c.logprobs.tokens) for ch in chunks for c in ch.choices if c.logprobs)
    assert n_tokens == plain.usage.completion_tokens


def test_raw_sse_ends_with_done(url):
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "yes"}],
        "max_tokens": 3,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2].removeprefix("data: "))["choices"][0]["finish_reason"] in ("stop", "length")
