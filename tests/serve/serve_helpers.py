"""Helpers shared by the serve tests: prompts, one chat call through the openai client, the reference
result of ``generate_batch`` run alone, and an HTTP error check."""

from __future__ import annotations

import httpx

from steerlab.steering.generation import generate_batch

PROMPTS = ["how should I store fresh bread so it stays soft", "yes", "answer briefly: the quick brown fox"]
MAX_BATCH = 32
ERROR_FIELDS = {"message", "type", "param", "code"}


def chat(client, prompt, steering=None, **kwargs):
    """One chat completion through the openai client (greedy, 8 tokens unless told)."""
    kwargs.setdefault("max_tokens", 8)
    kwargs.setdefault("temperature", 0)
    extra = {"steering": steering} if steering is not None else None
    return client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": prompt}], extra_body=extra, **kwargs
    )


def reference(lm, prompt, specs=(), chat=True, **kwargs):
    """What ``generate_batch`` gives for ``prompt`` alone (greedy, 8 tokens unless told)."""
    kwargs.setdefault("max_new_tokens", 8)
    return generate_batch(lm, [prompt], steering=list(specs), chat=chat, **kwargs)[0]


def post_error(url, path, body, raw=None, headers=None):
    """POST ``body`` (or ``raw`` bytes); the status and the OpenAI-shaped error it must answer."""
    r = httpx.post(
        f"{url}{path}",
        json=body if raw is None else None,
        content=raw,
        headers={"content-type": "application/json", **(headers or {})},
        timeout=60,
    )
    error = r.json()["error"]
    assert set(error) == ERROR_FIELDS, error
    return r.status_code, error
