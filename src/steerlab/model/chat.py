"""Chat formatting and prompt/response token spans.

Messages always go through the tokenizer's chat template. A template without a system role gets
the system prompt merged into the first user turn. The response span is found from the template
delta: the prompt is rendered with the generation prompt, the response text is appended, the whole
string is tokenized once, and tokens starting at or after the end of the rendered prompt are the
response (never by tokenizing pieces separately).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import SteerlabError

Message = dict[str, str]
Prompt = str | Sequence[Message]

# Used for tokenizers that ship no chat template (base models such as GPT-2).
FALLBACK_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

_PROBE = "steerlab-system-probe"


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give a template-less tokenizer the plain fallback template. Returns True if it was added."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return True


def has_system_role(tokenizer: Any) -> bool:
    """Whether the chat template renders a system message (some raise, some drop it)."""
    cached = getattr(tokenizer, "_steerlab_system_role", None)
    if cached is not None:
        return cached
    messages = [{"role": "system", "content": _PROBE}, {"role": "user", "content": "hi"}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        result = _PROBE in text
    except Exception:  # templates raise on unsupported roles
        result = False
    tokenizer._steerlab_system_role = result
    return result


def to_messages(prompt: Prompt, system: str | None = None) -> list[Message]:
    """A prompt string or message list, with an optional system prompt, as a message list."""
    if isinstance(prompt, str):
        messages: list[Message] = [{"role": "user", "content": prompt}]
    else:
        messages = [dict(m) for m in prompt]
        for i, m in enumerate(messages):
            if "role" not in m or "content" not in m:
                raise SteerlabError(f"message {i} needs 'role' and 'content', got {sorted(m)}")
    if system:
        if messages and messages[0]["role"] == "system":
            raise SteerlabError("a system prompt was given twice (argument and first message)")
        messages = [{"role": "system", "content": system}, *messages]
    return messages


def merge_system_role(messages: list[Message]) -> list[Message]:
    """Fold a leading system message into the first user turn (for templates without one)."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], messages[1:]
    if rest and rest[0]["role"] == "user":
        return [{"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}, *rest[1:]]
    return [{"role": "user", "content": system}, *rest]


def render_prompt(tokenizer: Any, prompt: Prompt, system: str | None = None, add_generation_prompt: bool = True) -> str:
    """Render messages through the chat template, ready for the assistant's reply."""
    messages = to_messages(prompt, system)
    if not has_system_role(tokenizer):
        messages = merge_system_role(messages)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


@dataclass(frozen=True)
class EncodedChat:
    """Token ids of prompt + response; ``ids[:prompt_len]`` is the prompt, the rest the response."""

    ids: list[int]
    prompt_len: int

    @property
    def response_len(self) -> int:
        """Number of response tokens: ``len(ids) - prompt_len`` (0 for a prompt alone)."""
        return len(self.ids) - self.prompt_len


def encode_chat(tokenizer: Any, prompt: Prompt, response: str = "", system: str | None = None) -> EncodedChat:
    """Tokenize the rendered prompt followed by ``response`` once, and locate the response span."""
    prompt_text = render_prompt(tokenizer, prompt, system)
    return encode_rendered(tokenizer, prompt_text, response)


def encode_rendered(tokenizer: Any, prompt_text: str, response: str = "") -> EncodedChat:
    """Like encode_chat for an already rendered prompt string."""
    full = prompt_text + response
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        cut = len(prompt_text)
        # A token belongs to the response when it starts at or after the end of the prompt text.
        prompt_len = sum(1 for start, _ in enc["offset_mapping"] if start < cut) if response else len(ids)
        return EncodedChat(ids, prompt_len)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    ids = list(tokenizer(full, add_special_tokens=False)["input_ids"])
    if ids[: len(prompt_ids)] != list(prompt_ids):
        raise SteerlabError(
            "cannot locate the response tokens: the prompt's tokens are not a prefix of "
            "prompt+response with this (slow) tokenizer; use a fast tokenizer"
        )
    return EncodedChat(ids, len(prompt_ids))
