"""Several traits' answers as rows of shared generation batches, saved into each trait's own stage.

A multi-trait pipeline generates the same kind of answers (persona answers, eval answers, steered answers)
for every trait; generating them as one stream fills batches that one trait alone would leave short, and
``generate_batch`` sorts the whole stream by length. Each trait keeps its own resumable stage
(:mod:`steerlab.io.runs`): what is generated here is saved through it, so a rerun skips it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .runs import RunDir, Stage

Work = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


def shared_generation(
    run: RunDir, name: str, targets: dict[str, tuple[Stage, list[dict[str, Any]]]], work: Work, chunk: int
) -> None:
    """Generate the items of every target stage that is not done as rows of shared batches, then save
    each target stage's rows (in its item order).

    ``targets``: trait -> (stage, items with unique ``key``); ``work(items) -> rows`` (one per item) is called
    on chunks mixing traits. Progress is checkpointed in ``DIR/.partial/<name>.jsonl`` (config: every target's
    hash), so a killed run resumes without redoing finished items.
    """
    todo = [(t, stage, items) for t, (stage, items) in targets.items() if not stage.done()]
    if not todo:
        return
    for _, stage, _ in todo:
        stage.invalidate()  # about to write new rows through it
    shared = run.stage(name, f".partial/{name}.done", {t: stage.hash for t, (stage, _) in targets.items()})
    keyed = [{"key": f"{t}/{it['key']}", "trait": t, "item": it} for t, _, items in todo for it in items]

    def shared_work(chunk_items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows = work([c["item"] for c in chunk_items])
        return [{"key": c["key"], "trait": c["trait"], "row": r} for c, r in zip(chunk_items, rows, strict=True)]

    done = shared.run_items(keyed, shared_work, chunk)
    for t, stage, _ in todo:
        stage.save_rows([d["row"] for d in done if d["trait"] == t])
    shared.partial_path.unlink(missing_ok=True)
