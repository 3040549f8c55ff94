"""LoRA fine-tuning, SFT or DPO (the "fine-tuned model" side of model diffing).

:func:`run_finetune` trains a PEFT LoRA adapter on chat conversations (:mod:`steerlab.formats.conversations`)
with an assistant-only loss (SFT); :func:`run_finetune_pairs` trains one on contrastive pairs, with
either objective: SFT on one answer of each pair, or DPO with the behaviour answer chosen and the
other rejected (:mod:`steerlab.finetune.preference`). Either writes the adapter to a directory,
atomically (a temp directory renamed at the end, so a killed run leaves no half adapter)::

    DIR/adapter_config.json, DIR/adapter_model.safetensors   (peft save_pretrained)
    DIR/steerlab_finetune.json   full config (objective included), steerlab version, base model and
                                 its fingerprint, data hash, train time (prepare_time_s: DPO's
                                 reference pass), per-step losses, per-epoch means (loss; for DPO
                                 also the reward margin and accuracy)
    DIR/train_log.jsonl          one line per optimizer step: step, epoch, loss (DPO: reward margin,
                                 accuracy, chosen and rejected reward), tokens, lr, time
    DIR/stage.meta.json          the stage's completion marker (:mod:`steerlab.io.runs`)

The directory is a :class:`steerlab.io.runs.Stage` artifact whose config is the fine-tune's settings
(the objective and, for DPO, beta among them), the hash of the data and the base model's
fingerprint: a rerun with the same three is skipped (the recorded result is returned), any change
retrains and replaces it, so an SFT adapter is never reused for DPO or the other way round. A run
killed while training leaves the previous directory (if any) as it was and no temp directory
(SIGTERM included).

Both objectives run through the one loop of :mod:`steerlab.finetune.loop`; they differ only in
collation and loss (:mod:`steerlab.finetune.loss`). The base model passed in is left as it was: the
LoRA layers are removed again after saving. Use the adapter with ``load_model("BASE+DIR")`` or
:func:`steerlab.extract.model_diff.extract_model_diff`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from torch import nn

from ..errors import SteerlabError
from ..formats.conversations import pairs_to_chat, validate_conversation
from ..formats.pairs import Pair
from ..io.runs import json_sha256
from ..model.chat import Message
from ..model.loading import LoadedModel
from .collate import collate_train
from .config import FinetuneConfig
from .examples import TrainExample, build_example
from .loop import Step
from .loss import batch_loss
from .preference import DpoObjective, build_preference_example, reference_logprobs
from .stage import FinetuneResult, finetune_stage
from .targets import resolve_layers, resolve_target_modules

log = logging.getLogger("steerlab")


class SftObjective:
    """Supervised fine-tuning for :func:`steerlab.finetune.loop.train_adapter`: a batch's loss is the
    mean next-token cross-entropy per assistant token (:func:`steerlab.finetune.loss.batch_loss`)."""

    shown: tuple[str, ...] = ()

    def __init__(self, examples: Sequence[TrainExample], pad_id: int, device: Any) -> None:
        self.examples = list(examples)
        self.pad_id = pad_id
        self.device = device
        self.lengths = [len(e.input_ids) for e in self.examples]

    def step(self, model: nn.Module, indices: list[int]) -> Step:
        """The mean loss per assistant token of the conversations at ``indices`` under ``model``."""
        batch = collate_train([self.examples[i] for i in indices], self.pad_id, self.device)
        loss_sum, n_tok = batch_loss(model, batch)
        return Step(loss_sum / n_tok, n_tok, counts={"tokens": n_tok, "examples": len(indices)})


def _settings(lm: LoadedModel, config: FinetuneConfig | None) -> tuple[FinetuneConfig, dict[str, Any]]:
    """The checked config and the record of it that is hashed: LoRA targets and layers resolved; for
    SFT without ``beta`` (it has no effect there, so changing it keeps an SFT adapter)."""
    from peft import PeftModel

    config = config or FinetuneConfig()
    config.validate()
    if isinstance(lm.model, PeftModel):
        raise SteerlabError(
            f"{lm.name} already carries an adapter ({lm.adapter}); fine-tune a plain base model "
            "(merge the adapter into a saved model first if you want to stack)"
        )
    recorded = {
        **asdict(config),
        "target_modules": resolve_target_modules(lm, config.target_modules),
        "layers": resolve_layers(lm, config.layers),
        "optimizer": "AdamW",
        "schedule": "constant",
    }
    if config.objective == "sft":
        del recorded["beta"]
        recorded["loss"] = "assistant_only"
    else:
        recorded |= {"loss": "dpo_sigmoid", "reference": "base model, log-probs computed before training"}
    return config, recorded


def run_finetune(
    lm: LoadedModel,
    conversations: Sequence[Sequence[Message]],
    out_dir: str | Path,
    config: FinetuneConfig | None = None,
    *,
    source: dict[str, Any] | None = None,
) -> FinetuneResult:
    """Train (or keep) a LoRA adapter on ``conversations`` with an assistant-only loss (SFT), into ``out_dir``.

    Args:
        lm: the base model; left unchanged (the LoRA layers are removed after saving).
        conversations: lists of messages ``[{"role", "content"}, ...]``, each with an assistant turn.
        out_dir: adapter directory, written atomically; an existing steerlab fine-tune made with the
            same config, data and base model is kept (``reused``), another one is replaced.
        config: the settings (:class:`FinetuneConfig`; default: its defaults); objective ``"sft"``
            (DPO needs pairs: :func:`run_finetune_pairs`).
        source: extra facts recorded in ``steerlab_finetune.json`` (e.g. the data file); not part of
            the config hash.

    Returns a :class:`FinetuneResult`. The per-step loss is in ``DIR/train_log.jsonl``.

    Raises:
        SteerlabError: objective ``"dpo"``; ``lm`` already carries an adapter; a setting out of
            range; no conversations or an invalid one; unknown target modules or layers; no assistant
            token within ``max_length``; ``out_dir`` is a file or a non-empty directory that is not a
            steerlab fine-tune; the loss diverged (not finite).
    """
    if config is not None and config.objective == "dpo":
        raise SteerlabError(
            "--objective dpo trains on pairs (a chosen and a rejected answer to the same question), "
            "not on conversations: call run_finetune_pairs(lm, pairs, out_dir, config)"
        )
    config, recorded = _settings(lm, config)
    if not conversations:
        raise SteerlabError("fine-tuning needs at least one conversation (the data is empty)")
    checked = [validate_conversation(list(m), f"example {i}") for i, m in enumerate(conversations)]
    built = [build_example(lm.tokenizer, m, config.max_length) for m in checked]
    train = [e for e in built if e.n_trained > 0]
    if not train:
        raise SteerlabError(f"no assistant tokens left to train on within --max-length {config.max_length} tokens")
    if len(train) < len(built):
        log.warning(
            "%d of %d conversations have no assistant tokens within %d tokens; skipped",
            len(built) - len(train),
            len(built),
            config.max_length,
        )
    n_tokens = sum(e.n_trained for e in train)
    data = {"n_examples": len(train), "n_skipped": len(built) - len(train), "n_assistant_tokens": n_tokens}
    return finetune_stage(
        lm,
        Path(out_dir),
        config,
        recorded,
        data | {"sha256": json_sha256(checked)},
        lambda: SftObjective(train, _pad_id(lm), lm.device),
        f"fine-tuning {lm.name}: LoRA r={config.rank} on {len(train)} conversations ({n_tokens} assistant "
        f"tokens), {config.epochs} epochs",
        source,
    )


def run_finetune_pairs(
    lm: LoadedModel,
    pairs: Sequence[Pair | Mapping[str, Any]],
    out_dir: str | Path,
    config: FinetuneConfig | None = None,
    *,
    use: Literal["positive", "negative"] = "positive",
    source: dict[str, Any] | None = None,
) -> FinetuneResult:
    """Train (or keep) a LoRA adapter on contrastive pairs, into ``out_dir``, with ``config.objective``:

    - ``"sft"``: the assistant-only loss on the ``use`` answer of each pair -- exactly
      :func:`run_finetune` on ``pairs_to_chat(pairs, use)`` (same adapter, same config hash);
    - ``"dpo"``: Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290, eq. 7) with
      the ``use`` answer chosen and the other rejected, both after the pair's system prompt (if any)
      and question through the chat template; sequence log-likelihoods are summed over each
      answer's assistant tokens; the reference is the base model ``lm`` (its log-likelihoods
      computed once before training, :mod:`steerlab.finetune.preference`); ``config.beta`` scales
      the implicit reward. The loss of a step is the mean over its pairs.

    Args:
        lm: the base model; left unchanged (the LoRA layers are removed after saving).
        pairs: :class:`steerlab.formats.pairs.Pair` objects (``load_pairs``) or mappings with
            ``question``, ``positive``, ``negative`` and optionally ``system``.
        out_dir, config, source: as for :func:`run_finetune`.
        use: which answer is trained towards (the chosen one for DPO).

    Returns a :class:`FinetuneResult`; for DPO ``result.epochs[-1]["reward_margin"]`` is the last
    epoch's mean reward margin (nats, times beta).

    Raises:
        SteerlabError: no pairs, an invalid pair (naming it and the field), ``use`` not positive or
            negative, no pair with tokens of both answers within ``max_length``, and everything
            :func:`run_finetune` raises.
    """
    if use not in ("positive", "negative"):
        raise SteerlabError(f"--use {use!r}: expected positive or negative")
    if not pairs:
        raise SteerlabError("fine-tuning needs at least one pair (the data is empty)")
    checked_pairs = [_as_pair(p, i) for i, p in enumerate(pairs)]
    chosen_chats = pairs_to_chat(checked_pairs, use)
    if config is None or config.objective == "sft":
        return run_finetune(lm, chosen_chats, out_dir, config, source=source)
    config, recorded = _settings(lm, config)
    rejected_chats = pairs_to_chat(checked_pairs, "negative" if use == "positive" else "positive")
    built = [
        build_preference_example(lm.tokenizer, c, r, config.max_length)
        for c, r in zip(chosen_chats, rejected_chats, strict=True)
    ]
    train = [e for e in built if e.trainable]
    if not train:
        raise SteerlabError(
            f"no pair keeps tokens of both answers within --max-length {config.max_length} tokens; raise it"
        )
    if len(train) < len(built):
        log.warning(
            "%d of %d pairs lose all tokens of an answer within %d tokens; skipped",
            len(built) - len(train),
            len(built),
            config.max_length,
        )
    n_tokens = sum(e.chosen.n_trained + e.rejected.n_trained for e in train)
    data = {"n_examples": len(train), "n_skipped": len(built) - len(train), "n_answer_tokens": n_tokens}
    data["sha256"] = json_sha256(
        [{"chosen": c, "rejected": r} for c, r in zip(chosen_chats, rejected_chats, strict=True)]
    )

    def objective() -> DpoObjective:
        reference = reference_logprobs(lm, train, config.batch_size)
        return DpoObjective(train, reference, config.beta, _pad_id(lm), lm.device)

    return finetune_stage(
        lm,
        Path(out_dir),
        config,
        recorded,
        data,
        objective,
        f"DPO-fine-tuning {lm.name} (beta {config.beta:g}, reference: the base model): LoRA r={config.rank} "
        f"on {len(train)} pairs ({n_tokens} answer tokens), {config.epochs} epochs",
        source,
    )


def _as_pair(pair: Pair | Mapping[str, Any], index: int) -> Pair:
    if isinstance(pair, Pair):
        return pair
    if not isinstance(pair, Mapping):
        raise SteerlabError(f"pair {index}: expected a Pair or a mapping, got {type(pair).__name__}")
    try:
        return Pair.model_validate(dict(pair))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SteerlabError(f"pair {index}: field {'.'.join(map(str, err['loc']))!r}: {err['msg']}") from None


def _pad_id(lm: LoadedModel) -> int:
    return lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
