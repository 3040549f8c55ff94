"""Admission: a request body becomes a :class:`~steerlab.serve.jobs.Job`, or an APIError, before any
model work. Checks run cheapest first: the server's size limits (``n``, ``max_tokens``, number of
steering items, stop strings, rows), then the prompt (rendered with the chat template and tokenized on
the event loop, with this object's own tokenizer copy) against ``max_prompt_tokens`` and the context,
then the steering items (vectors loaded, layers parsed, shapes checked against the model) and their
CAST conditions (condition vector, layer and width checked)."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import replace
from typing import Any

from ..errors import SteerlabError
from ..model.blocks import unwrap_model
from ..model.chat import Prompt, render_prompt
from ..model.layers import check_layer_index
from ..steering.conditions import Condition
from ..steering.steerer import parse_layers
from .config import ServeConfig, flag
from .jobs import Job, ResolvedItem
from .protocol import APIError, ChatCompletionRequest, CompletionRequest, GenerationRequest, SteeringItem
from .store import VectorStore

MAX_STOP_STRINGS = 16
COMPLETION_DEFAULT_MAX_TOKENS = 16  # as in the OpenAI API


def max_positions(lm: Any) -> int | None:
    """The model's context length (tokens): an engine's own limit (``max_context``), else the one a
    transformers model's config declares, if any."""
    if getattr(lm, "max_context", None):
        return int(lm.max_context)
    config = unwrap_model(lm.model).config
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def limit_error(param: str, value: int, unit: str, setting: str, config: ServeConfig) -> APIError:
    """The 400 answer for a request over one of the server's limits (code ``limit_exceeded``), naming
    the field, its value, the limit and the flag that sets it, e.g. ``max_tokens: 5000 tokens, more
    than this server's limit of 2048 (steerlab serve --max-tokens-limit)``."""
    return APIError(
        400,
        f"{param}: {value}{unit}, more than this server's limit of {getattr(config, setting)} "
        f"(steerlab serve {flag(setting)})",
        param=param,
        code="limit_exceeded",
    )


class Admission:
    """Validates requests for ``lm`` (a :class:`LoadedModel`, or the vLLM engine) under ``config``;
    ``vectors`` resolves steering vector names.
    ``context`` is the smaller of the model's context length and ``config.max_context`` (None if
    neither is known). Methods raise APIError (400, or 404 for an unknown vector)."""

    def __init__(self, lm: Any, vectors: VectorStore, config: ServeConfig) -> None:
        self.lm = lm
        self.vectors = vectors
        self.config = config
        limits = [x for x in (max_positions(lm), config.max_context) if x]
        self.context = min(limits) if limits else None
        try:  # the worker thread uses lm.tokenizer; the event loop gets its own copy
            self.tokenizer = copy.deepcopy(lm.tokenizer)
        except Exception:  # pragma: no cover - tokenizers that cannot be copied
            self.tokenizer = lm.tokenizer

    # size limits, before any tokenization or vector loading
    def _check_limits(
        self, body: GenerationRequest, n_prompts: int, max_tokens: int | None, max_tokens_param: str
    ) -> None:
        cfg = self.config
        if body.n > cfg.max_n:
            raise limit_error("n", body.n, "", "max_n", cfg)
        if max_tokens is not None and max_tokens > cfg.max_tokens_limit:
            raise limit_error(max_tokens_param, max_tokens, " tokens", "max_tokens_limit", cfg)
        if body.steering is not None and len(body.steering) > cfg.max_steering_items:
            raise limit_error("steering", len(body.steering), " items", "max_steering_items", cfg)
        if n_prompts * body.n > cfg.max_batch:
            raise APIError(
                400,
                f"n: {n_prompts} prompt(s) x n={body.n} rows exceed this server's limit of "
                f"{cfg.max_batch} rows (steerlab serve --max-batch)",
                param="n",
                code="limit_exceeded",
            )

    def _check_prompt(self, prompt_tokens: int, param: str) -> None:
        if prompt_tokens == 0:
            raise APIError(400, f"{param}: the prompt is empty (no tokens)", param=param)
        if prompt_tokens > self.config.max_prompt_tokens:
            raise limit_error(param, prompt_tokens, " prompt tokens", "max_prompt_tokens", self.config)

    def _steering(self, items: list[SteeringItem] | None) -> list[ResolvedItem]:
        resolved: list[ResolvedItem] = []
        seen: dict[tuple, int] = {}
        for i, item in enumerate(items or []):
            where = f"steering[{i}]"
            vector = self.vectors.get(item.vector, f"{where}.vector")
            try:
                layers = tuple(sorted(parse_layers(item.layer, self.lm.n_layers, f"{where}.layer")))
            except SteerlabError as exc:
                raise APIError(400, str(exc), param=f"{where}.layer", code="invalid_layer") from None
            if item.operator == "cap" and item.ceiling is None and item.floor is None:
                raise APIError(
                    400, f"{where}: operator 'cap' needs a ceiling and/or a floor on h·v̂", param=f"{where}.ceiling"
                )
            if item.operator != "cap" and (item.ceiling is not None or item.floor is not None):
                raise APIError(
                    400,
                    f"{where}: ceiling/floor apply to operator 'cap' only, not {item.operator!r}",
                    param=f"{where}.operator",
                )
            condition, condition_key = self._condition(item, where)
            base = (item.vector, id(vector), layers, item.operator, item.positions, item.scale, condition_key)
            seen[base] = seen.get(base, -1) + 1
            resolved.append(
                ResolvedItem(
                    (*base, seen[base]),
                    vector,
                    layers,
                    item.coeff,
                    item.operator,
                    item.positions,
                    item.scale,
                    item.ceiling,
                    item.floor,
                    condition,
                )
            )
            try:  # shapes, zero or NaN directions at these layers, ...
                replace(resolved[-1].spec(), condition=None).interventions(self.lm)
            except SteerlabError as exc:
                raise APIError(400, f"{where}: {exc}", param=where, code="invalid_steering") from None
        return resolved

    def _condition(self, item: SteeringItem, where: str) -> tuple[Condition | None, tuple | None]:
        """The item's CAST condition (vector loaded, layer, width and direction checked) and its batching
        key, or (None, None). Raises APIError 404 for an unknown vector, 400 for one that does not fit."""
        cond = item.condition
        if cond is None:
            return None, None
        vector = self.vectors.get(cond.vector, f"{where}.condition.vector")
        try:
            check_layer_index(cond.layer, self.lm.n_layers, f"{where}.condition.layer", self.lm.name)
        except SteerlabError as exc:
            raise APIError(400, str(exc), param=f"{where}.condition.layer", code="invalid_layer") from None
        try:
            condition = Condition(vector, cond.layer, cond.threshold, cond.comparator, cond.reduction)
            condition.direction(self.lm)  # width, layers held, zero or non-finite direction
        except SteerlabError as exc:
            raise APIError(
                400, f"{where}.condition: {exc}", param=f"{where}.condition", code="invalid_condition"
            ) from None
        key = (cond.vector, id(vector), cond.layer, cond.threshold, condition.comparator, cond.reduction)
        return condition, key

    @staticmethod
    def _stop(stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise APIError(400, f"stop: at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}", param="stop")
        return [s for s in stops if s]

    def _max_tokens(self, requested: int | None, default: int, prompt_tokens: int, param: str) -> int:
        if requested is None:
            requested = default if self.context is None else max(1, min(default, self.context - prompt_tokens))
        if self.context is not None and prompt_tokens + requested > self.context:
            raise APIError(
                400,
                f"This model's maximum context length is {self.context} tokens. However, you requested "
                f"{prompt_tokens + requested} tokens ({prompt_tokens} in the {param}, {requested} in the "
                "completion). Please reduce the length of the prompt or of max_tokens.",
                param=param,
                code="context_length_exceeded",
            )
        return requested

    def _job(
        self,
        body: GenerationRequest,
        prompts: list[Prompt],
        prompt_tokens: list[int],
        chat: bool,
        max_tokens: int | None,
        default_max: int,
        logprobs: int | None,
        param: str,
    ) -> Job:
        stop = self._stop(body.stop)
        limit = min(self._max_tokens(max_tokens, default_max, t, param) for t in prompt_tokens)
        return Job(
            prompts=prompts,
            prompt_tokens=prompt_tokens,
            n=body.n,
            chat=chat,
            max_tokens=limit,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=stop,
            logprobs=logprobs,
            items=self._steering(body.steering),
            stream=body.stream,
            stream_usage=bool(body.stream and body.stream_options and body.stream_options.include_usage),
            loop=asyncio.get_running_loop(),
        )

    def chat_job(self, body: ChatCompletionRequest) -> Job:
        """The job for a chat request (messages through the chat template; ``developer`` = ``system``).
        Must run on the event loop that awaits the job's events."""
        max_tokens, param = body.max_tokens, "max_tokens"
        if body.max_completion_tokens is not None:
            max_tokens, param = body.max_completion_tokens, "max_completion_tokens"
        self._check_limits(body, 1, max_tokens, param)
        messages: list[dict[str, Any]] = []
        for i, m in enumerate(body.messages):
            content = m.content
            if isinstance(content, list):
                if any(part.type != "text" or part.text is None for part in content):
                    raise APIError(
                        400, f"messages[{i}].content: only text parts are supported", param=f"messages[{i}].content"
                    )
                content = "".join(part.text or "" for part in content)
            messages.append({"role": "system" if m.role == "developer" else m.role, "content": content or ""})
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs: requires logprobs to be true", param="top_logprobs")
        try:
            text = render_prompt(self.tokenizer, messages)
        except SteerlabError as exc:
            raise APIError(400, f"messages: {exc}", param="messages") from None
        except Exception as exc:  # chat templates raise on unsupported role orders
            raise APIError(400, f"messages: the chat template rejected them ({exc})", param="messages") from None
        n_prompt = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        self._check_prompt(n_prompt, "messages")
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        return self._job(
            body, [messages], [n_prompt], True, max_tokens, self.config.default_max_tokens, logprobs, "messages"
        )

    def completion_job(self, body: CompletionRequest) -> Job:
        """The job for a completions request (raw text, special tokens added). Must run on the event
        loop that awaits the job's events."""
        if body.echo:
            raise APIError(400, "echo: not supported by steerlab serve", param="echo")
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts:
            raise APIError(400, "prompt: no prompts given", param="prompt")
        self._check_limits(body, len(prompts), body.max_tokens, "max_tokens")
        counts = []
        for i, p in enumerate(prompts):
            counts.append(len(self.tokenizer(p, add_special_tokens=True)["input_ids"]))
            self._check_prompt(counts[-1], "prompt" if isinstance(body.prompt, str) else f"prompt[{i}]")
        return self._job(
            body, list(prompts), counts, False, body.max_tokens, COMPLETION_DEFAULT_MAX_TOKENS, body.logprobs, "prompt"
        )
