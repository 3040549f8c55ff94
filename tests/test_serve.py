"""steerlab serve: real HTTP on loopback with the official openai client, against the tiny llama."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from typer.testing import CliRunner

from steerlab import SteeringVector, export_gguf
from steerlab.cli.app import app as cli_app
from steerlab.serve.app import _merge_order, background_server, create_app
from steerlab.steering.generation import generate_batch
from steerlab.steering.steerer import SteeringSpec

PROMPTS = ["how should I store fresh bread so it stays soft", "yes", "answer briefly: the quick brown fox"]
MAX_BATCH = 32


@pytest.fixture(scope="module")
def vec(tiny_llama):
    torch.manual_seed(1)
    return SteeringVector(torch.randn(tiny_llama.n_layers, tiny_llama.d_model) * 2,
                          {"method": "test", "model": "tiny-llama"})


@pytest.fixture(scope="module")
def other(tiny_llama):
    torch.manual_seed(2)
    data = torch.randn(tiny_llama.n_layers, tiny_llama.d_model) * 2
    data[0] = 0  # GGUF control vectors have no layer 0
    return SteeringVector(data, {"method": "other"})


@pytest.fixture(scope="module")
def vectors_dir(tmp_path_factory, vec, other):
    path = tmp_path_factory.mktemp("vectors")
    vec.save(path / "rand.safetensors")
    export_gguf(other, path / "other.gguf")
    SteeringVector(torch.randn(4, 7)).save(path / "narrow.safetensors")
    (path / "broken.safetensors").write_bytes(b"not a safetensors file")
    (path / "notes.txt").write_text("ignored")
    return path


@pytest.fixture(scope="module")
def server(tiny_llama, vectors_dir):
    app = create_app(tiny_llama, vectors_dir, max_batch=MAX_BATCH, batch_window_ms=30)
    with background_server(app) as url:
        yield url, app.state.steerlab


@pytest.fixture(scope="module")
def url(server):
    return server[0]


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=60)


def chat(client, prompt, steering=None, **kwargs):
    kwargs.setdefault("max_tokens", 8)
    kwargs.setdefault("temperature", 0)
    extra = {"steering": steering} if steering is not None else None
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompt}],
                                          extra_body=extra, **kwargs)


def reference(lm, prompt, specs=(), chat=True, **kwargs):
    kwargs.setdefault("max_new_tokens", 8)
    return generate_batch(lm, [prompt], steering=list(specs), chat=chat, **kwargs)[0]


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
    "range-unit-response": ([{"vector": "rand", "layer": "1-2", "coeff": 6.0, "scale": "unit",
                              "positions": "response"}],
                            lambda v, o: [SteeringSpec(v, [1, 2], 6.0, scale="unit", positions="response")]),
    "list-prompt": ([{"vector": "rand", "layer": [0, 3], "coeff": -4.0, "positions": "prompt"}],
                    lambda v, o: [SteeringSpec(v, [0, 3], -4.0, positions="prompt")]),
    "all-ablate": ([{"vector": "rand", "layer": "all", "operator": "ablate"}],
                   lambda v, o: [SteeringSpec(v, "all", 1.0, operator="ablate")]),
    "cap": ([{"vector": "rand", "layer": 1, "operator": "cap", "ceiling": -1.0}],
            lambda v, o: [SteeringSpec(v, 1, operator="cap", ceiling=-1.0)]),
    "gguf-two-items": ([{"vector": "other", "layer": 2, "coeff": 4.0},
                        {"vector": "rand", "layer": 2, "operator": "ablate", "coeff": 0.5}],
                       lambda v, o: [SteeringSpec(o, 2, 4.0), SteeringSpec(v, 2, 0.5, operator="ablate")]),
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
    got = client.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0,
                                    extra_body={"steering": [{"vector": "rand", "layer": 1, "coeff": -3.0}]})
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
    result = CliRunner().invoke(cli_app, [
        "generate", "--model", str(tiny_dir), "--vector", str(vectors_dir / "rand.safetensors"), "--layer", "2",
        "--coeff", "3", "--max-new-tokens", "8", "--out", str(out), PROMPTS[1]])
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
    stream = client.completions.create(model="tiny", prompt="the quick brown", max_tokens=7, temperature=0,
                                       stream=True)
    chunks, texts, finish, _ = _stream_text(stream)
    assert all(ch.object == "text_completion" for ch in chunks)
    assert texts[0] == plain.choices[0].text and finish[0] == plain.choices[0].finish_reason
    chunks, texts, _, _ = _stream_text(client.completions.create(
        model="tiny", prompt="the quick brown", max_tokens=7, temperature=0, stream=True, logprobs=1))
    assert texts[0] == plain.choices[0].text
    n_tokens = sum(len(c.logprobs.tokens) for ch in chunks for c in ch.choices if c.logprobs)
    assert n_tokens == plain.usage.completion_tokens


def test_raw_sse_ends_with_done(url):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "yes"}], "max_tokens": 3, "temperature": 0,
            "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2].removeprefix("data: "))["choices"][0]["finish_reason"] in ("stop", "length")


# --- batching -------------------------------------------------------------------------------------


def test_merge_order():
    assert _merge_order([], ["a", "b"]) == ["a", "b"]
    assert _merge_order(["a", "b"], ["b", "c"]) == ["a", "b", "c"]
    assert _merge_order(["a", "b"], ["c", "b"]) == ["c", "a", "b"]
    assert _merge_order(["a", "b"], ["b", "a"]) is None


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
        (PROMPTS[1], [{"vector": "rand", "layer": "1-2", "coeff": 8.0, "scale": "unit"}],
         [SteeringSpec(v, [1, 2], 8.0, scale="unit")], {"max_tokens": 5}),
        (PROMPTS[2], [{"vector": "other", "layer": 1, "coeff": 3.0, "positions": "response"}],
         [SteeringSpec(o, 1, 3.0, positions="response")], {}),
        (PROMPTS[0], [{"vector": "rand", "layer": 1, "operator": "ablate"}],
         [SteeringSpec(v, 1, operator="ablate")], {}),
        # the same two items in both orders (they do not commute at one layer)
        (PROMPTS[1], [add_other, ablate_rand], [SteeringSpec(o, 1, 5.0), SteeringSpec(v, 1, operator="ablate")], {}),
        (PROMPTS[1], [ablate_rand, add_other], [SteeringSpec(v, 1, operator="ablate"), SteeringSpec(o, 1, 5.0)], {}),
        (PROMPTS[2], [{"vector": "rand", "layer": 3, "operator": "cap", "floor": 2.0}],
         [SteeringSpec(v, 3, operator="cap", floor=2.0)], {}),
        (PROMPTS[0], [{"vector": "rand", "layer": 2, "coeff": -2.0}], [SteeringSpec(v, 2, -2.0)],
         {"temperature": 0.8, "seed": 11}),
        (PROMPTS[2], [{"vector": "rand", "layer": 0, "coeff": 2.5}], [SteeringSpec(v, 0, 2.5)],
         {"stop": ["zzz"], "max_tokens": 6}),
    ] * 2
    wants = []
    for prompt, _, specs, kw in cases:
        gen_kw = {"max_new_tokens": kw.get("max_tokens", 8), "temperature": kw.get("temperature", 0.0),
                  "seed": kw.get("seed"), "stop": kw.get("stop", ())}
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
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=48,
                                       bos_token_id=3, eos_token_id=2)).eval()
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
    body = {"model": "tiny", "messages": [{"role": "user", "content": "yes"}], "max_tokens": 200,
            "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
        first = next(r.iter_lines())
        assert first.startswith("data: ")
    assert chat(client, "yes", max_tokens=3).choices[0].message.content is not None


# --- errors ---------------------------------------------------------------------------------------


def _post(url, path, body, raw=None):
    r = httpx.post(f"{url}{path}", json=body if raw is None else None, content=raw,
                   headers={"content-type": "application/json"}, timeout=60)
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return r.status_code, error


def test_error_shapes_and_codes(client, url):
    def steer_body(steering, **kw):
        return {"model": "tiny", "messages": [{"role": "user", "content": "yes"}], "max_tokens": 4,
                "steering": steering, **kw}

    status, err = _post(url, "/v1/chat/completions", steer_body([{"vector": "nope", "layer": 1}]))
    assert status == 404 and err["code"] == "vector_not_found" and "'nope'" in err["message"]
    assert "rand" in err["message"] and "other" in err["message"] and err["param"] == "steering[0].vector"
    status, err = _post(url, "/v1/chat/completions", steer_body([{"vector": "rand", "layer": 9}]))
    assert status == 400 and "steering[0].layer 9 is out of range" in err["message"]
    assert err["param"] == "steering[0].layer"
    status, err = _post(url, "/v1/chat/completions", steer_body([{"vector": "rand", "layer": "ten"}]))
    assert status == 400 and "expected 'all'" in err["message"]
    status, err = _post(url, "/v1/chat/completions",
                        steer_body([{"vector": "rand", "layer": 1, "positions": "middle"}]))
    assert status == 400 and "steering[0].positions" in err["message"] and err["type"] == "invalid_request_error"
    assert err["param"] == "steering[0].positions"
    status, err = _post(url, "/v1/chat/completions", steer_body([{"vector": "rand", "layer": 1, "operator": "cap"}]))
    assert status == 400 and "ceiling" in err["message"]
    status, err = _post(url, "/v1/chat/completions", steer_body([{"vector": "narrow", "layer": 1}]))
    assert status == 400 and "d_model 7 does not match" in err["message"]
    status, err = _post(url, "/v1/chat/completions", steer_body([{"vector": "broken", "layer": 1}]))
    assert status == 400 and "broken.safetensors" in err["message"]
    status, err = _post(url, "/v1/chat/completions", steer_body([{"vector": "rand", "layer": 1, "coeff": "big"}]))
    assert status == 400
    status, err = _post(url, "/v1/chat/completions", {"model": "tiny"})
    assert status == 400 and "messages" in err["message"]
    status, err = _post(url, "/v1/chat/completions", None, raw=b'{"model": "tiny", "messages": [')
    assert status == 400 and "JSON" in err["message"]
    status, err = _post(url, "/v1/chat/completions", steer_body(None, temperature="hot"))
    assert status == 400 and "temperature" in err["message"]
    status, err = _post(url, "/v1/chat/completions", steer_body(None, max_tokens=1000))
    assert status == 400 and err["code"] == "context_length_exceeded" and "256" in err["message"]
    status, err = _post(url, "/v1/completions", {"model": "tiny", "prompt": "yes " * 300})
    assert status == 400 and err["code"] == "context_length_exceeded"
    status, err = _post(url, "/v1/chat/completions", steer_body(None, n=MAX_BATCH + 1))
    assert status == 400 and err["param"] == "n"
    status, err = _post(url, "/v1/chat/completions", steer_body(None, top_logprobs=2))
    assert status == 400 and err["param"] == "top_logprobs"
    status, err = _post(url, "/v1/chat/completions", {"model": "t", "messages": [{"role": "tool", "content": "x"}]})
    assert status == 400
    status, err = _post(url, "/v1/completions", {"model": "tiny", "prompt": ""})
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


def test_failing_batch_fails_only_its_requests(client, monkeypatch):
    import steerlab.serve.app as serve_module

    real = serve_module.generate_batch

    def flaky(lm, prompts, **kwargs):
        if "EXPLODE" in json.dumps(prompts):
            raise RuntimeError("simulated failure")
        return real(lm, prompts, **kwargs)

    monkeypatch.setattr(serve_module, "generate_batch", flaky)
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
            expected[(p, c)] = chat(client, p, [{"vector": "rand", "layer": 2, "coeff": c}],
                                    max_tokens=4).choices[0].message.content
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
            assert status in (400, 404, 422) and set(payload["error"]) == {"message", "type", "param", "code"}
        else:
            assert status == 200 and payload == expected[key], key
    assert n_bad == 20
    assert elapsed < 60
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    assert chat(client, "yes", max_tokens=2).choices[0].message.content is not None


# --- interop and CLI ------------------------------------------------------------------------------


def test_steerlab_judge_talks_to_the_server(url):
    from steerlab.judge import make_judge

    judge = make_judge("openai:tiny", base_url=f"{url}/v1", cache_dir=False, max_retries=0)
    scores = judge.score(["Rate this answer from 0 to 100: yes"])
    assert len(scores) == 1 and (scores[0] is None or 0 <= scores[0] <= 100)


def test_cli_serve(monkeypatch, tiny_dir, vectors_dir, tmp_path):
    import steerlab.serve.app as serve_module

    calls = []
    monkeypatch.setattr(serve_module, "serve", lambda lm, vectors, **kw: calls.append((lm, vectors, kw)))
    runner = CliRunner()
    result = runner.invoke(cli_app, ["serve", "--help"])
    assert result.exit_code == 0 and "--vectors" in result.output and "--max-batch" in result.output
    result = runner.invoke(cli_app, ["serve", "--model", str(tiny_dir), "--vectors", str(vectors_dir),
                                     "--port", "8123", "--max-batch", "8"])
    assert result.exit_code == 0, result.output
    lm, vectors, kw = calls[0]
    assert lm.n_layers == 4 and vectors == vectors_dir
    assert kw["port"] == 8123 and kw["max_batch"] == 8 and kw["host"] == "127.0.0.1"
    result = runner.invoke(cli_app, ["serve", "--model", str(tiny_dir), "--vectors", str(tmp_path / "none")])
    assert result.exit_code == 2 and "--vectors" in result.output and len(calls) == 1


def test_cli_serve_process(tiny_dir, vectors_dir):
    """`steerlab serve` as a real process: it answers, then stops on SIGINT."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = "import steerlab.cli.serve; from steerlab.cli import main; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--model", str(tiny_dir), "--vectors", str(vectors_dir),
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "STEERLAB_PROGRESS": "0", "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=60)
        got = chat(client, "yes", [{"vector": "rand", "layer": 2, "coeff": 3}], max_tokens=4)
        assert got.usage.completion_tokens >= 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0


@pytest.mark.slow
def test_smollm2_steered_chat(smollm2, tmp_path):
    torch.manual_seed(0)
    vec = SteeringVector(torch.randn(smollm2.n_layers, smollm2.d_model), {"method": "random"})
    vec.save(tmp_path / "random.safetensors")
    app = create_app(smollm2, tmp_path, batch_window_ms=20)
    with background_server(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)
        steering = [{"vector": "random", "layer": 10, "coeff": 4.0, "scale": "unit"}]
        with ThreadPoolExecutor(2) as pool:
            got = list(pool.map(lambda s: chat(client, "How do I keep bread fresh?", s, max_tokens=12),
                                [steering, None]))
    want = generate_batch(smollm2, ["How do I keep bread fresh?"] * 2, max_new_tokens=12,
                          steering=SteeringSpec(vec, 10, [4.0, 0.0], scale="unit"))
    assert [g.choices[0].message.content for g in got] == [w.text for w in want]
