"""Assistant-only labels: exactly the assistant turns (content + end-of-turn markup) are trained."""

import copy

import pytest
from finetune_data import MULTI, QA

from steerlab.errors import SteerlabError
from steerlab.finetune.examples import IGNORE, TrainExample, assistant_char_spans, build_example
from steerlab.model.chat import encode_chat


def test_labels_are_ignore_exactly_outside_the_answer(tiny_any):
    """Single turn: the prompt (chat.encode_chat's prompt span) is -100, the answer is trained."""
    tok = tiny_any.tokenizer
    for q, a in QA:
        ex = build_example(
            tok,
            [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ],
        )
        prompt_len = encode_chat(tok, q, a, system="be brief").prompt_len
        assert ex.labels[:prompt_len] == [IGNORE] * prompt_len
        assert ex.labels[prompt_len:] == ex.input_ids[prompt_len:]
        assert ex.n_trained == len(ex.input_ids) - prompt_len
        assert tok.decode(ex.input_ids[prompt_len:]).startswith(a)


def test_multi_turn_labels_cover_every_assistant_turn_only(tiny_any):
    tok = tiny_any.tokenizer
    ex = build_example(tok, MULTI)
    trained = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE])
    end = "<end_of_turn>\n" if "gemma" in tiny_any.name else "<|im_end|>\n"
    assert trained == f"in a dry box{end}it stays soft{end}"
    untrained = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab == IGNORE])
    assert "how should I store bread" in untrained and "in a dry box" not in untrained
    # Truncation keeps the labels aligned and cuts on the right.
    short = build_example(tok, MULTI, max_length=12)
    assert short.input_ids == ex.input_ids[:12] and short.labels == ex.labels[:12]


def test_spans_skip_empty_and_leading_assistant_turns(tiny_llama):
    messages = [
        {"role": "assistant", "content": "hello first"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "ok"},
    ]
    text, spans = assistant_char_spans(tiny_llama.tokenizer, messages)
    assert len(spans) == 1 and text[spans[0][0] : spans[0][1]] == "ok<|im_end|>\n"
    assert TrainExample([1, 2, 3], [IGNORE, 2, 3]).n_trained == 2


def test_a_template_that_is_not_prefix_stable_is_refused(tiny_llama):
    """A template that marks the last turn renders earlier turns differently once a reply follows."""
    tok = copy.deepcopy(tiny_llama.tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{% if loop.last %}<last>{% endif %}{{ m['role'] }}: "
        "{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(SteerlabError, match="assistant turn 1: this chat template does not render"):
        build_example(tok, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
