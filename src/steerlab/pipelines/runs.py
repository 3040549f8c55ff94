"""Run directories and stages for the pipelines: defined in :mod:`steerlab.io.runs` (level 1, so
that lower levels such as :mod:`steerlab.finetune` resume through the same mechanism)."""

from __future__ import annotations

from ..io.runs import RunDir, Stage, config_hash, read_jsonl_rows

__all__ = ["RunDir", "Stage", "config_hash", "read_jsonl_rows"]
