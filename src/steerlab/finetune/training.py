"""LoRA fine-tuning with an assistant-only loss (the "fine-tuned model" side of model diffing).

:func:`finetune` trains a PEFT LoRA adapter on chat conversations (:mod:`steerlab.chat_data`) and
writes it to a directory, atomically (a temp directory renamed at the end, so a killed run leaves no
half adapter)::

    DIR/adapter_config.json, DIR/adapter_model.safetensors   (peft save_pretrained)
    DIR/steerlab_finetune.json   full config, steerlab version, base model and its fingerprint,
                                 data hash, train time, final loss
    DIR/train_log.jsonl          one line per optimizer step: step, epoch, loss, tokens, lr, time

The loss is computed on the **assistant tokens only**: every other label is -100. Assistant spans
come from chat-template deltas, as in :mod:`steerlab.chat`: for each assistant turn the conversation
up to it is rendered with the generation prompt (span start) and with the turn itself (span end); the
whole conversation is tokenized once and tokens starting inside a span are trained (the turn's
content and its end-of-turn markup, so the model learns to stop). Pieces are never tokenized
separately.

The base model passed in is left as it was: the LoRA layers are removed again after saving. Use the
adapter with ``load_model("BASE+DIR")`` or :func:`steerlab.model_diff.extract_model_diff`.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SteerlabError
from ..formats.conversations import validate_conversation
from ..io.atomic import write_json
from ..model.blocks import unwrap_model
from ..model.chat import Message, render_prompt
from ..model.loading import LoadedModel
from ..progress import progress_bar

log = logging.getLogger("steerlab")

IGNORE = -100
INFO_FILE = "steerlab_finetune.json"
LOG_FILE = "train_log.jsonl"
FORMAT = "steerlab.finetune/1"


# --- examples: token ids and assistant-only labels ------------------------------------------------
@dataclass(frozen=True)
class TrainExample:
    """Token ids of one rendered conversation and its labels (-100 outside assistant turns)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def n_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def assistant_char_spans(tokenizer: Any, messages: Sequence[Message]) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation once; return ``(text, [(start, end) of each assistant turn])``.

    Span bounds come from template deltas: ``start`` is the length of the conversation before the
    turn rendered with the generation prompt, ``end`` the length with the turn rendered.
    """
    messages = [dict(m) for m in messages]
    text = render_prompt(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or not m["content"] or not any(
            x["role"] == "user" for x in messages[:i]
        ):
            continue
        before = render_prompt(tokenizer, messages[:i], add_generation_prompt=True)
        through = render_prompt(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not through.startswith(before) or not text.startswith(through):
            raise SteerlabError(
                f"cannot locate assistant turn {i}: this chat template does not render the "
                "conversation prefix-stably (the prompt rendered with the generation prompt is not a "
                "prefix of the conversation with the reply); assistant-only training needs a template "
                "whose earlier turns render the same whatever follows"
            )
        if len(through) > len(before):
            spans.append((len(before), len(through)))
    return text, spans


def build_example(
    tokenizer: Any, messages: Sequence[Message], max_length: int | None = None
) -> TrainExample:
    """Token ids and assistant-only labels for one conversation (truncated on the right)."""
    text, spans = assistant_char_spans(tokenizer, messages)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        starts = [start for start, _ in enc["offset_mapping"]]
        trained = [any(a <= s < b for a, b in spans) for s in starts]
    else:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        trained = [False] * len(ids)
        for a, b in spans:
            lo, hi = _token_index(tokenizer, text, ids, a), _token_index(tokenizer, text, ids, b)
            trained[lo:hi] = [True] * (hi - lo)
    labels = [t if keep else IGNORE for t, keep in zip(ids, trained, strict=True)]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return TrainExample(ids, labels)


def _token_index(tokenizer: Any, text: str, ids: list[int], char_pos: int) -> int:
    prefix = list(tokenizer(text[:char_pos], add_special_tokens=False)["input_ids"])
    if ids[: len(prefix)] != prefix:
        raise SteerlabError(
            "cannot locate the assistant tokens with this (slow) tokenizer: a rendered prefix does "
            "not tokenize to a prefix of the conversation; use a fast tokenizer"
        )
    return len(prefix)


@dataclass
class TrainBatch:
    input_ids: torch.Tensor  # [b, T]
    attention_mask: torch.Tensor  # [b, T]
    position_ids: torch.Tensor  # [b, T]
    labels: torch.Tensor  # [b, T], -100 on padding and non-assistant tokens


def collate_train(
    examples: Sequence[TrainExample], pad_id: int, device: torch.device | str = "cpu",
    padding_side: str = "right",
) -> TrainBatch:
    """Pad examples into one batch (right padding by default; left padding with position ids)."""
    if padding_side not in ("left", "right"):
        raise SteerlabError(f"padding_side {padding_side!r}: expected left or right")
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        cols = slice(0, n) if padding_side == "right" else slice(width - n, width)
        ids[row, cols] = torch.tensor(e.input_ids)
        labels[row, cols] = torch.tensor(e.labels)
        mask[row, cols] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return TrainBatch(ids.to(device), mask.to(device), positions.to(device), labels.to(device))


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(unwrap_model(model).forward).parameters
    except (TypeError, ValueError):
        return False


def batch_loss(model: nn.Module, batch: TrainBatch) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled tokens, and their count.

    Logits are computed only at the positions that predict a labelled token where the model
    supports ``logits_to_keep`` (the vocabulary projection dominates small models' cost).
    """
    targets = batch.labels[:, 1:]
    cols = (targets != IGNORE).any(0).nonzero().squeeze(-1)
    n_tokens = int((targets != IGNORE).sum())
    kwargs: dict[str, Any] = dict(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask,
        position_ids=batch.position_ids, use_cache=False,
    )
    if _accepts_logits_to_keep(model):
        logits = model(**kwargs, logits_to_keep=cols).logits
    else:
        logits = model(**kwargs).logits[:, :-1][:, cols]
    targets = targets[:, cols].to(logits.device)
    loss = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
        ignore_index=IGNORE, reduction="sum",
    )
    return loss, n_tokens


# --- LoRA configuration ---------------------------------------------------------------------------
def default_target_modules(lm: LoadedModel) -> list[str]:
    """Names of the linear layers inside the decoder blocks (q/k/v/o and MLP projections for
    Llama-style models, c_attn/c_proj/c_fc for GPT-2, ...)."""
    names = set()
    for name, module in lm.blocks[0].named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            names.add(name.rsplit(".", 1)[-1])
    if not names:
        raise SteerlabError(
            f"{lm.name}: found no linear layers in decoder block 0; pass target_modules "
            "(--target-modules) naming the modules to adapt"
        )
    return sorted(names)


def _resolve_targets(lm: LoadedModel, target_modules: str | Sequence[str] | None) -> list[str] | str:
    if target_modules is None:
        return default_target_modules(lm)
    if isinstance(target_modules, str):
        if target_modules.strip() == "all-linear":
            return "all-linear"
        target_modules = [t.strip() for t in target_modules.split(",") if t.strip()]
    targets = list(target_modules)
    if not targets:
        raise SteerlabError("--target-modules: empty; give module names (q_proj,v_proj) or all-linear")
    present = {name.rsplit(".", 1)[-1] for name, _ in unwrap_model(lm.model).named_modules()}
    missing = [t for t in targets if t not in present]
    if missing:
        raise SteerlabError(
            f"--target-modules: {', '.join(missing)} not found in {lm.name}; linear layers in its "
            f"blocks are {', '.join(default_target_modules(lm))}"
        )
    return targets


def model_fingerprint(lm: LoadedModel) -> dict[str, Any]:
    """Shape facts and a few embedding values identifying a base model (dtype-tolerant)."""
    emb = unwrap_model(lm.model).get_input_embeddings().weight
    rows = torch.linspace(0, emb.shape[0] - 1, 8).long().to(emb.device)
    probe = emb[rows, :8].detach().float().cpu()
    config = unwrap_model(lm.model).config
    return {
        "model_type": getattr(config, "model_type", None),
        "n_layers": lm.n_layers,
        "d_model": lm.d_model,
        "vocab_size": len(lm.tokenizer) if lm.tokenizer is not None else emb.shape[0],
        "embedding_probe": [[round(float(x), 6) for x in row] for row in probe],
    }


def fingerprint_mismatch(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """Why two fingerprints differ (None when they match; embeddings compared at bf16 tolerance)."""
    for key in ("model_type", "n_layers", "d_model", "vocab_size"):
        if key in recorded and recorded[key] != current.get(key):
            return f"{key} {recorded[key]} vs {current.get(key)}"
    if "embedding_probe" in recorded:
        a = torch.tensor(recorded["embedding_probe"], dtype=torch.float64)
        b = torch.tensor(current["embedding_probe"], dtype=torch.float64)
        if a.shape != b.shape or not torch.allclose(a, b, rtol=2e-2, atol=2e-3):
            return "different weights (embedding values differ)"
    return None


# --- results and files ----------------------------------------------------------------------------
@dataclass
class FinetuneResult:
    """What :func:`finetune` produced. ``adapter_dir`` holds the adapter and its records."""

    adapter_dir: Path
    config: dict[str, Any]
    final_loss: float
    losses: list[float] = field(default_factory=list)
    train_time_s: float = 0.0
    n_examples: int = 0
    n_steps: int = 0
    reused: bool = False

    @property
    def info_path(self) -> Path:
        return self.adapter_dir / INFO_FILE

    @property
    def log_path(self) -> Path:
        return self.adapter_dir / LOG_FILE


def read_finetune_info(adapter_dir: str | Path) -> dict[str, Any] | None:
    """The ``steerlab_finetune.json`` record of an adapter directory (None if absent)."""
    path = Path(adapter_dir) / INFO_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise SteerlabError(f"{path}: not valid JSON") from None


def _steerlab_version() -> str:
    from ..version import __version__

    return __version__


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def _atomic_dir(target: Path) -> Iterator[Path]:
    """A temp directory beside ``target``, renamed over it on success, removed on any failure."""
    if target.exists():
        if not target.is_dir():
            raise SteerlabError(f"--out {target}: exists and is not a directory")
        if any(target.iterdir()) and not (target / INFO_FILE).is_file():
            raise SteerlabError(
                f"--out {target}: exists and is not a steerlab fine-tune directory; refusing to "
                "overwrite it (choose another --out or remove it)"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class _Terminated(KeyboardInterrupt):
    """SIGTERM during training, raised so the temp directory is cleaned up like on Ctrl-C."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into an exception while training (main thread only), so a killed run cleans
    up its temp directory; SIGKILL cannot be caught and leaves a hidden ``.NAME.*.tmp`` beside it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Terminated("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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


# --- training -------------------------------------------------------------------------------------
def finetune(
    lm: LoadedModel,
    examples: Sequence[Sequence[Message]],
    out_dir: str | Path,
    rank: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    target_modules: str | Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    epochs: int = 1,
    lr: float = 2e-4,
    batch_size: int = 8,
    seed: int = 0,
    max_length: int = 256,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    reuse: bool = False,
    source: dict[str, Any] | None = None,
) -> FinetuneResult:
    """Train a LoRA adapter on chat ``examples`` (lists of messages) with an assistant-only loss.

    Args:
        lm: the base model; left unchanged (the LoRA layers are removed after saving).
        examples: conversations ``[{"role", "content"}, ...]``, each with an assistant turn.
        out_dir: adapter directory, written atomically (an existing steerlab fine-tune is replaced).
        rank, alpha, dropout: LoRA r, lora_alpha, lora_dropout.
        target_modules: module names (list or comma-separated), ``"all-linear"``, or None for every
            linear layer inside the decoder blocks (q/k/v/o/gate/up/down for Llama-style models).
        layers: only adapt these decoder blocks (peft ``layers_to_transform``); None = all.
        epochs, lr, batch_size, seed: AdamW at a constant learning rate, shuffled batches; the seed
            fixes the LoRA init, the order and dropout (the caller's RNG state is left untouched).
        max_length: conversations longer than this many tokens are cut on the right.
        reuse: if ``out_dir`` already holds a fine-tune with the same config, data and base model,
            return it without training.
        source: extra facts recorded in ``steerlab_finetune.json`` (e.g. the data file).

    Returns a :class:`FinetuneResult`. The per-step loss is in ``DIR/train_log.jsonl``.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    out_dir = Path(out_dir)
    if isinstance(lm.model, PeftModel):
        raise SteerlabError(
            f"{lm.name} already carries an adapter ({lm.adapter}); fine-tune a plain base model "
            "(merge the adapter into a saved model first if you want to stack)"
        )
    for flag, value, ok in (
        ("--rank", rank, rank >= 1), ("--alpha", alpha, alpha > 0), ("--epochs", epochs, epochs >= 1),
        ("--lr", lr, lr > 0 and math.isfinite(lr)), ("--batch-size", batch_size, batch_size >= 1),
        ("--max-length", max_length, max_length >= 2), ("--dropout", dropout, 0 <= dropout < 1),
    ):
        if not ok:
            raise SteerlabError(f"{flag} {value}: out of range")
    if not examples:
        raise SteerlabError("fine-tuning needs at least one conversation (the data is empty)")
    conversations = [validate_conversation(list(m), f"example {i}") for i, m in enumerate(examples)]
    targets = _resolve_targets(lm, target_modules)
    layer_list = sorted({lm.check_layer(L, "--layers") for L in layers}) if layers is not None else None

    config = {
        "rank": rank, "alpha": alpha, "dropout": dropout, "target_modules": targets,
        "layers": layer_list, "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
        "max_length": max_length, "weight_decay": weight_decay, "max_grad_norm": max_grad_norm,
        "optimizer": "AdamW", "schedule": "constant", "loss": "assistant_only",
    }
    fingerprint = model_fingerprint(lm)
    data_hash = _hash(conversations)
    run_hash = _hash({"config": config, "data": data_hash, "base": fingerprint})
    if reuse:
        previous = read_finetune_info(out_dir)
        if previous and previous.get("run_hash") == run_hash:
            log.info("reusing the fine-tune in %s (same config, data and base model)", out_dir)
            return FinetuneResult(out_dir, previous["config"], previous["final_loss"],
                                  previous.get("losses", []), previous.get("train_time_s", 0.0),
                                  previous["data"]["n_examples"], previous["n_steps"], reused=True)

    built = [build_example(lm.tokenizer, m, max_length) for m in conversations]
    train = [e for e in built if e.n_trained > 0]
    if not train:
        raise SteerlabError(
            f"no assistant tokens left to train on within --max-length {max_length} tokens"
        )
    if len(train) < len(built):
        log.warning("%d of %d conversations have no assistant tokens within %d tokens; skipped",
                    len(built) - len(train), len(built), max_length)
    n_steps = epochs * math.ceil(len(train) / batch_size)
    n_label_tokens = sum(e.n_trained for e in train)
    log.info("fine-tuning %s: LoRA r=%d on %d conversations (%d assistant tokens), %d epochs, "
             "%d steps", lm.name, rank, len(train), n_label_tokens, epochs, n_steps)

    lora = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
        task_type="CAUSAL_LM", layers_to_transform=layer_list,
        layers_pattern=lm.blocks_path.rsplit(".", 1)[-1] if layer_list is not None else None,
        fan_in_fan_out=any(type(m).__name__ == "Conv1D" for m in lm.blocks[0].modules()),
    )
    grad_flags = {name: p.requires_grad for name, p in lm.model.named_parameters()}
    was_training = lm.model.training
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    fork = [lm.device] if lm.device.type == "cuda" else []
    losses: list[float] = []
    peft_model = None
    with _sigterm_as_interrupt(), torch.random.fork_rng(devices=fork), _atomic_dir(out_dir) as tmp:
        try:
            torch.manual_seed(seed)
            with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
                warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
                peft_model = get_peft_model(lm.model, lora)
            params = [p for p in peft_model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
            gen = torch.Generator().manual_seed(seed)
            peft_model.train()
            start = time.perf_counter()
            step = 0
            epoch_loss = (0.0, 0)
            with (
                (tmp / LOG_FILE).open("w", encoding="utf-8") as log_fh,
                progress_bar("fine-tuning", n_steps, loss="-") as advance,
            ):
                for epoch in range(epochs):
                    epoch_loss = (0.0, 0)
                    for idx in _batches(train, batch_size, gen):
                        batch = collate_train([train[i] for i in idx], pad_id, lm.device)
                        loss_sum, n_tok = batch_loss(peft_model, batch)
                        loss = loss_sum / n_tok
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        if max_grad_norm and max_grad_norm > 0:
                            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                        optimizer.step()
                        step += 1
                        value = float(loss.detach())
                        if not math.isfinite(value):
                            raise SteerlabError(
                                f"fine-tuning diverged at step {step} (loss {value}); lower --lr"
                            )
                        losses.append(value)
                        epoch_loss = (epoch_loss[0] + value * n_tok, epoch_loss[1] + n_tok)
                        log_fh.write(json.dumps({
                            "step": step, "epoch": epoch, "loss": round(value, 6), "tokens": n_tok,
                            "examples": len(idx), "lr": lr,
                            "elapsed_s": round(time.perf_counter() - start, 3),
                        }) + "\n")
                        log_fh.flush()
                        advance(1, loss=f"{value:.4f}")
            train_time = time.perf_counter() - start
            final_loss = epoch_loss[0] / max(epoch_loss[1], 1)
            peft_model.eval()
            peft_model.save_pretrained(str(tmp))
            info = {
                "format": FORMAT,
                "steerlab_version": _steerlab_version(),
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "base_model": lm.name,
                "base": fingerprint,
                "device": str(lm.device),
                "dtype": str(lm.dtype).removeprefix("torch."),
                "config": config,
                "data": {"n_examples": len(train), "n_skipped": len(built) - len(train),
                         "n_assistant_tokens": n_label_tokens, "sha256": data_hash},
                "source": source or {},
                "run_hash": run_hash,
                "n_steps": step,
                "train_time_s": round(train_time, 3),
                "final_loss": final_loss,
                "first_loss": losses[0],
                "last_step_loss": losses[-1],
                "losses": [round(x, 6) for x in losses],
            }
            write_json(tmp / INFO_FILE, info)
        finally:
            if peft_model is not None:
                peft_model.unload()  # the base model gets its own modules back
            for name, p in lm.model.named_parameters():
                p.requires_grad_(grad_flags.get(name, p.requires_grad))
            lm.model.train(was_training)
    log.info("fine-tuned in %.1f s: loss %.4f -> %.4f; adapter in %s",
             train_time, losses[0], final_loss, out_dir)
    return FinetuneResult(out_dir, config, final_loss, losses, train_time, len(train), step)


__all__ = [
    "FinetuneResult",
    "TrainExample",
    "assistant_char_spans",
    "batch_loss",
    "build_example",
    "collate_train",
    "default_target_modules",
    "finetune",
    "model_fingerprint",
    "read_finetune_info",
]
