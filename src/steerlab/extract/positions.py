"""Position-resolved model-diff vectors: the fine-tuning shift read at each of the first k tokens of
text unrelated to the behaviour (docs/design.md §3).

Source: Minder et al. 2025, *Narrow finetuning leaves clearly readable traces in activation
differences* (the "activation difference lens"): the mean difference between a fine-tuned and its
base model's activations over the first few token positions of unrelated text already points along
what the fine-tune taught. Here, for position i (0-based) and layer L (the output of decoder block
L, ``hidden_states[L + 1]``)::

    vector_i[L] = mean over prompts p of ( h_finetuned(p)[L, i] - h_base(p)[L, i] )

**Inputs: plain text, no chat template.** Each prompt is tokenized as the tokenizer does for text
(with its special tokens, e.g. a BOS token for Llama-style tokenizers), as in the lens, which reads
web text. Through a chat template the first positions would be the template's own tokens (often a
fixed system prompt), identical for every prompt, so the prompt set would not vary them at all.

**Position 0 apart.** Position 0 is the first token of every sequence (often BOS), where models
park attention ("attention sinks", with outsized norms); its difference says little about the
text and is reported on its own, never averaged with the others.

The default prompt set is steerlab's built-in generic prompts
(:func:`steerlab.formats.prompts.generic_prompts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..activations.capture import ChatSample
from ..errors import SteerlabError
from ..formats.prompts import generic_prompts
from ..model.loading import LoadedModel
from ..vectors.vector import SteeringVector
from .model_diff import extract_model_diffs

DEFAULT_POSITIONS = 5


def extract_position_diffs(
    base: LoadedModel,
    finetuned: LoadedModel | str | Path,
    prompts: Sequence[str] | None = None,
    k: int = DEFAULT_POSITIONS,
    batch_size: int = 16,
    check_base: bool = True,
) -> dict[int, SteeringVector]:
    """Model-diff vectors at token positions ``0 .. k-1`` of plain-text prompts, in one pass.

    Args:
        base: the base model.
        finetuned: a PEFT adapter directory for ``base`` or a fine-tuned model with the same tokenizer
            and shape (as for :func:`steerlab.extract.model_diff.extract_model_diff`).
        prompts: plain-text prompts unrelated to the behaviour (default: the built-in generic
            prompts); each must have at least ``k`` tokens.
        k: number of positions (default 5); position 0 is the first token (see the module note).
        batch_size: sequences per forward pass.
        check_base: for steerlab adapters, check that ``base`` is the model it was trained on.

    Returns:
        ``{i: SteeringVector [n_layers, d_model]}`` for i in ``0 .. k-1``, method ``model_diff``,
        reduction ``position:i``, with metadata ``position`` (i), ``inputs`` (``"plain text"``) and
        ``prompts`` (``"generic"`` or ``"custom"``).

    Raises:
        SteerlabError: ``k < 1``, no prompts, an empty prompt, or a prompt shorter than ``k`` tokens
        (naming it), plus the model-diff errors (tokenizers or shapes that differ, ...).
    """
    if k < 1:
        raise SteerlabError(f"--positions {k}: expected at least 1 token position")
    source = "generic" if prompts is None else "custom"
    prompts = generic_prompts() if prompts is None else list(prompts)
    if not prompts:
        raise SteerlabError("position-resolved model diff: no prompts given")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise SteerlabError(f"prompt {i}: expected a non-empty string of plain text")
        n_tokens = len(base.tokenizer(prompt)["input_ids"])
        if n_tokens < k:
            raise SteerlabError(
                f"prompt {i} ({prompt[:40]!r}) has {n_tokens} tokens; positions 0..{k - 1} need at least {k}"
            )
    samples = [ChatSample(p, chat=False) for p in prompts]
    names = [f"position:{i}" for i in range(k)]
    vectors = extract_model_diffs(base, finetuned, samples, names, batch_size, check_base)
    out = {}
    for i, name in enumerate(names):
        vec = vectors[name]
        vec.metadata.update(position=i, inputs="plain text", prompts=source)
        out[i] = vec
    return out


__all__ = ["DEFAULT_POSITIONS", "extract_position_diffs"]
