"""Chat formatting: exact prompt/response spans with and without a system role."""

import pytest
from tiny import CHATML_TEMPLATE, NO_SYSTEM_TEMPLATE, make_model, make_tiny, make_tokenizer

from steerlab.errors import SteerlabError
from steerlab.model.chat import (
    FALLBACK_CHAT_TEMPLATE,
    encode_chat,
    has_system_role,
    merge_system_role,
    render_prompt,
    to_messages,
)
from steerlab.model.loading import wrap_model

SYSTEM = "you are a helpful honest assistant"
MULTI_TURN = [
    {"role": "user", "content": "how should I store fresh bread"},
    {"role": "assistant", "content": "in a bread box"},
    {"role": "user", "content": "and if it is hot outside?"},
]
RESPONSES = [
    " keep it in a bag",  # leading space
    "Keep it in a paper bag.",  # no leading space
    "yes\n\nthen 1 2 3, maybe 100",  # newlines and numbers
    "café ☕ — ok",  # non-ASCII (multi-byte BPE pieces)
]


def check_exact(tok, prompt, response, system=None):
    """The definition of an exact span, on one case; returns the encoding."""
    enc = encode_chat(tok, prompt, response, system)
    rendered = render_prompt(tok, prompt, system)
    assert enc.ids[: enc.prompt_len] == tok(rendered, add_special_tokens=False)["input_ids"]
    assert tok.decode(enc.ids[enc.prompt_len :]) == response
    assert tok.decode(enc.ids[: enc.prompt_len]) == rendered
    assert enc.response_len == len(enc.ids) - enc.prompt_len > 0
    return enc


@pytest.fixture(scope="module")
def chatml_tok():
    return make_tokenizer(CHATML_TEMPLATE)


@pytest.fixture(scope="module")
def gemma_tok(tiny_gemma):
    return tiny_gemma.tokenizer


@pytest.mark.parametrize("response", RESPONSES)
@pytest.mark.parametrize("system", [None, SYSTEM])
def test_spans_exact_chatml(chatml_tok, response, system):
    check_exact(chatml_tok, "how should I store fresh bread", response, system)


@pytest.mark.parametrize("response", RESPONSES)
@pytest.mark.parametrize("system", [None, SYSTEM])
def test_spans_exact_without_system_role(gemma_tok, response, system):
    check_exact(gemma_tok, "how should I store fresh bread", response, system)


def test_chatml_renders_system_turn(chatml_tok):
    text = render_prompt(chatml_tok, "hi there", SYSTEM)
    assert text == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    )


def test_system_merged_into_first_user_turn(gemma_tok):
    # The fixture's template really refuses a system message ...
    with pytest.raises(Exception, match="System role not supported"):
        gemma_tok.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}],
            tokenize=False,
        )
    # ... so steerlab folds it into the first user turn.
    text = render_prompt(gemma_tok, "hi there", SYSTEM)
    assert text == (f"<bos><start_of_turn>user\n{SYSTEM}\n\nhi there<end_of_turn>\n<start_of_turn>model\n")
    multi = render_prompt(gemma_tok, MULTI_TURN, SYSTEM)
    assert multi.count(SYSTEM) == 1
    assert multi.startswith(f"<bos><start_of_turn>user\n{SYSTEM}\n\n{MULTI_TURN[0]['content']}")


@pytest.mark.parametrize("system", [None, SYSTEM])
def test_multi_turn_chatml(chatml_tok, system):
    enc = check_exact(chatml_tok, MULTI_TURN, " close it in a tin", system)
    prompt_text = chatml_tok.decode(enc.ids[: enc.prompt_len])
    # every earlier turn is in the prompt span, in order, and the response is not
    positions = [prompt_text.index(m["content"]) for m in MULTI_TURN]
    assert positions == sorted(positions)
    assert "close it in a tin" not in prompt_text
    assert prompt_text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("system", [None, SYSTEM])
def test_multi_turn_without_system_role(gemma_tok, system):
    enc = check_exact(gemma_tok, MULTI_TURN, "close it in a tin", system)
    prompt_text = gemma_tok.decode(enc.ids[: enc.prompt_len])
    assert prompt_text.count("<start_of_turn>model\n") == 2  # earlier reply + generation prompt
    assert prompt_text.endswith("<start_of_turn>model\n")


def test_system_message_in_list_same_as_argument(chatml_tok, gemma_tok):
    for tok in (chatml_tok, gemma_tok):
        as_arg = encode_chat(tok, MULTI_TURN, " ok", SYSTEM)
        in_list = encode_chat(tok, [{"role": "system", "content": SYSTEM}, *MULTI_TURN], " ok")
        assert as_arg == in_list


def test_empty_response_is_all_prompt(chatml_tok):
    enc = encode_chat(chatml_tok, "hi", "")
    assert enc.prompt_len == len(enc.ids) and enc.response_len == 0
    assert chatml_tok.decode(enc.ids) == render_prompt(chatml_tok, "hi")


def test_has_system_role():
    assert has_system_role(make_tokenizer(CHATML_TEMPLATE)) is True
    assert has_system_role(make_tokenizer(NO_SYSTEM_TEMPLATE)) is False
    # a template that silently drops system messages has no system role either
    dropping = (
        "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['role'] }}: {{ m['content'] }}\n"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    )
    tok = make_tokenizer(dropping)
    assert has_system_role(tok) is False
    text = render_prompt(tok, "hi", SYSTEM)
    assert SYSTEM in text  # merged into the user turn instead of being lost
    assert make_tiny("llama").has_system_role is True


def test_fallback_template_for_tokenizer_without_one():
    tok = make_tokenizer(template=None)
    assert not tok.chat_template
    lm = wrap_model(make_model("gpt2", len(tok)), tok)
    assert lm.tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE
    assert lm.extra["fallback_template"] is True
    assert lm.info()["chat_template"] is False
    assert lm.has_system_role is True
    text = render_prompt(lm.tokenizer, MULTI_TURN, SYSTEM)
    assert text == (
        f"<bos>{SYSTEM}\n\nUser: {MULTI_TURN[0]['content']}\nAssistant: {MULTI_TURN[1]['content']}\n"
        f"User: {MULTI_TURN[2]['content']}\nAssistant:"
    )
    for response in RESPONSES:
        check_exact(lm.tokenizer, "how should I store fresh bread", response, SYSTEM)
    # a tokenizer with a template keeps it
    assert make_tiny("llama").extra["fallback_template"] is False


def test_message_errors():
    with pytest.raises(SteerlabError, match="message 1 needs 'role' and 'content'"):
        to_messages([{"role": "user", "content": "a"}, {"role": "assistant"}])
    with pytest.raises(SteerlabError, match="system prompt was given twice"):
        to_messages([{"role": "system", "content": "a"}, {"role": "user", "content": "b"}], "c")


def test_merge_system_role_edge_cases():
    assert merge_system_role([{"role": "system", "content": "s"}]) == [{"role": "user", "content": "s"}]
    msgs = [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]
    assert merge_system_role(msgs) == [
        {"role": "user", "content": "s"},
        {"role": "assistant", "content": "a"},
    ]
    plain = [{"role": "user", "content": "u"}]
    assert merge_system_role(plain) == plain


@pytest.mark.slow
@pytest.mark.parametrize("system", [None, SYSTEM])
def test_spans_exact_smollm2(smollm2, system):
    tok = smollm2.tokenizer
    assert has_system_role(tok) is True
    for response in RESPONSES:
        check_exact(tok, "how should I store fresh bread", response, system)
    enc = check_exact(tok, MULTI_TURN, " Close it in a tin.", system)
    text = tok.decode(enc.ids[: enc.prompt_len])
    if system:
        assert text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")
