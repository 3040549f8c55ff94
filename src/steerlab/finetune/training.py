"""LoRA fine-tuning with an assistant-only loss (the "fine-tuned model" side of model diffing).

:func:`run_finetune` trains a PEFT LoRA adapter on chat conversations (:mod:`steerlab.formats.conversations`)
and writes it to a directory, atomically (a temp directory renamed at the end, so a killed run leaves
no half adapter)::

    DIR/adapter_config.json, DIR/adapter_model.safetensors   (peft save_pretrained)
    DIR/steerlab_finetune.json   full config, steerlab version, base model and its fingerprint,
                                 data hash, train time, final loss
    DIR/train_log.jsonl          one line per optimizer step: step, epoch, loss, tokens, lr, time
    DIR/stage.meta.json          the stage's completion marker (:mod:`steerlab.io.runs`)

The directory is a :class:`steerlab.io.runs.Stage` artifact whose config is the fine-tune's settings,
the hash of the data and the base model's fingerprint: a rerun with the same three is skipped (the
recorded result is returned), any change retrains and replaces it. A run killed while training
leaves the previous directory (if any) as it was and no temp directory (SIGTERM included).

The loss (:func:`batch_loss`) is the next-token cross-entropy over the assistant tokens
(:mod:`steerlab.finetune.examples`). The base model passed in is left as it was: the LoRA layers are
removed again after saving. Use the adapter with ``load_model("BASE+DIR")`` or
:func:`steerlab.extract.model_diff.extract_model_diff`.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SteerlabError
from ..formats.conversations import validate_conversation
from ..io.atomic import atomic_dir, write_json
from ..io.runs import Codec, RunDir, Stage, json_sha256
from ..model.blocks import unwrap_model
from ..model.chat import Message
from ..model.loading import LoadedModel
from ..progress import progress_bar
from ..signals import sigterm_as_interrupt
from ..version import __version__
from .collate import TrainBatch, collate_train
from .config import FinetuneConfig
from .examples import IGNORE, TrainExample, build_example
from .fingerprint import INFO_FILE, model_fingerprint, read_finetune_info
from .targets import lora_config, resolve_layers, resolve_target_modules

log = logging.getLogger("steerlab")

LOG_FILE = "train_log.jsonl"
FORMAT = "steerlab.finetune/1"
STAGE = "finetune"


@dataclass
class FinetuneResult:
    """What :func:`run_finetune` produced. ``adapter_dir`` holds the adapter and its records;
    ``config`` is the recorded config (targets and layers resolved); ``final_loss`` the last epoch's
    mean loss per assistant token (nats); ``losses`` the loss of each optimizer step; ``reused`` is
    True when an earlier run's adapter was kept; ``config_hash`` identifies the adapter's config,
    data and base model (the stage hash, :func:`steerlab.io.runs.config_hash`), for later stages."""

    adapter_dir: Path
    config: dict[str, Any]
    final_loss: float
    losses: list[float] = field(default_factory=list)
    train_time_s: float = 0.0
    n_examples: int = 0
    n_steps: int = 0
    reused: bool = False
    config_hash: str = ""

    @property
    def info_path(self) -> Path:
        """``steerlab_finetune.json`` in the adapter directory."""
        return self.adapter_dir / INFO_FILE

    @property
    def log_path(self) -> Path:
        """``train_log.jsonl`` in the adapter directory."""
        return self.adapter_dir / LOG_FILE


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(unwrap_model(model).forward).parameters
    except (TypeError, ValueError):
        return False


def batch_loss(model: nn.Module, batch: TrainBatch) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy (nats) over the labelled tokens of ``batch``, and their count.

    Logits are computed only at the positions that predict a labelled token where the model
    supports ``logits_to_keep`` (the vocabulary projection dominates small models' cost).
    """
    targets = batch.labels[:, 1:]
    cols = (targets != IGNORE).any(0).nonzero().squeeze(-1)
    n_tokens = int((targets != IGNORE).sum())
    kwargs: dict[str, Any] = dict(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    )
    if _accepts_logits_to_keep(model):
        logits = model(**kwargs, logits_to_keep=cols).logits
    else:
        logits = model(**kwargs).logits[:, :-1][:, cols]
    targets = targets[:, cols].to(logits.device)
    loss = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    return loss, n_tokens


def _batches(examples: list[TrainExample], batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """Shuffled batches; within windows of 8 batches, examples are grouped by length (less padding)."""
    perm = torch.randperm(len(examples), generator=gen).tolist()
    window = batch_size * 8
    batches = []
    for start in range(0, len(perm), window):
        chunk = sorted(perm[start : start + window], key=lambda i: len(examples[i].input_ids))
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in order]


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise SteerlabError(f"--out {out_dir}: exists and is not a directory")
        if any(out_dir.iterdir()) and not (out_dir / INFO_FILE).is_file():
            raise SteerlabError(
                f"--out {out_dir}: exists and is not a steerlab fine-tune directory; refusing to "
                "overwrite it (choose another --out or remove it)"
            )


def _recorded_result(out_dir: Path, config_hash: str) -> FinetuneResult:
    info = read_finetune_info(out_dir)
    assert info is not None  # a finished stage's directory is not empty, so _check_out_dir found INFO_FILE
    return FinetuneResult(
        out_dir,
        info["config"],
        info["final_loss"],
        info.get("losses", []),
        info.get("train_time_s", 0.0),
        info["data"]["n_examples"],
        info["n_steps"],
        reused=True,
        config_hash=config_hash,
    )


def run_finetune(
    lm: LoadedModel,
    conversations: Sequence[Sequence[Message]],
    out_dir: str | Path,
    config: FinetuneConfig | None = None,
    *,
    source: dict[str, Any] | None = None,
) -> FinetuneResult:
    """Train (or keep) a LoRA adapter on ``conversations`` with an assistant-only loss, into ``out_dir``.

    Args:
        lm: the base model; left unchanged (the LoRA layers are removed after saving).
        conversations: lists of messages ``[{"role", "content"}, ...]``, each with an assistant turn.
        out_dir: adapter directory, written atomically; an existing steerlab fine-tune made with the
            same config, data and base model is kept (``reused``), another one is replaced.
        config: the settings (:class:`FinetuneConfig`; default: its defaults).
        source: extra facts recorded in ``steerlab_finetune.json`` (e.g. the data file); not part of
            the config hash.

    Returns a :class:`FinetuneResult`. The per-step loss is in ``DIR/train_log.jsonl``.

    Raises:
        SteerlabError: ``lm`` already carries an adapter; a setting out of range; no conversations or
            an invalid one; unknown target modules or layers; no assistant token within
            ``max_length``; ``out_dir`` is a file or a non-empty directory that is not a steerlab
            fine-tune; the loss diverged (not finite).
    """
    from peft import PeftModel

    config = config or FinetuneConfig()
    config.validate()
    out_dir = Path(out_dir)
    if isinstance(lm.model, PeftModel):
        raise SteerlabError(
            f"{lm.name} already carries an adapter ({lm.adapter}); fine-tune a plain base model "
            "(merge the adapter into a saved model first if you want to stack)"
        )
    if not conversations:
        raise SteerlabError("fine-tuning needs at least one conversation (the data is empty)")
    checked = [validate_conversation(list(m), f"example {i}") for i, m in enumerate(conversations)]
    targets = resolve_target_modules(lm, config.target_modules)
    layers = resolve_layers(lm, config.layers)
    recorded = {
        **asdict(config),
        "target_modules": targets,
        "layers": layers,
        "optimizer": "AdamW",
        "schedule": "constant",
        "loss": "assistant_only",
    }
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
    _check_out_dir(out_dir)
    fingerprint = model_fingerprint(lm)
    data_hash = json_sha256(checked)

    def train_adapter(stage: Stage) -> FinetuneResult:
        n_label_tokens = sum(e.n_trained for e in train)
        log.info(
            "fine-tuning %s: LoRA r=%d on %d conversations (%d assistant tokens), %d epochs",
            lm.name,
            config.rank,
            len(train),
            n_label_tokens,
            config.epochs,
        )
        with sigterm_as_interrupt(), atomic_dir(out_dir) as tmp:
            losses, final_loss, train_time = _train(lm, train, config, lora_config(lm, config, targets, layers), tmp)
            write_json(
                tmp / INFO_FILE,
                {
                    "format": FORMAT,
                    "steerlab_version": __version__,
                    "created": datetime.now(UTC).isoformat(timespec="seconds"),
                    "base_model": lm.name,
                    "base": fingerprint,
                    "device": str(lm.device),
                    "dtype": str(lm.dtype).removeprefix("torch."),
                    "config": recorded,
                    "data": {
                        "n_examples": len(train),
                        "n_skipped": len(built) - len(train),
                        "n_assistant_tokens": n_label_tokens,
                        "sha256": data_hash,
                    },
                    "source": source or {},
                    "n_steps": len(losses),
                    "train_time_s": round(train_time, 3),
                    "final_loss": final_loss,
                    "first_loss": losses[0],
                    "last_step_loss": losses[-1],
                    "losses": [round(x, 6) for x in losses],
                },
            )
        log.info("fine-tuned in %.1f s: loss %.4f -> %.4f; adapter in %s", train_time, losses[0], final_loss, out_dir)
        return FinetuneResult(
            out_dir, recorded, final_loss, losses, train_time, len(train), len(losses), config_hash=stage.hash
        )

    def kept(stage: Stage) -> FinetuneResult:
        log.info("keeping the fine-tune in %s (same config, data and base model)", out_dir)
        return _recorded_result(out_dir, stage.hash)

    return (
        RunDir(out_dir.parent)
        .cached(
            STAGE,
            out_dir.name,
            {"config": recorded, "data": data_hash, "base": fingerprint},
            train_adapter,
            codec=Codec(
                kept, lambda stage, r: stage.mark_done(final_loss=r.final_loss, train_time_s=round(r.train_time_s, 3))
            ),
            directory=True,
        )
        .value
    )


def _train(
    lm: LoadedModel, train: list[TrainExample], config: FinetuneConfig, lora: Any, out: Path
) -> tuple[list[float], float, float]:
    """The training loop: attach ``lora`` to ``lm``, run AdamW over shuffled batches for the epochs,
    log each step to ``out/train_log.jsonl``, save the adapter into ``out``, then detach it again and
    restore ``lm``'s ``requires_grad`` flags and train/eval mode (also on errors).

    Returns ``(per-step losses, last-epoch mean loss per token, seconds)``.
    """
    from peft import get_peft_model

    grad_flags = {name: p.requires_grad for name, p in lm.model.named_parameters()}
    was_training = lm.model.training
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    n_steps = config.epochs * math.ceil(len(train) / config.batch_size)
    fork = [lm.device] if lm.device.type == "cuda" else []
    losses: list[float] = []
    peft_model = None
    with torch.random.fork_rng(devices=fork):
        try:
            torch.manual_seed(config.seed)
            with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
                warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
                peft_model = get_peft_model(lm.model, lora)
            params = [p for p in peft_model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
            gen = torch.Generator().manual_seed(config.seed)
            peft_model.train()
            start = time.perf_counter()
            epoch_loss = (0.0, 0)
            with (
                (out / LOG_FILE).open("w", encoding="utf-8") as log_fh,
                progress_bar("fine-tuning", n_steps, loss="-") as advance,
            ):
                for epoch in range(config.epochs):
                    epoch_loss = (0.0, 0)
                    for idx in _batches(train, config.batch_size, gen):
                        batch = collate_train([train[i] for i in idx], pad_id, lm.device)
                        loss_sum, n_tok = batch_loss(peft_model, batch)
                        loss = loss_sum / n_tok
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        if config.max_grad_norm > 0:
                            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                        optimizer.step()
                        value = float(loss.detach())
                        if not math.isfinite(value):
                            raise SteerlabError(
                                f"fine-tuning diverged at step {len(losses) + 1} (loss {value}); lower --lr"
                            )
                        losses.append(value)
                        epoch_loss = (epoch_loss[0] + value * n_tok, epoch_loss[1] + n_tok)
                        log_fh.write(
                            json.dumps(
                                {
                                    "step": len(losses),
                                    "epoch": epoch,
                                    "loss": round(value, 6),
                                    "tokens": n_tok,
                                    "examples": len(idx),
                                    "lr": config.lr,
                                    "elapsed_s": round(time.perf_counter() - start, 3),
                                }
                            )
                            + "\n"
                        )
                        log_fh.flush()
                        advance(1, loss=f"{value:.4f}")
            train_time = time.perf_counter() - start
            peft_model.eval()
            peft_model.save_pretrained(str(out))
        finally:
            if peft_model is not None:
                peft_model.unload()  # the base model gets its own modules back
            for name, p in lm.model.named_parameters():
                p.requires_grad_(grad_flags.get(name, p.requires_grad))
            lm.model.train(was_training)
    return losses, epoch_loss[0] / max(epoch_loss[1], 1), train_time
