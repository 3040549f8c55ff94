"""Drafting trait files with a chat model (``steerlab traits new``).

The model gets the persona-vectors schema and a one-line description and answers with JSON; the
draft is validated like any trait file, and on failure the model is shown the validation error and
asked again (``attempts`` times). Any chat model works: a local model spec (generated with
steerlab) or ``openai:MODEL`` (an OpenAI-compatible endpoint).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Protocol

from ..engines.base import Engine
from ..engines.hf import as_engine
from ..errors import SteerlabError
from ..formats.traits import Trait, trait_from_dict
from ..model.loading import LoadedModel, load_model

Messages = list[dict[str, str]]

DRAFT_PROMPT = """Write a trait definition for studying this behaviour of an AI assistant: "{description}".

Answer with one JSON object and nothing else, with exactly these keys:
- "instruction": a list of {n_instructions} objects {{"pos": ..., "neg": ...}}. "pos" is a system-prompt
  instruction telling the assistant to strongly show the behaviour; "neg" tells it to show the opposite.
- "questions": a list of {n_questions} different user questions that give room for the behaviour to show.
- "eval_prompt": a prompt for a judge model that defines the behaviour, shows the question and answer as
  [QUESTION START]\\n{{question}}\\n[QUESTION END] and [ANSWER START]\\n{{answer}}\\n[ANSWER END], and asks
  for a single number from 0 (not present) to 100 (strongly present). It must contain the placeholders
  {{question}} and {{answer}} and no other curly braces.
"""


class ChatModel(Protocol):
    """Anything that answers a chat: a local model or an OpenAI-compatible endpoint."""

    def complete(self, messages: Messages, max_tokens: int, temperature: float) -> str:
        """The assistant's reply to ``messages`` (at most ``max_tokens`` tokens)."""
        ...


class LocalChat:
    """A local model through steerlab's batched generation."""

    def __init__(self, lm: Engine | LoadedModel) -> None:
        self.lm = as_engine(lm)

    def complete(self, messages: Messages, max_tokens: int, temperature: float) -> str:
        """The local model's reply (greedy at temperature 0, seeded sampling otherwise)."""
        return self.lm.generate(
            [messages], max_new_tokens=max_tokens, temperature=temperature, seed=0, description="drafting"
        )[0].text


class OpenAIChat:
    """Any OpenAI-compatible chat endpoint."""

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None) -> None:
        from openai import OpenAI

        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or ("unused" if base_url else None)
        if api_key is None:
            raise SteerlabError("--model openai:...: set OPENAI_API_KEY (or --base-url for a local server)")
        self.model = model
        self.client = OpenAI(base_url=base_url, api_key=api_key, max_retries=3)

    def complete(self, messages: Messages, max_tokens: int, temperature: float) -> str:
        """The endpoint's reply; raises SteerlabError (one line) when the endpoint fails."""
        from openai import OpenAIError

        try:
            reply = self.client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=max_tokens, temperature=temperature
            )
        except OpenAIError as exc:
            raise SteerlabError(f"chat endpoint error ({type(exc).__name__}: {exc})") from None
        return reply.choices[0].message.content or ""


def make_chat(spec: str, base_url: str | None = None, api_key: str | None = None) -> ChatModel:
    """``openai:MODEL`` or any model spec steerlab can load."""
    if spec.startswith("openai:"):
        return OpenAIChat(spec.removeprefix("openai:"), base_url, api_key)
    return LocalChat(load_model(spec))


def parse_json_object(text: str) -> object:
    """The outermost ``{...}`` in a reply (code fences and prose around it are ignored)."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise SteerlabError("the reply contains no JSON object")
    try:
        return json.loads(text[start : end + 1])
    except json.JSONDecodeError as exc:
        raise SteerlabError(f"the reply is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def draft_trait(
    chat: ChatModel,
    description: str,
    name: str,
    n_instructions: int = 5,
    n_questions: int = 20,
    attempts: int = 3,
    max_tokens: int = 3000,
    temperature: float = 0.7,
) -> tuple[Trait, int]:
    """Draft and validate a trait; returns (trait, attempts used). Raises after ``attempts`` failures
    with the last validation error."""
    if not description.strip():
        raise SteerlabError("traits new: the description is empty")
    messages: Messages = [
        {
            "role": "user",
            "content": DRAFT_PROMPT.format(
                description=description.strip(), n_instructions=n_instructions, n_questions=n_questions
            ),
        }
    ]
    error = ""
    for attempt in range(1, attempts + 1):
        reply = chat.complete(messages, max_tokens, temperature)
        try:
            trait = trait_from_dict(parse_json_object(reply), name=name)
            short = _shortfalls(trait, n_instructions, n_questions)
            if not short:
                return trait, attempt
            error = "; ".join(short)
        except SteerlabError as exc:
            error = str(exc)
        messages += [
            {"role": "assistant", "content": reply},
            {
                "role": "user",
                "content": f"That draft is not valid: {error}. Reply with the corrected JSON object only.",
            },
        ]
    raise SteerlabError(f"traits new: no valid trait after {attempts} attempts; last problem: {error}")


def _shortfalls(trait: Trait, n_instructions: int, n_questions: int) -> Sequence[str]:
    problems = []
    if len(trait.instruction) < n_instructions:
        problems.append(f"'instruction' has {len(trait.instruction)} pairs, expected {n_instructions}")
    if len(trait.questions) < n_questions:
        problems.append(f"'questions' has {len(trait.questions)} questions, expected {n_questions}")
    if len({re.sub(r"\W+", " ", q.lower()).strip() for q in trait.questions}) < len(trait.questions):
        problems.append("'questions' contains duplicates")
    return problems
