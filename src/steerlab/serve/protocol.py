"""The wire protocol: request bodies (OpenAI chat/completions + steerlab's ``steering``) and errors in
OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.

Field names, defaults and ranges follow the OpenAI API reference (platform.openai.com/docs/api-reference):
``temperature`` 0..2 (default 1), ``top_p`` (0, 1], ``top_logprobs`` 0..20. The server's own size
limits (``n``, ``max_tokens``, prompt tokens, steering items) are checked later, against
:class:`~steerlab.serve.config.ServeConfig`, so that their messages name the limit."""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

MAX_TOP_LOGPROBS = 20


class APIError(Exception):
    """An error answered in OpenAI's shape with an HTTP ``status``; ``param`` names the request field at
    fault, ``code`` is a machine-readable reason, ``headers`` go with the response (``Retry-After``)."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        """The HTTP response: :meth:`body` with ``status`` and ``headers``."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def validation_error(errors: list[dict[str, Any]]) -> APIError:
    """One 400 :class:`APIError` for pydantic's validation ``errors`` (as ``RequestValidationError.errors()``
    gives them): up to five ``field: problem`` parts, ``param`` the first field at fault."""
    parts, param = [], None
    for err in errors[:5]:
        loc = list(err.get("loc", ()))
        if loc and loc[0] == "body":
            loc = loc[1:]
        if err.get("type") == "json_invalid":
            parts.append(f"malformed JSON body: {err.get('msg')}")
            continue
        where = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in loc).lstrip(".") or "body"
        param = param or where
        parts.append(f"{where}: {err.get('msg')}")
    return APIError(400, "; ".join(parts) or "invalid request body", param=param, code="invalid_request")


class ConditionItem(BaseModel):
    """A CAST condition on a steering item (:mod:`steerlab.steering.conditions`): the item steers a row
    only when its prompt's condition similarity with the named vector's direction at ``layer`` passes
    ``threshold`` (a cosine in [-1, 1]) by ``comparator`` (``>``: above it, ``<``: below it), read on
    the ``reduction`` of the prompt's tokens. Calibrate the threshold with ``steerlab condition``."""

    model_config = ConfigDict(extra="forbid")

    vector: str = Field(min_length=1)
    layer: int
    threshold: float = Field(ge=-1.0, le=1.0, allow_inf_nan=False)
    comparator: Literal[">", "<"] = ">"
    reduction: Literal["prompt_avg", "prompt_last"] = "prompt_avg"


class SteeringItem(BaseModel):
    """One intervention of a request: a named vector from the vectors directory at some layers
    (layer L = output of decoder block L), with ``operator``/``positions``/``scale`` as in
    :class:`steerlab.steering.steerer.SteeringSpec`; ``ceiling``/``floor`` bound h·v̂ for ``cap``;
    ``condition`` (:class:`ConditionItem`) gates the item on each prompt (CAST)."""

    model_config = ConfigDict(extra="forbid")

    vector: str = Field(min_length=1)
    layer: int | list[int] | str
    coeff: float = Field(1.0, allow_inf_nan=False)
    positions: Literal["all", "prompt", "response"] = "all"
    operator: Literal["add", "ablate", "cap"] = "add"
    scale: Literal["raw", "unit"] = "raw"
    ceiling: float | None = Field(None, allow_inf_nan=False)
    floor: float | None = Field(None, allow_inf_nan=False)
    condition: ConditionItem | None = None


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with the token counts."""

    include_usage: bool = False


class GenerationRequest(BaseModel):
    """The fields chat and completion requests share. ``model`` is accepted and ignored (one model is
    served); unknown fields are ignored, as by OpenAI-compatible servers."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    steering: list[SteeringItem] | None = None


class ContentPart(BaseModel):
    """A part of a message's content; only ``{"type": "text", "text": ...}`` is served."""

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """A chat message (``developer`` is treated as ``system``)."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(GenerationRequest):
    """``POST /v1/chat/completions``: messages go through the tokenizer's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


class CompletionRequest(GenerationRequest):
    """``POST /v1/completions``: raw text (one string or a list), the tokenizer's special tokens added."""

    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
