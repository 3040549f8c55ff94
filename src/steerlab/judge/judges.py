"""The LLM judge (SPEC §5): reads a filled judge prompt and answers a number from 0 to 100.

Score = Σ k·p(k) / Σ p(k) over the integer answers k = 0..100, and ``None`` (never 0, never a crash)
when the probability on numbers, Σ p(k), is below 0.25 (the judge refused or answered something
else). Backends, chosen by a spec string (:func:`make_judge`):

``openai:MODEL``
    Any OpenAI-compatible chat-completions endpoint (``base_url`` / ``OPENAI_BASE_URL``,
    ``api_key`` / ``OPENAI_API_KEY``). The prompt is sent as one user message with
    ``max_tokens=1, logprobs=True, top_logprobs=20, temperature=0``; p(k) is the summed probability
    of the first-token alternatives whose text, stripped, is an integer 0..100. Connection errors,
    timeouts, 408/409/429 and 5xx are retried with exponential backoff (honouring Retry-After);
    after the last try that item is ``None`` (logged) and the rest of the run goes on. Once
    ``give_up_after`` prompts in a row have failed every try (the endpoint is down), the remaining
    prompts of that call are ``None`` without asking. 401/403/404 are configuration errors and stop
    the run with a SteerlabError. Requests run in a thread pool of ``concurrency`` workers.

``local[:MODEL]``
    A local causal LM (default ``smollm2``; any :func:`steerlab.load_model` spec, or a loaded
    :class:`~steerlab.models.LoadedModel`). The prompt goes through the chat template and the exact
    probability of every answer "0".."100" is computed by teacher forcing, even when the tokenizer
    splits numbers into several tokens ("100" -> "1","0","0"):

        p(k) = p(tokens of k | prompt) · p(next token does not start with a digit | prompt, k)

    The termination factor makes the events disjoint: "10" does not steal the mass of "100" (whose
    next token is "0"), so Σ_k p(k) ≤ 1 is the probability that the reply is a number 0..100 and the
    0.25 rule means the same thing as for the API backend. Any non-digit token ends the number
    (end-of-turn, newline, ".", " out of 100" ...), not only the end-of-turn token, so a judge that
    writes "85." still counts as answering 85. The answer text is what the chat template puts
    before an assistant message (e.g. " 85" after "Assistant:"), tokenized together with the
    rendered prompt (canonical tokenization). All 101 continuations of a prompt are scored in ONE
    forward pass: the prompt is followed by the 101 continuations, each attending to the prompt and
    to itself only (a 4-D "tree" attention mask with per-branch position ids); prompts are batched
    too. Models whose attention cannot take a 4-D mask (flash/flex attention, or prompts longer than
    a sliding window) use prompt+continuation rows instead (same numbers, more compute).

Answers are cached on disk (sqlite ``judge.sqlite`` in ``cache_dir``, default
``<steerlab cache>/judge``) by a hash of (judge identity, prompt), so a rerun makes no request and no
forward pass. The identity is ``openai:MODEL@BASE_URL``, or the local model's name, adapter, dtype
and scoring-method version. The cache keeps the expected score and the mass; the threshold
(``min_mass``, default 0.25) is applied when reading. Failed requests are not cached; a ``None``
that the judge itself produced (too little mass on numbers) is. A LoadedModel passed in directly is
not cached on disk unless ``cache_dir`` is given, since its name need not identify its weights.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import inspect
import logging
import math
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from ..errors import SteerlabError
from ..formats.traits import check_judge_prompt, coherence_prompt, fill_judge_prompt
from ..model import embedded
from ..model.blocks import unwrap_model
from ..model.chat import has_system_role, merge_system_role, render_prompt, to_messages
from ..model.loading import LoadedModel, load_model
from ..progress import progress_bar

log = logging.getLogger("steerlab")

MIN_NUMBER_MASS = 0.25
MAX_SCORE = 100
ANSWERS = tuple(str(k) for k in range(MAX_SCORE + 1))
DIGITS = "0123456789"
LOCAL_DEFAULT_MODEL = "smollm2"
_LOCAL_METHOD = "tree-v1"  # part of the local cache identity: bump when the scoring changes
_INT_RE = re.compile(r"[0-9]{1,3}")


# --------------------------------------------------------------------------------------------
# Protocol, results, score math


@runtime_checkable
class Judge(Protocol):
    """Anything that scores filled judge prompts: one score in [0, 100] or None per prompt."""

    def score(self, prompts: list[str]) -> list[float | None]: ...


@dataclass(frozen=True)
class JudgeResult:
    """One judged prompt.

    ``score``: the expected score, None when ``mass`` is below the threshold (or on errors);
    ``mass``: Σ_k p(k), the probability that the answer is a number 0..100 (None when the judge
    could not be asked); ``expected``: Σ k·p(k) / Σ p(k) whatever the mass (None when the mass is 0).
    """

    score: float | None
    mass: float | None
    expected: float | None = None
    cacheable: bool = True

    def with_threshold(self, min_mass: float) -> JudgeResult:
        ok = self.mass is not None and self.mass >= min_mass and self.expected is not None
        return replace(self, score=self.expected if ok else None)


def score_from_distribution(
    probs: Mapping[int, float] | Sequence[float], min_mass: float = MIN_NUMBER_MASS
) -> JudgeResult:
    """Expected score Σ k·p(k) / Σ p(k) from absolute answer probabilities p(k), k in 0..100.

    ``None`` when Σ p(k) < ``min_mass``.
    """
    items = probs.items() if isinstance(probs, Mapping) else enumerate(probs)
    mass = weighted = 0.0
    for k, p in items:
        if not 0 <= int(k) <= MAX_SCORE:
            raise ValueError(f"answer {k} is outside 0..{MAX_SCORE}")
        mass += float(p)
        weighted += int(k) * float(p)
    if not math.isfinite(mass) or mass <= 0:
        return JudgeResult(None, mass if math.isfinite(mass) else 0.0)
    return JudgeResult(None, mass, weighted / mass).with_threshold(min_mass)


def parse_number_token(token: str) -> int | None:
    """The integer 0..100 a judge token stands for (after strip), else None."""
    text = token.strip()
    if not _INT_RE.fullmatch(text):
        return None
    value = int(text)
    return value if value <= MAX_SCORE else None


def score_from_top_logprobs(
    top_logprobs: Mapping[str, float] | Iterable[tuple[str, float]] | Iterable[Any],
    min_mass: float = MIN_NUMBER_MASS,
) -> JudgeResult:
    """Score from a first-token ``{token: logprob}`` dict (or (token, logprob) pairs, or objects
    with ``.token``/``.logprob`` as in the OpenAI response). Tokens that are the same integer after
    strip (``"85"``, ``" 85"``) add up."""
    if isinstance(top_logprobs, Mapping):
        pairs: Iterable[tuple[str, float]] = top_logprobs.items()
    else:
        pairs = (
            (item.token, item.logprob) if hasattr(item, "token") else (item[0], item[1])
            for item in top_logprobs
        )
    probs: dict[int, float] = {}
    for token, logprob in pairs:
        k = parse_number_token(token)
        if k is not None and logprob is not None and math.isfinite(logprob):
            probs[k] = probs.get(k, 0.0) + math.exp(logprob)
    return score_from_distribution(probs, min_mass)


# --------------------------------------------------------------------------------------------
# Disk cache


class ScoreCache:
    """Judge answers on disk: sqlite table keyed by sha256(judge identity, prompt)."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.path = Path(directory) / "judge.sqlite"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
            with self._conn:
                self._conn.execute(
                    "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, judge TEXT, "
                    "expected REAL, mass REAL, created REAL)"
                )
        except (OSError, sqlite3.Error) as exc:
            raise SteerlabError(f"judge cache {self.path}: cannot open it ({exc})") from None
        self._lock = threading.Lock()

    @staticmethod
    def key(identity: str, prompt: str) -> str:
        return hashlib.sha256(f"{identity}\x00{prompt}".encode()).hexdigest()

    def get_many(self, identity: str, prompts: Sequence[str]) -> dict[str, JudgeResult]:
        keys = {self.key(identity, p): p for p in prompts}
        found: dict[str, JudgeResult] = {}
        items = list(keys)
        with self._lock:
            for start in range(0, len(items), 500):
                chunk = items[start : start + 500]
                rows = self._conn.execute(
                    f"SELECT key, expected, mass FROM answers WHERE key IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                for key, expected, mass in rows:
                    found[keys[key]] = JudgeResult(None, mass, expected)
        return found

    def put_many(self, identity: str, results: Mapping[str, JudgeResult]) -> None:
        rows = [
            (self.key(identity, p), identity, r.expected, r.mass, time.time())
            for p, r in results.items()
            if r.cacheable
        ]
        if not rows:
            return
        with self._lock, self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self._conn.close()


def default_cache_dir() -> Path:
    return embedded.cache_dir() / "judge"


class BaseJudge:
    """Deduplicates prompts, serves what the disk cache has, computes the rest in ``_compute``."""

    name: str = "judge"

    def __init__(
        self,
        identity: str,
        cache_dir: str | os.PathLike[str] | bool | None = None,
        min_mass: float = MIN_NUMBER_MASS,
    ):
        if not 0 <= min_mass <= 1:
            raise SteerlabError(f"--judge-min-mass {min_mass}: expected a probability in [0, 1]")
        self.identity = identity
        self.min_mass = min_mass
        if cache_dir is False:
            self.cache: ScoreCache | None = None
        else:
            self.cache = ScoreCache(
                default_cache_dir() if cache_dir is None or cache_dir is True else cache_dir
            )

    def score(self, prompts: list[str]) -> list[float | None]:
        """Scores in [0, 100] (None where the judge gave no number, or could not be reached)."""
        return [r.score for r in self.evaluate(prompts)]

    def evaluate(self, prompts: Sequence[str]) -> list[JudgeResult]:
        """Like :meth:`score`, with the probability mass on numbers for each prompt."""
        if isinstance(prompts, str):
            raise TypeError("score() takes a list of prompts, not one string")
        unique = list(dict.fromkeys(prompts))
        known = self.cache.get_many(self.identity, unique) if self.cache is not None else {}
        todo = [p for p in unique if p not in known]
        if todo:
            computed = dict(zip(todo, self._compute(todo), strict=True))
            if self.cache is not None:
                self.cache.put_many(self.identity, computed)
            known.update(computed)
        return [known[p].with_threshold(self.min_mass) for p in prompts]

    def _compute(self, prompts: list[str]) -> list[JudgeResult]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


# --------------------------------------------------------------------------------------------
# openai:MODEL


_FATAL_STATUS = {401: "authentication failed (check OPENAI_API_KEY / --judge-api-key)",
                 403: "permission denied for this key",
                 404: "not found (check the model name and the base URL, which usually ends in /v1)"}
_RETRY_STATUS = {408, 409, 429}


class OpenAIJudge(BaseJudge):
    """Judge through an OpenAI-compatible chat-completions endpoint (see module docstring)."""

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
        import openai

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
        self._client = openai.OpenAI(
            api_key=api_key, base_url=self.base_url, max_retries=0, timeout=timeout
        )
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
            log.warning("judge %s: %d of %d prompts got no answer (scored None; not cached, a "
                        "rerun asks again)", self.name, failed, len(prompts))
        return [r for r in results if r is not None]

    def _ask(self, prompt: str) -> JudgeResult:
        import openai

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
                        f"judge {self.name} at {self.base_url}: HTTP {status}, "
                        f"{_FATAL_STATUS[status]}"
                    ) from None
                if status not in _RETRY_STATUS and status < 500:
                    self._warn_once(
                        f"http{status}",
                        f"judge {self.name}: HTTP {status} for a prompt ({_short(exc)}); "
                        "scored None",
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
                    f"judge {self.name} at {self.base_url}: {reason} after {attempt + 1} tries; "
                    "scored None",
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


# --------------------------------------------------------------------------------------------
# local[:MODEL]


_BYTE_DIGIT = re.compile(r"<0x3[0-9]>")  # SentencePiece byte-fallback pieces for "0".."9"


def _starts_with_digit(piece: str | None) -> bool:
    return bool(piece) and (piece[0] in DIGITS or bool(_BYTE_DIGIT.fullmatch(piece)))


@dataclass
class _Row:
    """One sequence: prompt token ids followed by the continuations scored after it."""

    prompt: list[int]
    conts: list[list[int]]


class LocalJudge(BaseJudge):
    """Exact expected score from a local causal LM (see module docstring)."""

    def __init__(
        self,
        lm: LoadedModel,
        batch_size: int = 4,
        cache_dir: str | os.PathLike[str] | bool | None = False,
        tree: bool | None = None,
        name: str | None = None,
        min_mass: float = MIN_NUMBER_MASS,
    ):
        if batch_size < 1:
            raise SteerlabError(f"--judge-batch-size {batch_size}: expected at least 1")
        self.lm = lm
        self.batch_size = batch_size
        self.name = name or f"local:{lm.name}"
        self.forwards = 0  # model forward passes run (for tests and logs)
        model = unwrap_model(lm.model)
        config = getattr(model, "config", None)
        attn = getattr(config, "_attn_implementation", None) or "eager"
        self._tree_ok = attn in ("eager", "sdpa") if tree is None else tree
        self._sliding = getattr(config, "sliding_window", None) or None
        params = inspect.signature(model.forward).parameters
        self._keep_arg = "logits_to_keep" in params
        self._digit_mask: torch.Tensor | None = None
        dtype = str(lm.dtype).removeprefix("torch.")
        adapter = f"+{lm.adapter}" if lm.adapter else ""
        super().__init__(f"local:{lm.name}{adapter}[{dtype}]#{_LOCAL_METHOD}", cache_dir, min_mass)

    # ---- tokenization -----------------------------------------------------------------------

    def _answer_prefix(self, prompt: str, rendered: str) -> str:
        """What the chat template writes between the generation prompt and an answer's text."""
        tok = self.lm.tokenizer
        messages = [*to_messages(prompt), {"role": "assistant", "content": "7"}]
        if not has_system_role(tok):
            messages = merge_system_role(messages)
        try:
            full = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        except Exception:  # templates that reject a trailing assistant turn
            return ""
        if not full.startswith(rendered):
            return ""
        rest = full[len(rendered) :]
        cut = rest.find("7")
        return rest[:cut] if cut > 0 else ""

    def _encode(self, prompt: str) -> _Row:
        """Prompt ids and the token ids of each answer "0".."100" as the model would continue."""
        tok = self.lm.tokenizer
        rendered = render_prompt(tok, prompt)
        prefix = self._answer_prefix(prompt, rendered)
        prompt_ids = list(tok(rendered, add_special_tokens=False)["input_ids"])
        if not prompt_ids:
            raise SteerlabError("judge prompt renders to no tokens")
        texts = [rendered + prefix + a for a in ANSWERS]
        full = tok(texts, add_special_tokens=False)["input_ids"]
        n = len(prompt_ids)
        conts = []
        for answer, ids in zip(ANSWERS, full, strict=True):
            ids = list(ids)
            if ids[:n] == prompt_ids and len(ids) > n:
                conts.append(ids[n:])
            else:  # the answer merged with the prompt's last token: the model cannot emit that
                conts.append(list(tok(prefix + answer, add_special_tokens=False)["input_ids"]))
        return _Row(prompt_ids, conts)

    def digit_mask(self, vocab: int) -> torch.Tensor:
        """Bool [vocab]: tokens whose text starts with an ASCII digit (they continue a number).

        Raw vocabulary pieces are used: a piece with a leading space marker ("Ġ5", "▁5") does not
        continue the number ("42 5" is not 425).
        """
        if self._digit_mask is None or self._digit_mask.numel() != vocab:
            tok = self.lm.tokenizer
            n = min(vocab, len(tok))
            pieces = tok.convert_ids_to_tokens(list(range(n)))
            mask = torch.zeros(vocab, dtype=torch.bool)
            mask[:n] = torch.tensor([_starts_with_digit(p) for p in pieces], dtype=torch.bool)
            self._digit_mask = mask
        return self._digit_mask

    # ---- scoring ------------------------------------------------------------------------------

    def answer_logprobs(self, prompts: Sequence[str]) -> torch.Tensor:
        """float64 [n_prompts, 101]: log p(reply is exactly k) for k = 0..100 (no cache)."""
        rows = [self._encode(p) for p in prompts]
        out = torch.empty(len(rows), len(ANSWERS), dtype=torch.float64)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].prompt))
        with progress_bar(f"judging ({self.name})", len(rows)) as advance:
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = [rows[i] for i in idx]
                for i, logp in zip(idx, self._score_rows(batch), strict=True):
                    out[i] = logp
                advance(len(idx))
        return out

    def _compute(self, prompts: list[str]) -> list[JudgeResult]:
        logp = self.answer_logprobs(prompts)
        return [score_from_distribution(row.exp().tolist()) for row in logp]

    def _score_rows(self, rows: list[_Row]) -> list[torch.Tensor]:
        longest = max(len(r.prompt) + sum(map(len, r.conts)) for r in rows)
        if self._tree_ok and not (self._sliding and longest > self._sliding):
            return [t for t in self._forward(rows, tree=True)]
        # Fallback: one row per (prompt, answer), plain causal attention.
        flat = [_Row(r.prompt, [c]) for r in rows for c in r.conts]
        per = max(1, self.batch_size * 8)
        logps = []
        for start in range(0, len(flat), per):
            logps.extend(self._forward(flat[start : start + per], tree=False))
        flat_logp = torch.cat(logps)
        return list(flat_logp.split([len(r.conts) for r in rows]))

    def _forward(self, rows: list[_Row], tree: bool) -> list[torch.Tensor]:
        """One forward pass over left-padded rows; returns log p of each continuation per row."""
        lm = self.lm
        device = lm.device
        seqs, groups, positions = [], [], []
        for r in rows:
            ids = list(r.prompt)
            grp = [0] * len(r.prompt)
            pos = list(range(len(r.prompt)))
            for b, cont in enumerate(r.conts, 1):
                ids += cont
                grp += [b] * len(cont)
                pos += range(len(r.prompt), len(r.prompt) + len(cont))
            seqs.append(ids)
            groups.append(grp)
            positions.append(pos)
        width = max(map(len, seqs))
        pads = [width - len(s) for s in seqs]
        pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        group = torch.full((len(rows), width), -1, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (s, g, p) in enumerate(zip(seqs, groups, positions, strict=True)):
            input_ids[i, pads[i] :] = torch.tensor(s)
            group[i, pads[i] :] = torch.tensor(g)
            position_ids[i, pads[i] :] = torch.tensor(p)
        valid = group >= 0
        if tree:
            q, kv = group[:, :, None], group[:, None, :]
            causal = torch.ones(width, width, dtype=torch.bool).tril()
            allowed = causal & valid[:, None, :] & ((kv == 0) | (kv == q))
            allowed |= torch.eye(width, dtype=torch.bool)  # pad rows attend to themselves
            mask = torch.zeros(allowed.shape, dtype=lm.dtype).masked_fill(
                ~allowed, torch.finfo(lm.dtype).min
            )[:, None]
        else:
            mask = valid.long()
        # Logits are needed from the last prompt token on: the last `keep` positions of every row.
        keep = max(sum(map(len, r.conts)) for r in rows) + 1
        kwargs: dict[str, Any] = {"logits_to_keep": keep} if self._keep_arg else {}
        with torch.inference_mode():
            logits = lm.model(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                position_ids=position_ids.to(device),
                use_cache=False,
                **kwargs,
            ).logits
        self.forwards += 1
        logits = logits[:, -keep:].float()
        digit = self.digit_mask(logits.shape[-1]).to(logits.device)
        results = []
        for i, r in enumerate(rows):
            rel = keep - (len(seqs[i]) - len(r.prompt))  # index (in kept logits) of first cont token
            preds, targets, ends, owner = [], [], [], []
            offset = rel
            for b, cont in enumerate(r.conts):
                # token j is predicted by the position before it (the last prompt token for j=0)
                preds += [rel - 1, *range(offset, offset + len(cont) - 1)]
                targets += cont
                owner += [b] * len(cont)
                ends.append(offset + len(cont) - 1)
                offset += len(cont)
            row = logits[i]
            logz = torch.logsumexp(row[preds + ends], dim=-1)
            n_tok = len(preds)
            tok_lp = row[preds, targets] - logz[:n_tok]
            end_rows = row[ends]
            stop_lp = torch.logsumexp(end_rows.masked_fill(digit, -math.inf), dim=-1) - logz[n_tok:]
            total = torch.zeros(len(r.conts), dtype=torch.float64, device=row.device)
            total.index_add_(0, torch.tensor(owner, device=row.device), tok_lp.double())
            results.append((total + stop_lp.double()).cpu())
        return results


# --------------------------------------------------------------------------------------------
# Construction and helpers


def make_judge(
    spec: str | LoadedModel | Judge,
    cache_dir: str | os.PathLike[str] | bool | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    concurrency: int = 8,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int = 4,
    **kwargs: Any,
) -> Judge:
    """Build a judge from ``openai:MODEL``, ``local`` / ``local:MODEL_SPEC``, or a LoadedModel.

    ``cache_dir``: directory of the on-disk answer cache (default ``<steerlab cache>/judge``;
    ``False`` disables it). A LoadedModel passed directly is not cached on disk unless
    ``cache_dir`` is given (its name need not identify its weights). Extra keyword arguments go to
    :class:`OpenAIJudge` (``max_retries``, ``retry_base_delay``, ``timeout``) or :class:`LocalJudge`.
    """
    if isinstance(spec, LoadedModel):
        return LocalJudge(spec, batch_size=batch_size,
                          cache_dir=False if cache_dir is None else cache_dir, **kwargs)
    if not isinstance(spec, str):
        if isinstance(spec, Judge):
            return spec
        raise SteerlabError(f"--judge {spec!r}: expected a spec string such as openai:MODEL or local")
    kind, sep, rest = spec.strip().partition(":")
    if kind == "openai":
        if not rest.strip():
            raise SteerlabError(f"--judge {spec!r}: expected openai:MODEL with a model name")
        return OpenAIJudge(rest.strip(), base_url=base_url, api_key=api_key,
                           concurrency=concurrency, cache_dir=cache_dir, **kwargs)
    if kind == "local":
        model_spec = rest.strip() if sep else LOCAL_DEFAULT_MODEL
        if not model_spec:
            raise SteerlabError(f"--judge {spec!r}: expected local or local:MODEL_SPEC")
        lm = load_model(model_spec, device=device, dtype=dtype)
        return LocalJudge(lm, batch_size=batch_size, cache_dir=cache_dir,
                          name=f"local:{model_spec}", **kwargs)
    raise SteerlabError(
        f"--judge {spec!r}: expected openai:MODEL (an OpenAI-compatible endpoint), local (the "
        "embedded smollm2) or local:MODEL_SPEC (any model steerlab can load)"
    )


def _fill_all(template: str, questions: Sequence[str], answers: Sequence[str], what: str) -> list[str]:
    check_judge_prompt(template, what)
    if len(questions) != len(answers):
        raise SteerlabError(
            f"{what}: {len(questions)} questions but {len(answers)} answers (expected one answer "
            "per question)"
        )
    return [fill_judge_prompt(template, q, a) for q, a in zip(questions, answers, strict=True)]


def judge_trait(
    judge: Judge, eval_prompt: str, questions: Sequence[str], answers: Sequence[str]
) -> list[float | None]:
    """Trait scores 0-100 (None where the judge gave no number) for (question, answer) pairs."""
    return judge.score(_fill_all(eval_prompt, questions, answers, "eval_prompt"))


def judge_coherence(
    judge: Judge, questions: Sequence[str], answers: Sequence[str], prompt: str | None = None
) -> list[float | None]:
    """Coherence scores 0-100 with the built-in coherence prompt (or ``prompt``)."""
    template = coherence_prompt() if prompt is None else prompt
    return judge.score(_fill_all(template, questions, answers, "coherence prompt"))


def mean_score(scores: Iterable[float | None]) -> float | None:
    """Mean of the non-None scores (None if there are none)."""
    values = [s for s in scores if s is not None]
    return sum(values) / len(values) if values else None


__all__ = [
    "ANSWERS",
    "MIN_NUMBER_MASS",
    "BaseJudge",
    "Judge",
    "JudgeResult",
    "LocalJudge",
    "OpenAIJudge",
    "ScoreCache",
    "judge_coherence",
    "judge_trait",
    "make_judge",
    "mean_score",
    "parse_number_token",
    "score_from_distribution",
    "score_from_top_logprobs",
]
