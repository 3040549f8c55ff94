"""The ``--condition*`` flags of ``generate`` and ``sweep`` (CAST gates), declared once.

``--condition FILE`` is a ``condition.json`` written by ``steerlab condition -o`` (its direction, layer,
threshold, comparator and observed range), or a condition vector file (``.safetensors``, ``.gguf``,
persona-vectors ``.pt``) with ``--condition-layer L`` and ``--condition-threshold T|auto``.
``--condition-threshold auto`` fits θ (and the comparator, unless ``--condition-comparator`` says) on
``--condition-positive FILE`` and ``--condition-negative FILE``; a number given with those files is
checked against the similarities observed on them (so is a number overriding a ``condition.json``'s).
Flag combinations and files are checked before any model loads (:meth:`ConditionFlags.check`); the
condition is built on the engine (:meth:`ConditionFlags.build`) before any generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from ..errors import SteerlabError
from ..formats.condition_examples import load_condition_examples
from ..progress import console
from ..steering.condition_threshold import calibrate_condition, load_condition
from ..steering.conditions import Condition, check_threshold, parse_comparator
from ..vectors.vector import SteeringVector

ConditionOpt = typer.Option(
    None,
    "--condition",
    help="CAST gate: steer only the prompts that pass a condition. A condition.json (steerlab condition -o) or a "
    "condition vector file with --condition-layer and --condition-threshold.",
)
ConditionLayerOpt = typer.Option(
    None, "--condition-layer", help="Condition layer L (output of block L) of a condition vector file."
)
ConditionThresholdOpt = typer.Option(
    None,
    "--condition-threshold",
    help="θ: a cosine in [-1, 1], or auto (fitted on --condition-positive/--condition-negative for the best "
    "accuracy). Overrides a condition.json's.",
)
ConditionComparatorOpt = typer.Option(
    None,
    "--condition-comparator",
    help="> (steer prompts whose similarity is above θ; the default) or < (below). With auto: chosen with θ.",
)
ConditionPositiveOpt = typer.Option(
    None, "--condition-positive", help="Prompts that should pass the gate (.txt, .jsonl, .json), for auto."
)
ConditionNegativeOpt = typer.Option(
    None, "--condition-negative", help="Prompts that should not pass the gate (.txt, .jsonl, .json), for auto."
)


@dataclass
class ConditionFlags:
    """The values of the ``--condition*`` flags of one command."""

    path: Path | None = None
    layer: int | None = None
    threshold: str | None = None
    comparator: str | None = None
    positive: Path | None = None
    negative: Path | None = None

    def check(self, has_vector: bool) -> ConditionFlags | None:
        """Check the flags together before any model loads (None when no condition is asked for).

        Raises SteerlabError naming the flags for ``--condition-*`` without ``--condition``, a condition
        without a steering ``--vector``, a vector file without layer or threshold, ``auto`` without both
        example files, one example file without the other, a θ that is not a number in [-1, 1], or an
        unknown comparator; files are read here (missing or malformed files fail now).
        """
        others = {
            "--condition-layer": self.layer,
            "--condition-threshold": self.threshold,
            "--condition-comparator": self.comparator,
            "--condition-positive": self.positive,
            "--condition-negative": self.negative,
        }
        if self.path is None:
            given = [flag for flag, value in others.items() if value is not None]
            if given:
                raise SteerlabError(f"{'/'.join(given)}: for a --condition only")
            return None
        if not has_vector:
            raise SteerlabError("--condition gates steering: it needs --vector (and --layer)")
        if (self.positive is None) != (self.negative is None):
            raise SteerlabError("--condition-positive and --condition-negative go together")
        auto = self.threshold is not None and self.threshold.strip().lower() == "auto"
        if auto and self.positive is None:
            raise SteerlabError(
                "--condition-threshold auto fits θ on example prompts: give --condition-positive and --condition-negative"
            )
        if self.threshold is not None and not auto:
            check_threshold(self.threshold)
        if self.comparator is not None:
            self.comparator = parse_comparator(self.comparator)
        if self.path.suffix != ".json":
            missing = [
                flag
                for flag, value in (("--condition-layer", self.layer), ("--condition-threshold", self.threshold))
                if value is None
            ]
            if missing:
                raise SteerlabError(f"--condition {self.path} (a condition vector) needs {' and '.join(missing)}")
        self._source: Condition | SteeringVector = (
            load_condition(self.path) if self.path.suffix == ".json" else SteeringVector.load(self.path)
        )
        self._examples = load_condition_examples(self.positive, self.negative) if self.positive else None
        return self

    def build(self, model: Any, system: str | None = None, batch_size: int = 16) -> tuple[Condition, dict[str, Any]]:
        """The :class:`Condition` on ``model`` (an engine) and what to record of it (file, layer, θ,
        comparator, reduction and, when examples were given, the accuracy and ranges on them); a line
        on stderr says what was chosen. Raises SteerlabError for a layer out of range (or other than a
        condition.json's), a width mismatch, or a θ outside the similarities observed on the examples."""
        source = self._source
        if isinstance(source, Condition):
            if self.layer is not None and source.layer % model.n_layers != self.layer % model.n_layers:
                raise SteerlabError(
                    f"--condition-layer {self.layer}: {self.path} holds the condition direction of layer "
                    f"{source.layer} only"
                )
            vector, layer, reduction = source.vector, source.layer, source.reduction
        else:
            vector, layer, reduction = source, int(self.layer), "prompt_avg"  # type: ignore[arg-type]
        record: dict[str, Any] = {"condition_file": str(self.path)}
        if self._examples is not None:
            threshold = "auto" if self.threshold is None else self.threshold.strip().lower()
            comparator = self.comparator
            if comparator is None and isinstance(source, Condition) and threshold != "auto":
                comparator = source.comparator  # a given θ keeps the file's comparator
            calib = calibrate_condition(
                model, vector, layer, *self._examples, threshold=threshold, comparator=comparator,
                reduction=reduction, system=system, batch_size=batch_size,
            )  # fmt: skip
            condition = calib.condition
            record.update(
                condition_accuracy=calib.fit.accuracy,
                condition_positive=calib.positive,
                condition_negative=calib.negative,
                condition_threshold_source="auto" if calib.auto else "given",
            )
            how = (
                f"{'fitted' if calib.auto else 'given'}; accuracy {calib.fit.accuracy:.0%} on "
                f"{calib.positive['n']} + {calib.negative['n']} examples, positives "
                f"{calib.positive['min']:.4f}..{calib.positive['max']:.4f}, negatives "
                f"{calib.negative['min']:.4f}..{calib.negative['max']:.4f}"
            )
        elif isinstance(source, Condition):
            condition = source
            if self.threshold is not None:
                condition = condition.with_threshold(float(self.threshold))  # checked against its observed range
            if self.comparator is not None:
                condition = Condition(
                    condition.vector, layer, condition.threshold, self.comparator, reduction, condition.observed
                )
            how = f"from {self.path}"
        else:
            condition = Condition(vector, layer, float(self.threshold), self.comparator or ">", reduction)  # type: ignore[arg-type]
            how = "given"
        condition.direction(model)  # layer, width, zero direction: before any generation
        record.update(
            condition_layer=condition.layer,
            condition_threshold=condition.threshold,
            condition_comparator=condition.comparator,
            condition_reduction=condition.reduction,
        )
        console.print(
            f"condition: layer {condition.layer}, steer prompts whose similarity {condition.comparator} "
            f"{condition.threshold:.4f} ({how})",
            highlight=False,
        )
        return condition, record
