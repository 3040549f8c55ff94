"""OpenAI response shapes: ``chat.completion`` / ``text_completion`` objects, their streamed chunks
(server-sent events ending with ``data: [DONE]``), logprobs and usage, as in the OpenAI API reference.

A live stream sends text as the worker produces it; a stream that asks for logprobs is sent after its
batch has finished (one chunk per token with its logprobs), because they come from the batch's logits."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from .batcher import Batcher
from .jobs import Choice, Job, LogprobEntry


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The ``usage`` object (token counts)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(data: Any) -> str:
    """One server-sent event carrying ``data`` as JSON."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def chat_logprobs(entries: list[LogprobEntry]) -> dict[str, Any]:
    """Chat ``logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs: [...]}, ...], "refusal"}``;
    ``bytes`` is the token's UTF-8 encoding."""

    def one(token: str, lp: float) -> dict[str, Any]:
        return {"token": token, "logprob": lp, "bytes": list(token.encode("utf-8"))}

    return {
        "content": [{**one(t, lp), "top_logprobs": [one(a, b) for a, b in top]} for t, lp, top in entries],
        "refusal": None,
    }


def completion_logprobs(entries: list[LogprobEntry], k: int, offset: int) -> dict[str, Any]:
    """Completions ``logprobs``: tokens, token_logprobs, top_logprobs (``{token: logprob}`` per token,
    None when ``k`` is 0) and text_offset (characters, starting at ``offset`` = the prompt's length)."""
    offsets = []
    for token, _, _ in entries:
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": [t for t, _, _ in entries],
        "token_logprobs": [lp for _, lp, _ in entries],
        "top_logprobs": [dict(reversed(top)) for _, _, top in entries] if k else None,
        "text_offset": offsets,
    }


class Responder:
    """Submits jobs to ``batcher`` and answers them in OpenAI's shapes, naming the model ``model_name``."""

    def __init__(self, model_name: str, batcher: Batcher) -> None:
        self.model_name = model_name
        self.batcher = batcher

    def _head(self, kind: str, rid: str) -> dict[str, Any]:
        obj = {"chat": "chat.completion", "chat.chunk": "chat.completion.chunk"}.get(kind, "text_completion")
        return {"id": rid, "object": obj, "created": int(time.time()), "model": self.model_name}

    @staticmethod
    def _choice_json(job: Job, choice: Choice) -> dict[str, Any]:
        if job.chat:
            return {
                "index": choice.index,
                "message": {"role": "assistant", "content": choice.text},
                "logprobs": chat_logprobs(choice.logprobs) if choice.logprobs is not None else None,
                "finish_reason": choice.finish_reason,
            }
        prompt = job.prompts[choice.index // job.n]
        lp = (
            completion_logprobs(choice.logprobs, job.logprobs or 0, len(prompt))  # type: ignore[arg-type]
            if choice.logprobs is not None
            else None
        )
        return {"index": choice.index, "text": choice.text, "logprobs": lp, "finish_reason": choice.finish_reason}

    @staticmethod
    def _job_usage(job: Job, choices: list[Choice]) -> dict[str, int]:
        return usage(sum(job.prompt_tokens), sum(c.n_tokens for c in choices))

    async def respond(self, job: Job) -> Any:
        """Queue ``job`` and answer it: a JSON object, or a StreamingResponse for ``stream``. Raises
        APIError 429 when the queue is full (before anything is sent)."""
        self.batcher.submit(job)
        rid = f"{'chatcmpl' if job.chat else 'cmpl'}-{uuid.uuid4().hex}"
        if job.stream:
            return StreamingResponse(
                self._stream(job, rid), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        try:
            while True:
                event = await job.events.get()
                if event[0] == "error":
                    return event[1].response()
                if event[0] == "result":
                    choices = sorted(event[1], key=lambda c: c.index)
                    break
        except asyncio.CancelledError:
            job.cancelled.set()
            raise
        return {
            **self._head("chat" if job.chat else "text", rid),
            "choices": [self._choice_json(job, c) for c in choices],
            "usage": self._job_usage(job, choices),
        }

    def _chunk(
        self,
        job: Job,
        rid: str,
        index: int,
        text: str | None,
        finish: str | None,
        logprobs: list[LogprobEntry] | None = None,
        role: bool = False,
    ) -> dict[str, Any]:
        if job.chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {
                "index": index,
                "delta": delta,
                "logprobs": chat_logprobs(logprobs) if logprobs is not None else None,
                "finish_reason": finish,
            }
            return {**self._head("chat.chunk", rid), "choices": [choice]}
        lp = None
        if logprobs is not None:
            prompt = job.prompts[index // job.n]
            lp = completion_logprobs(logprobs, job.logprobs or 0, len(prompt))  # type: ignore[arg-type]
        choice = {"index": index, "text": text or "", "logprobs": lp, "finish_reason": finish}
        return {**self._head("text", rid), "choices": [choice]}

    async def _stream(self, job: Job, rid: str) -> AsyncIterator[str]:
        finished = False
        try:
            if job.chat:
                for index in range(job.n_rows):
                    yield sse(self._chunk(job, rid, index, "", None, role=True))
            while True:
                event = await job.events.get()
                kind = event[0]
                if kind == "delta":
                    yield sse(self._chunk(job, rid, event[1], event[2], None))
                elif kind == "finish":
                    yield sse(self._chunk(job, rid, event[1], None if job.chat else "", event[2]))
                elif kind == "error":
                    yield sse(event[1].body())
                    break
                else:
                    choices = sorted(event[1], key=lambda c: c.index)
                    if not job.live_stream:  # logprobs: one chunk per token, sent now
                        for c in choices:
                            offset = 0
                            for piece, entry in zip(c.pieces or [], c.logprobs or [], strict=True):
                                chunk = self._chunk(job, rid, c.index, piece, None, [entry])
                                if not job.chat:
                                    chunk["choices"][0]["logprobs"]["text_offset"] = [
                                        len(job.prompts[c.index // job.n]) + offset
                                    ]
                                offset += len(entry[0])
                                yield sse(chunk)
                            yield sse(self._chunk(job, rid, c.index, None if job.chat else "", c.finish_reason))
                    if job.stream_usage:
                        yield sse(
                            {
                                **self._head("chat.chunk" if job.chat else "text", rid),
                                "choices": [],
                                "usage": self._job_usage(job, choices),
                            }
                        )
                    break
            finished = True
            yield "data: [DONE]\n\n"
        finally:
            if not finished:
                job.cancelled.set()
