"""Model-diff vectors: how a fine-tuned model's residual stream differs from its base model's.

The vector for layer L is ``mean over samples of (fine-tuned - base)`` of the chosen reduction of
the output of block L (``hidden_states[L + 1]``). Both models see **identical token sequences**:
every sample is tokenized once, with the base model's tokenizer and chat template, and the same
batch goes through both models, so the difference is about the models, never about the inputs.

The fine-tuned side is a PEFT adapter directory (applied to the base model **without merging** by
:func:`~steerlab.model.adapters.attached_adapter`, whose base pass runs the true base weights even
for adapters that carry trained biases or replaced modules, so one copy of the base weights serves
both, a zero adapter gives exactly a zero vector, and the base model is left bit-identical) or a
separate model (a :class:`LoadedModel` or a model spec), whose tokenizer must match the base's (same
vocabulary and ids) and whose shape must match.

Which inputs? The model-diff literature feeds both models the same text. Two choices fit the
research question (does the fine-tune direction match the contrastive direction?):

- ``prompt_last`` on the questions alone: the "fine-tuning shift" of persona vectors (the state
  just before the model answers, which predicts the behaviour).
- response reductions (``response_avg``, ``first_k``) on each question followed by **both** of its
  answers (the positive and the negative one): the diff is then averaged over on- and
  off-behaviour text, so it reflects the change in the model, not the content of one kind of answer.
  This is :func:`pair_diff_samples` with ``answers="both"``, the default for pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

from ..activations.capture import ChatSample, Reduction, forward_batch, iter_batches
from ..errors import SteerlabError
from ..finetune.fingerprint import fingerprint_mismatch, model_fingerprint, read_finetune_info
from ..formats.conversations import detect_format, load_chat_jsonl
from ..formats.pairs import Pair, load_pairs
from ..io.files import file_problem, input_file, json_type, name_problem, read_json, read_text
from ..model.adapters import attached_adapter
from ..model.blocks import unwrap_model
from ..model.loading import LoadedModel, load_model
from ..vectors.vector import SteeringVector
from .mean_difference import MeanDifference, vector_metadata

log = logging.getLogger("steerlab")

Answers = Literal["both", "positive", "negative", "none"]
_TOKENIZER_PROBE = (
    "Steering vectors: Ünïcödé 数字 0123456789 -- 'quotes' \"and\" <tags> \t tabs\n"
    "The quick brown fox jumps over the lazy dog."
)


# --- inputs ---------------------------------------------------------------------------------------
def pair_diff_samples(pairs: Sequence[Pair], answers: Answers = "both") -> list[ChatSample]:
    """Samples for a model diff from pairs: each question with ``both`` answers (positive then
    negative), one of them, or ``none`` (questions only, for prompt reductions)."""
    if answers not in ("both", "positive", "negative", "none"):
        raise SteerlabError(f"--answers {answers!r}: expected both, positive, negative or none")
    samples = []
    for p in pairs:
        if answers == "none":
            samples.append(ChatSample(p.question, "", p.system))
        if answers in ("both", "positive"):
            samples.append(ChatSample(p.question, p.positive, p.system))
        if answers in ("both", "negative"):
            samples.append(ChatSample(p.question, p.negative, p.system))
    return samples


def chat_diff_samples(conversations: Sequence[Sequence[dict[str, str]]]) -> list[ChatSample]:
    """Samples from conversations: the messages before the last assistant turn as the prompt and
    that turn as the response (a conversation not ending in an assistant turn is all prompt)."""
    samples = []
    for messages in conversations:
        messages = [dict(m) for m in messages]
        if messages and messages[-1]["role"] == "assistant":
            samples.append(ChatSample(messages[:-1], messages[-1]["content"]))
        else:
            samples.append(ChatSample(messages))
    return samples


def load_diff_samples(
    path: str | Path,
    reduction: str | Reduction = "response_avg",
    answers: Answers | None = None,
    split: str | None = None,
) -> list[ChatSample]:
    """Samples from a prompts file: pairs JSONL, chat JSONL, a trait JSON (its ``questions``) or a
    text file with one question per line (UTF-8).

    ``answers`` (pairs only) defaults to ``both`` for response reductions and ``none`` for prompt
    reductions; questions-only files work with prompt reductions only.
    """
    red = Reduction.parse(reduction)
    path = input_file(path, "--prompts")
    suffix = path.suffix.lower()
    if suffix == ".json":
        samples = _question_samples(_trait_questions(path), path, red)
    elif suffix == ".txt":
        lines = [ln.strip() for ln in read_text(path, "--prompts").splitlines() if ln.strip()]
        samples = _question_samples(lines, path, red)
    else:
        fmt = detect_format(path)
        if fmt == "pairs":
            chosen = answers or ("both" if red.needs_response else "none")
            return pair_diff_samples(load_pairs(path, split=split), chosen)
        if fmt != "chat":
            raise SteerlabError(
                f"--prompts {path}: expected pairs JSONL {{question, positive, negative}}, chat "
                "JSONL {\"messages\": [...]}, a trait .json with 'questions', or a .txt file of "
                "questions"
            )
        samples = chat_diff_samples(load_chat_jsonl(path, require_response=False))
    if split is not None:
        raise SteerlabError(f"--split applies to pairs files only; {path} is not one")
    if answers is not None:
        raise SteerlabError(f"--answers applies to pairs files only; {path} is not one")
    return samples


PROMPT_REDUCTIONS = ("prompt_last", "prompt_avg")
RESPONSE_REDUCTIONS = ("response_avg",)


def default_reductions(path: str | Path, answers: Answers | None = None) -> tuple[str, ...]:
    """The reductions a model diff uses when none is asked for: ``prompt_last`` and ``prompt_avg``
    for inputs without responses (a .txt or trait .json of questions, chat whose conversations do
    not end in an assistant turn, pairs with ``answers="none"``), else ``response_avg``.

    Raises SteerlabError for a missing or unreadable file (as :func:`load_diff_samples`).
    """
    path = input_file(path, "--prompts")
    if path.suffix.lower() in (".json", ".txt"):
        return PROMPT_REDUCTIONS
    fmt = detect_format(path)
    if fmt == "pairs":
        return PROMPT_REDUCTIONS if answers == "none" else RESPONSE_REDUCTIONS
    samples = chat_diff_samples(load_chat_jsonl(path, require_response=False)) if fmt == "chat" else []
    if fmt == "chat" and not any(s.response for s in samples):
        return PROMPT_REDUCTIONS
    return RESPONSE_REDUCTIONS


def _trait_questions(path: Path) -> list[str]:
    data = read_json(path, "--prompts")
    if not isinstance(data, dict):
        raise SteerlabError(
            f"--prompts {path}: expected a JSON object with a 'questions' list (a trait file), got {json_type(data)}"
        )
    questions = data.get("questions")
    if not isinstance(questions, list) or not all(isinstance(q, str) and q.strip() for q in questions):
        raise SteerlabError(f"--prompts {path}: field 'questions': expected a list of non-empty strings")
    return questions


def _question_samples(questions: list[str], path: Path, red: Reduction) -> list[ChatSample]:
    if not questions:
        raise SteerlabError(f"--prompts {path}: no questions in the file")
    if red.needs_response:
        raise SteerlabError(
            f"--reduction {red.name} needs responses, but {path} holds questions only; use "
            "prompt_last or prompt_avg, or a pairs/chat file"
        )
    return [ChatSample(q) for q in questions]


# --- checks ---------------------------------------------------------------------------------------
def check_same_tokenizer(base: Any, other: Any, what: str = "the fine-tuned model") -> None:
    """Same vocabulary size and the same ids for a probe string, else SteerlabError."""
    if len(base) != len(other):
        raise SteerlabError(
            f"tokenizers differ: the base model has {len(base)} tokens, {what} {len(other)}; a model "
            "diff needs identical token sequences through both models"
        )
    a = base(_TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]
    b = other(_TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]
    if list(a) != list(b):
        raise SteerlabError(
            f"tokenizers differ: the base model and {what} split the same text into different ids; "
            "a model diff needs identical token sequences through both models"
        )
    if getattr(base, "chat_template", None) != getattr(other, "chat_template", None):
        log.warning("the chat templates differ; both models get inputs rendered with the base model's")


def check_same_shape(base: LoadedModel, other: LoadedModel) -> None:
    """Check that two models can be diffed layer by layer: same number of decoder blocks and d_model.

    Raises SteerlabError naming both shapes when they differ; logs a warning (and goes on) when the
    architectures (``config.model_type``) differ but the shapes agree.
    """
    kinds = [getattr(unwrap_model(m.model).config, "model_type", None) for m in (base, other)]
    if kinds[0] != kinds[1]:
        log.warning("the base model is a %s, the fine-tuned model a %s", *kinds)
    if (base.n_layers, base.d_model) != (other.n_layers, other.d_model):
        raise SteerlabError(
            f"model shapes differ: base {base.name} has {base.n_layers} layers x d_model "
            f"{base.d_model}, fine-tuned {other.name} has {other.n_layers} x {other.d_model}"
        )


def check_adapter_base(base: LoadedModel, adapter_dir: str | Path) -> dict[str, Any] | None:
    """Compare the base model with the one a steerlab adapter was trained on (its fingerprint)."""
    info = read_finetune_info(adapter_dir)
    if not info or "base" not in info:
        return info
    why = fingerprint_mismatch(info["base"], model_fingerprint(base))
    if why:
        raise SteerlabError(
            f"adapter {adapter_dir} was fine-tuned on base model {info.get('base_model')!r}, which "
            f"is not the base model {base.name!r} given here ({why}); pass the model it was "
            "trained on (or check_base=False / --no-check-base to diff anyway)"
        )
    return info


# --- extraction -----------------------------------------------------------------------------------
def _mean_diffs(
    base: LoadedModel,
    finetuned: LoadedModel,
    samples: Sequence[ChatSample],
    reductions: Sequence[Reduction],
    batch_size: int,
    base_context: Any,
) -> MeanDifference:
    """The aggregated (fine-tuned − base) sums over samples, per reduction.

    Each batch is encoded once and run through both models (the base under ``base_context``).
    """
    layers = list(range(base.n_layers))
    need_response = any(r.needs_response for r in reductions)
    aggregate = MeanDifference()
    for _, batch in iter_batches(base, samples, batch_size, need_response, "model diff"):
        aggregate.add(forward_batch(finetuned, batch, reductions, layers), 1.0)
        with base_context():
            aggregate.add(forward_batch(base, batch, reductions, layers), -1.0)
    return aggregate


def extract_model_diffs(
    base: LoadedModel,
    finetuned: LoadedModel | str | Path,
    samples: Sequence[ChatSample],
    reductions: Sequence[str | Reduction] = ("response_avg",),
    batch_size: int = 16,
    check_base: bool = True,
) -> dict[str, SteeringVector]:
    """Like :func:`extract_model_diff` for several reductions in one pass: ``{reduction name:
    vector [n_layers, d_model]}``, each ``mean_i (h_L^finetuned(x_i) - h_L^base(x_i))``.

    Raises SteerlabError for no samples, ``batch_size < 1``, a directory that is neither an adapter
    nor a model, the base model passed as its own fine-tune, models of different shape or
    tokenizer, or (``check_base``) an adapter trained on another base model.
    """
    if not samples:
        raise SteerlabError("model diff needs at least one sample (the prompts are empty)")
    if batch_size < 1:
        raise SteerlabError(f"--batch-size {batch_size}: must be at least 1")
    parsed = [Reduction.parse(r) for r in reductions]
    meta = vector_metadata(base, "model_diff", len(samples))
    if isinstance(finetuned, str) and "+" in finetuned and finetuned.split("+", 1)[0] == base.name:
        finetuned = finetuned.split("+", 1)[1]  # BASE+ADAPTER on this very base: apply it unmerged
    if isinstance(finetuned, str | Path) and (unusable := name_problem(finetuned)):
        raise SteerlabError(f"--finetuned {finetuned}: {unusable}")
    if isinstance(finetuned, str | Path) and file_problem(Path(finetuned) / "adapter_config.json") is None:
        info = check_adapter_base(base, finetuned) if check_base else read_finetune_info(finetuned)
        meta["finetuned"] = f"{base.name}+{finetuned}"
        meta["adapter"] = str(finetuned)
        if info:
            meta["finetune_config"] = info.get("config")
            meta["finetune_base_model"] = info.get("base_model")
        with attached_adapter(base, finetuned) as tuned:
            aggregate = _mean_diffs(base, tuned, samples, parsed, batch_size, tuned.model.disable_adapter)
    else:
        if isinstance(finetuned, str | Path):
            if Path(finetuned).is_dir() and not (Path(finetuned) / "config.json").is_file():
                raise SteerlabError(
                    f"--finetuned {finetuned}: neither an adapter directory (adapter_config.json) "
                    "nor a model directory (config.json)"
                )
            finetuned = load_model(str(finetuned), device=str(base.device), dtype=base.dtype)
        if unwrap_model(finetuned.model) is unwrap_model(base.model):
            raise SteerlabError(
                "the fine-tuned model is the base model itself (or wraps the same modules); pass "
                "another model, or the adapter directory to apply it to the base unmerged"
            )
        check_same_shape(base, finetuned)
        check_same_tokenizer(base.tokenizer, finetuned.tokenizer, f"fine-tuned {finetuned.name}")
        meta["finetuned"] = finetuned.name
        if finetuned.adapter:
            meta["adapter"] = finetuned.adapter
        aggregate = _mean_diffs(base, finetuned, samples, parsed, batch_size, nullcontext)
    return aggregate.vectors(len(samples), meta)


def extract_model_diff(
    base: LoadedModel,
    finetuned: LoadedModel | str | Path,
    samples: Sequence[ChatSample],
    reduction: str | Reduction = "response_avg",
    batch_size: int = 16,
    check_base: bool = True,
) -> SteeringVector:
    """Model-diff vector ``[n_layers, d_model]``: mean over samples of (fine-tuned - base)
    activations, per layer (layer L = output of block L), method ``model_diff``.

    Args:
        base: the base model.
        finetuned: a PEFT adapter directory for ``base`` (applied unmerged by
            :func:`~steerlab.model.adapters.attached_adapter`: the base pass runs the true base
            and ``base`` is bit-identical afterwards, also after an error), or a fine-tuned model
            (:class:`LoadedModel` or spec) with the same tokenizer and shape.
        samples: the inputs, fed identically to both models (see the module docstring for which).
        reduction: ``prompt_last``, ``prompt_avg``, ``response_avg`` or ``first_k[:K]``.
        batch_size: sequences per forward pass.
        check_base: for steerlab adapters, check that ``base`` is the model it was trained on.

    Returns ``v_L = mean_i (r(h_L^finetuned(x_i)) - r(h_L^base(x_i)))`` over the samples x_i, ``r``
    the reduction, in activation units (the fine-tune's shift of the residual stream on identical
    inputs, computed by :class:`~steerlab.extract.mean_difference.MeanDifference`); metadata records
    the fine-tuned model or adapter. Raises SteerlabError as :func:`extract_model_diffs` does.
    """
    red = Reduction.parse(reduction)
    return extract_model_diffs(base, finetuned, samples, [red], batch_size, check_base)[red.name]


__all__ = [
    "attached_adapter",
    "chat_diff_samples",
    "check_same_tokenizer",
    "extract_model_diff",
    "extract_model_diffs",
    "load_diff_samples",
    "pair_diff_samples",
]
