"""steerlab serve, CAST conditions: a steering item with a ``condition`` steers only the requests whose
prompt passes it, through real HTTP, also when gated, ungated, unconditioned and unsteered requests share
one batch; a bad condition is answered 400/404 naming the field."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from serve_helpers import chat, post_error, reference

from steerlab import SteeringVector
from steerlab.serve import background_server, create_app
from steerlab.steering.conditions import Condition, condition_similarities, gate_samples
from steerlab.steering.steerer import SteeringSpec

PROMPTS = [
    "how should I store fresh bread so it stays soft",
    "yes",
    "the quick brown fox jumps over the lazy dog",
    "0 1 2 3 4 5",
    "drink water rest and see a doctor",
    "always back up your files before updating",
]
LAYER = 2


@pytest.fixture(scope="module")
def setup(tiny_llama, tmp_path_factory):
    """A server whose vectors directory holds a steering vector, a condition vector and a narrow one; the
    condition's threshold splits PROMPTS in two."""
    gen = torch.Generator().manual_seed(3)
    steer_vec = SteeringVector(3 * torch.randn(tiny_llama.n_layers, tiny_llama.d_model, generator=gen))
    cond_vec = SteeringVector(torch.randn(tiny_llama.n_layers, tiny_llama.d_model, generator=gen))
    path = tmp_path_factory.mktemp("condition-vectors")
    steer_vec.save(path / "steer.safetensors")
    cond_vec.save(path / "cond.safetensors")
    SteeringVector(torch.randn(4, 7)).save(path / "narrow.safetensors")
    sims = condition_similarities(tiny_llama, [Condition(cond_vec, LAYER, 0.0)], gate_samples(PROMPTS))[0]
    ordered = sims.sort().values
    threshold = float((ordered[2] + ordered[3]) / 2)
    met = (sims > threshold).tolist()
    app = create_app(tiny_llama, path, max_batch=32, batch_window_ms=300, api_key=None)
    with background_server(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=60)
        yield {"url": url, "client": client, "vec": steer_vec, "cond": cond_vec, "threshold": threshold, "met": met}


def _condition(threshold: float, **extra) -> dict:
    return {"vector": "cond", "layer": LAYER, "threshold": threshold, "comparator": ">", **extra}


def test_a_conditional_item_steers_only_the_prompts_that_pass(setup, tiny_llama):
    client, vec, met = setup["client"], setup["vec"], setup["met"]
    item = {"vector": "steer", "layer": 1, "coeff": 4.0, "condition": _condition(setup["threshold"])}
    unconditioned = {"vector": "steer", "layer": 1, "coeff": -3.0}
    # every prompt gated, plus the same prompts unconditioned and unsteered, sent together (one batch)
    jobs = [(p, [item]) for p in PROMPTS] + [(p, [unconditioned]) for p in PROMPTS[:2]] + [(PROMPTS[2], None)]
    before = httpx.get(f"{setup['url']}/health").json()["max_batch_rows"]
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda job: chat(client, job[0], job[1]), jobs))
    assert httpx.get(f"{setup['url']}/health").json()["max_batch_rows"] > max(before, 1)  # they shared a batch
    steered = [SteeringSpec(vec, 1, 4.0)]
    for (prompt, steering), answer, i in zip(jobs, answers, range(len(jobs)), strict=True):
        if i < len(PROMPTS):
            want = reference(tiny_llama, prompt, steered if met[i] else ())
        else:
            want = reference(tiny_llama, prompt, [SteeringSpec(vec, 1, -3.0)] if steering else ())
        assert answer.choices[0].message.content == want.text, (i, prompt)
    passing = PROMPTS[met.index(True)]
    assert reference(tiny_llama, passing, steered).text != reference(tiny_llama, passing).text


def test_completions_are_gated_on_the_raw_prompt(setup, tiny_llama):
    """A completions request is gated on its raw text (tokenized as generation tokenizes it)."""
    client, vec, cond_vec = setup["client"], setup["vec"], setup["cond"]
    raws = ["the quick brown fox", "0 1 2 3 4 5 6 7"]
    sims = condition_similarities(tiny_llama, [Condition(cond_vec, LAYER, 0.0)], gate_samples(raws, chat=False))[0]
    threshold = float(sims.mean())  # one raw prompt on each side
    item = {"vector": "steer", "layer": 1, "coeff": 4.0, "condition": _condition(threshold, comparator="<")}
    for raw, sim in zip(raws, sims.tolist(), strict=True):
        got = client.completions.create(
            model="tiny", prompt=raw, max_tokens=6, temperature=0, extra_body={"steering": [item]}
        )
        specs = [SteeringSpec(vec, 1, 4.0)] if sim < threshold else ()
        assert got.choices[0].text == reference(tiny_llama, raw, specs, chat=False, max_new_tokens=6).text


def test_bad_conditions_are_answered_with_the_field(setup):
    url = setup["url"]
    body = {"model": "tiny", "messages": [{"role": "user", "content": "yes"}], "max_tokens": 2}

    def steering(**condition):
        return {**body, "steering": [{"vector": "steer", "layer": 1, "condition": {**_condition(0.0), **condition}}]}

    status, error = post_error(url, "/v1/chat/completions", steering(layer=9))
    assert status == 400 and error["param"] == "steering[0].condition.layer" and "out of range" in error["message"]
    status, error = post_error(url, "/v1/chat/completions", steering(vector="narrow"))
    assert status == 400 and error["code"] == "invalid_condition" and "d_model 7" in error["message"]
    status, error = post_error(url, "/v1/chat/completions", steering(vector="nope"))
    assert status == 404 and error["param"] == "steering[0].condition.vector"
    status, error = post_error(url, "/v1/chat/completions", steering(threshold=1.5))
    assert status == 400 and error["param"] == "steering[0].condition.threshold"
    status, error = post_error(url, "/v1/chat/completions", steering(comparator="="))
    assert status == 400 and error["param"] == "steering[0].condition.comparator"
    status, error = post_error(url, "/v1/chat/completions", steering(extra=1))
    assert status == 400 and "extra" in error["message"]
