"""The ``openai:MODEL`` judge: any OpenAI-compatible chat-completions endpoint (docs/design.md §6).

Endpoint and key: ``base_url`` / ``OPENAI_BASE_URL``, ``api_key`` / ``OPENAI_API_KEY`` (a local
server without a key needs only the base URL). The prompt is sent as one user message with
``max_tokens=1, logprobs=True, top_logprobs=20, temperature=0``; p(k) is the summed probability of
the first-token alternatives whose text, stripped, is an integer 0..100
(:func:`~steerlab.judge.score.score_from_top_logprobs`).

Connection errors, timeouts, 408/409/429 and 5xx are retried with exponential backoff (honouring
Retry-After); after the last try that item is ``None`` (logged) and the rest of the run goes on.
Once ``give_up_after`` prompts in a row have failed every try (the endpoint is down), the remaining
prompts of that call are ``None`` without asking. 401/403/404 are configuration errors and stop the
run with a SteerlabError. Requests run in a thread pool of ``concurrency`` workers.

Answers are cached on disk (:class:`~steerlab.judge.cache.ScoreCache`) under the identity
``openai:MODEL@BASE_URL``. Failed requests are not cached; a ``None`` that the judge itself
produced (too little mass on numbers) is.

The module is named ``openai_compat`` so that it never shadows the ``openai`` package.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import random
import threading
import time
from typing import Any

import openai

from ..errors import SteerlabError
from ..progress import progress_bar
from .base import BaseJudge
from .score import MIN_NUMBER_MASS, JudgeResult, score_from_top_logprobs

log = logging.getLogger("steerlab")


_FATAL_STATUS = {
    401: "authentication failed (check OPENAI_API_KEY / --judge-api-key)",
    403: "permission denied for this key",
    404: "not found (check the model name and the base URL, which usually ends in /v1)",
}
_RETRY_STATUS = {408, 409, 429}


class OpenAIJudge(BaseJudge):
    """Judge through an OpenAI-compatible chat-completions endpoint (see module docstring).

    ``model``: the endpoint's model name; ``concurrency``: requests in flight at most;
    ``max_retries`` tries after the first, waiting ``retry_base_delay`` seconds doubling up to
    ``retry_max_delay`` (with jitter); ``timeout``: seconds per request; ``top_logprobs``:
    first-token alternatives asked for; ``give_up_after``: failed prompts in a row after which the
    rest are None unasked; ``min_mass``: see :class:`~steerlab.judge.base.BaseJudge`. Raises
    SteerlabError without a model name, with ``concurrency`` < 1, or with neither an API key nor a
    base URL. ``requests`` counts HTTP requests sent (retries included).
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        cache_dir: str | os.PathLike[str] | bool | None = None,
        max_retries: int = 5,
        retry_base_delay: float = 1.0,
        retry_max_delay: float = 30.0,
        timeout: float = 60.0,
        top_logprobs: int = 20,
        give_up_after: int = 16,
        min_mass: float = MIN_NUMBER_MASS,
    ):
        if not model:
            raise SteerlabError("--judge 'openai:': expected openai:MODEL with a model name")
        if concurrency < 1:
            raise SteerlabError(f"--judge-concurrency {concurrency}: expected at least 1")
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
        if api_key is None:
            if base_url is None:
                raise SteerlabError(
                    f"--judge openai:{model}: no API key; set OPENAI_API_KEY, or point "
                    "--judge-base-url / OPENAI_BASE_URL at an OpenAI-compatible server"
                )
            api_key = "EMPTY"  # local servers (vLLM, llama.cpp, steerlab serve) ignore it
        self.model = model
        self.name = f"openai:{model}"
        self.base_url = base_url or "https://api.openai.com/v1"
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.top_logprobs = top_logprobs
        self.give_up_after = max(give_up_after, concurrency)
        self.requests = 0  # HTTP requests sent (retries included)
        self._failures_in_a_row = 0
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self._client = openai.OpenAI(api_key=api_key, base_url=self.base_url, max_retries=0, timeout=timeout)
        super().__init__(f"{self.name}@{self.base_url.rstrip('/')}", cache_dir, min_mass)

    def _warn_once(self, kind: str, message: str) -> None:
        with self._lock:
            if kind in self._warned:
                return
            self._warned.add(kind)
        log.warning("%s", message)

    def _compute(self, prompts: list[str]) -> list[JudgeResult]:
        results: list[JudgeResult | None] = [None] * len(prompts)
        with (
            progress_bar(f"judging ({self.name})", len(prompts)) as advance,
            concurrent.futures.ThreadPoolExecutor(self.concurrency, "steerlab-judge") as pool,
        ):
            futures = {pool.submit(self._ask, p): i for i, p in enumerate(prompts)}
            try:
                for future in concurrent.futures.as_completed(futures):
                    results[futures[future]] = future.result()
                    advance(1)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        failed = sum(1 for r in results if r is not None and r.mass is None)
        if failed:
            log.warning(
                "judge %s: %d of %d prompts got no answer (scored None; not cached, a rerun asks again)",
                self.name,
                failed,
                len(prompts),
            )
        return [r for r in results if r is not None]

    def _ask(self, prompt: str) -> JudgeResult:
        if self._failures_in_a_row >= self.give_up_after:
            self._warn_once(
                "giveup",
                f"judge {self.name} at {self.base_url}: {self._failures_in_a_row} prompts in a "
                "row got no answer after all retries; not asking for the remaining prompts "
                "(scored None)",
            )
            return JudgeResult(None, None, None, cacheable=False)
        delay = self.retry_base_delay
        for attempt in range(self.max_retries + 1):
            wait = delay
            try:
                with self._lock:
                    self.requests += 1
                response = self._client.chat.completions.create(
                    model=self.model,
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=1,
                    temperature=0,
                    logprobs=True,
                    top_logprobs=self.top_logprobs,
                )
                result = self._parse(response)
                with self._lock:
                    self._failures_in_a_row = 0
                return result
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status in _FATAL_STATUS:
                    raise SteerlabError(
                        f"judge {self.name} at {self.base_url}: HTTP {status}, {_FATAL_STATUS[status]}"
                    ) from None
                if status not in _RETRY_STATUS and status < 500:
                    self._warn_once(
                        f"http{status}",
                        f"judge {self.name}: HTTP {status} for a prompt ({_short(exc)}); scored None",
                    )
                    return JudgeResult(None, None, None, cacheable=False)
                reason = f"HTTP {status}"
                wait = max(delay, _retry_after(exc))
            except openai.APIConnectionError as exc:
                reason = f"{type(exc).__name__}: {_short(exc)}"
            except (openai.APIResponseValidationError, ValueError) as exc:
                reason = f"malformed response ({_short(exc)})"
            if attempt == self.max_retries:
                with self._lock:
                    self._failures_in_a_row += 1
                self._warn_once(
                    "exhausted",
                    f"judge {self.name} at {self.base_url}: {reason} after {attempt + 1} tries; scored None",
                )
                return JudgeResult(None, None, None, cacheable=False)
            log.debug("judge %s: %s, retrying in %.2fs", self.name, reason, wait)
            time.sleep(min(wait, self.retry_max_delay) * (0.5 + random.random() / 2))
            delay = min(delay * 2, self.retry_max_delay)
        raise AssertionError("unreachable")

    def _parse(self, response: Any) -> JudgeResult:
        try:
            content = response.choices[0].logprobs.content
            top = content[0].top_logprobs if content else None
        except (AttributeError, IndexError, TypeError):
            top = None
        if not top:
            self._warn_once(
                "nologprobs",
                f"judge {self.name} at {self.base_url} returned no logprobs; the endpoint must "
                "support logprobs/top_logprobs (scored None)",
            )
            return JudgeResult(None, None, None, cacheable=False)
        return score_from_top_logprobs(top)


def _retry_after(exc: Any) -> float:
    """Seconds from a Retry-After header (429/503), else 0."""
    try:
        return max(0.0, float(exc.response.headers.get("retry-after", 0)))
    except (AttributeError, TypeError, ValueError):
        return 0.0


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
