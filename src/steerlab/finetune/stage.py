"""The fine-tune as a run stage: keep a finished identical adapter, else train and write its records.

:func:`finetune_stage` wraps :func:`steerlab.finetune.loop.train_adapter` for both objectives: the
adapter directory is a run stage (:meth:`steerlab.io.runs.RunDir.cached`) whose config is the recorded
settings, the data hash and the base model's fingerprint; it is written atomically, with
``steerlab_finetune.json`` (see :mod:`steerlab.finetune.training`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import SteerlabError
from ..io.atomic import atomic_dir, write_json
from ..io.runs import Codec, RunDir, Stage
from ..model.loading import LoadedModel
from ..signals import sigterm_as_interrupt
from ..version import __version__
from .config import FinetuneConfig
from .fingerprint import INFO_FILE, model_fingerprint, read_finetune_info
from .loop import LOG_FILE, Objective, train_adapter
from .targets import lora_config

log = logging.getLogger("steerlab")

FORMAT = "steerlab.finetune/1"
STAGE = "finetune"


@dataclass
class FinetuneResult:
    """What :func:`run_finetune` / :func:`run_finetune_pairs` produced. ``adapter_dir`` holds the
    adapter and its records; ``config`` is the recorded config (objective, targets and layers
    resolved); ``final_loss`` the last epoch's mean loss (SFT: per assistant token, nats; DPO: per
    pair); ``losses`` the loss of each optimizer step; ``epochs`` one record per epoch (``epoch``,
    ``loss``; DPO adds ``reward_margin``, ``reward_accuracy``, ``chosen_reward``,
    ``rejected_reward``, means over the epoch's pairs); ``n_examples`` counts conversations (SFT) or
    pairs (DPO); ``reused`` is True when an earlier run's adapter was kept; ``config_hash`` identifies
    the adapter's config, data and base model (the stage hash, :func:`steerlab.io.runs.config_hash`),
    for later stages."""

    adapter_dir: Path
    config: dict[str, Any]
    final_loss: float
    losses: list[float] = field(default_factory=list)
    train_time_s: float = 0.0
    n_examples: int = 0
    n_steps: int = 0
    reused: bool = False
    config_hash: str = ""
    epochs: list[dict[str, float]] = field(default_factory=list)

    @property
    def info_path(self) -> Path:
        """``steerlab_finetune.json`` in the adapter directory."""
        return self.adapter_dir / INFO_FILE

    @property
    def log_path(self) -> Path:
        """``train_log.jsonl`` in the adapter directory."""
        return self.adapter_dir / LOG_FILE


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
        epochs=info.get("epochs", []),
    )


def finetune_stage(
    lm: LoadedModel,
    out_dir: Path,
    config: FinetuneConfig,
    recorded: dict[str, Any],
    data: dict[str, Any],
    make_objective: Callable[[], Objective],
    announce: str,
    source: dict[str, Any] | None,
) -> FinetuneResult:
    """Keep the finished fine-tune in ``out_dir`` made with the same ``recorded`` config, ``data``
    (its ``sha256``) and base model; else build the objective with ``make_objective`` (so DPO's
    reference pass runs only when training; its seconds are recorded as ``prepare_time_s``, apart
    from ``train_time_s``), log ``announce``, train into a temp directory, write
    ``steerlab_finetune.json`` and rename it to ``out_dir``.

    Raises:
        SteerlabError: ``out_dir`` is a file or a non-empty directory that is not a steerlab
            fine-tune; the loss diverged.
    """
    _check_out_dir(out_dir)
    fingerprint = model_fingerprint(lm)

    def train(stage: Stage) -> FinetuneResult:
        log.info("%s", announce)
        with sigterm_as_interrupt(), atomic_dir(out_dir) as tmp:
            started = time.perf_counter()
            objective = make_objective()
            prepare_time = time.perf_counter() - started
            lora = lora_config(lm, config, recorded["target_modules"], recorded["layers"])
            stats = train_adapter(lm, objective, config, lora, tmp)
            losses, final = stats.losses, stats.epochs[-1]
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
                    "data": data,
                    "source": source or {},
                    "n_steps": len(losses),
                    "train_time_s": round(stats.train_time_s, 3),
                    "prepare_time_s": round(prepare_time, 3),
                    "final_loss": final["loss"],
                    "first_loss": losses[0],
                    "last_step_loss": losses[-1],
                    "losses": [round(x, 6) for x in losses],
                    "epochs": [
                        {k: round(v, 6) if isinstance(v, float) else v for k, v in e.items()} for e in stats.epochs
                    ],
                },
            )
        margin = f", reward margin {final['reward_margin']:.4f}" if "reward_margin" in final else ""
        log.info(
            "fine-tuned in %.1f s: loss %.4f -> %.4f%s; adapter in %s",
            stats.train_time_s,
            losses[0],
            final["loss"],
            margin,
            out_dir,
        )
        return FinetuneResult(
            out_dir,
            recorded,
            final["loss"],
            losses,
            stats.train_time_s,
            data["n_examples"],
            len(losses),
            config_hash=stage.hash,
            epochs=stats.epochs,
        )

    def kept(stage: Stage) -> FinetuneResult:
        log.info("keeping the fine-tune in %s (same config, data and base model)", out_dir)
        return _recorded_result(out_dir, stage.hash)

    def mark(stage: Stage, result: FinetuneResult) -> None:
        stage.mark_done(final_loss=result.final_loss, train_time_s=round(result.train_time_s, 3))

    return (
        RunDir(out_dir.parent)
        .cached(
            STAGE,
            out_dir.name,
            {"config": recorded, "data": data["sha256"], "base": fingerprint},
            train,
            codec=Codec(kept, mark),
            directory=True,
        )
        .value
    )
