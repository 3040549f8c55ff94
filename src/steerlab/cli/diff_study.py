"""`steerlab diff study`: fine-tune (or take an adapter), extract both vectors, compare, steer."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..engines.factory import make_engine
from ..errors import SteerlabError
from ..formats.pairs import load_pairs
from ..model.layers import parse_layers
from ..model.loading import load_model
from ..pipelines.diff_study import DiffStudyConfig, run_diff_study
from ..pipelines.records import DirectionsDoc
from ..pipelines.study import StudyConfig, StudyResult, best_coherent
from ..progress import results
from .diff import diff_app
from .options import (
    DeviceOpt,
    DtypeOpt,
    EngineOpt,
    GpuMemoryOpt,
    MaxModelLenOpt,
    PipelineParallelOpt,
    TensorParallelOpt,
    coeff_option,
    engine_config,
    layer_option,
    parse_floats,
    seed_option,
    steering_positions_option,
)

_D, _S = DiffStudyConfig(), StudyConfig()  # the defaults, written once on the dataclasses


@diff_app.command("study")
def study_cmd(
    base: str = typer.Option(
        ..., "--base", "--model", "-m", help="Base model spec (smollm2, HF id, directory, .gguf)."
    ),
    pairs: Path = typer.Option(
        ..., "--pairs", "-p", help="Pairs JSONL with a 'split' field (train / heldout), positive = behaviour."
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Run directory (resumable): adapter/, vectors/, directions.json, positions.json, study.json, "
        "study_margins.csv, samples.jsonl.",
    ),
    finetuned: Path = typer.Option(
        None, "--finetuned", "-f", help="An existing adapter directory for --base (skips fine-tuning)."
    ),
    train_split: str = typer.Option("train", "--train-split"),
    heldout_split: str = typer.Option("heldout", "--heldout-split"),
    max_train: int = typer.Option(None, "--max-train", min=1, help="Use only the first N training pairs."),
    max_heldout: int = typer.Option(None, "--max-heldout", min=1, help="Use only the first N held-out pairs."),
    layers: str = layer_option(
        None, plural=True, help="Candidate single layers, e.g. 6,9,12,15,18 (default: 5 spread over the middle)."
    ),
    coeffs: str = coeff_option(
        ",".join(f"{c:g}" for c in _S.coeffs),
        plural=True,
        help="Coefficient magnitudes (subtracted from the fine-tuned, added to the base).",
    ),
    epochs: int = typer.Option(_D.epochs, "--epochs", "-e", min=1),
    lr: float = typer.Option(_D.lr, "--lr"),
    rank: int = typer.Option(_D.rank, "--rank", min=1),
    batch_size: int = typer.Option(_D.batch_size, "--batch-size", "-b", min=1),
    controls: int = typer.Option(
        _S.controls,
        "--controls",
        min=0,
        help="Random directions of each vector's norm run through every steering condition (the null band "
        "and one-sided p; 0: off). p cannot go below 1/(K+1): 19 or more for a test at 0.05.",
    ),
    positions: int = typer.Option(
        _D.positions,
        "--positions",
        min=0,
        help="Position-resolved model diff at tokens 0..N-1 of built-in generic prompts (0: off).",
    ),
    steering_positions: str = steering_positions_option(),
    behaviour_prompt: str = typer.Option(
        None,
        "--behaviour-prompt",
        help="Prompting baseline: a system prompt asking for the behaviour (scored on the base model).",
    ),
    opposite_prompt: str = typer.Option(
        None,
        "--opposite-prompt",
        help="Prompting baseline: a system prompt asking for its opposite (scored on the fine-tuned model).",
    ),
    seed: int = seed_option("Random seed of the fine-tune, the random directions and the bootstrap."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    engine: str = EngineOpt,
    tensor_parallel_size: int = TensorParallelOpt,
    pipeline_parallel_size: int = PipelineParallelOpt,
    gpu_memory_utilization: float = GpuMemoryOpt,
    max_model_len: int = MaxModelLenOpt,
) -> None:
    """Does the fine-tuning direction match the contrastive direction, and do they steer alike?

    Margin = mean (positive − negative) log-likelihood per token on held-out pairs. 'undone' = the
    fraction of the fine-tuning margin gap that steering the fine-tuned model removes.
    """
    if (behaviour_prompt is None) != (opposite_prompt is None):
        raise SteerlabError("--behaviour-prompt and --opposite-prompt go together (the prompting baseline needs both)")
    prompts = {"behaviour": behaviour_prompt, "opposite": opposite_prompt} if behaviour_prompt else None
    train = load_pairs(pairs, split=train_split)[:max_train]
    heldout = load_pairs(pairs, split=heldout_split)[:max_heldout]
    engines = engine_config(engine, tensor_parallel_size, pipeline_parallel_size, gpu_memory_utilization, max_model_len)
    lm = load_model(base, device=device, dtype=dtype)
    layer_list = parse_layers(layers, lm.n_layers, "--layers") if layers is not None else None
    config = DiffStudyConfig(
        rank=rank,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        positions=positions,
        study=StudyConfig(
            layers=layer_list,
            coeffs=parse_floats(coeffs, "--coeffs"),
            batch_size=batch_size,
            controls=controls,
            seed=seed,
            prompts=prompts,
            positions=steering_positions,
        ),
    )
    with make_engine(engines, base, lm, dtype=dtype, enable_lora=True) as scorer:
        result = run_diff_study(lm, train, heldout, out, config, adapter_dir=finetuned, engine=scorer)
    print_study(result.study, result.comparison)


def print_study(study: StudyResult, comparison: DirectionsDoc) -> None:
    """Print a diff study's reading: margins, the cosine at the best layer with its random band and
    reliabilities, and the best coherent steering per vector and condition (``study.json`` and
    ``directions.json`` contents)."""
    ref = study.reference
    best = study.best_layer
    cos = comparison["cosine"]["contrastive|model_diff"]
    rel = comparison["reliability"]
    results.print(f"margin: base {ref['base']:+.4f} → fine-tuned {ref['finetuned']:+.4f} (gap {study.gap:+.4f})")
    results.print(
        f"cosine(contrastive, model_diff) at best layer {best}: {cos[best]:+.3f} "
        f"(random |cos| ≈ {comparison['baseline']['expected_abs_cos']:.3f}; split-half reliability "
        f"contrastive {rel['contrastive']['mean'][best]:.3f}, model_diff {rel['model_diff']['mean'][best]:.3f})"
    )
    ci = comparison.get("cosine_ci95", {}).get("contrastive|model_diff")
    if ci:
        results.print(
            f"cosine 95% CI at layer {best}: {ci[best][0]:+.3f} to {ci[best][1]:+.3f} "
            f"(random band ±{comparison['baseline']['band']:.3f})"
        )
    table = Table(
        title="best coherent steering (raw scale): effect [95% CI], random same-norm directions' band "
        "(one-sided p: the intended way), pairs moved"
    )
    for col in (
        "vector",
        "condition",
        "layers",
        "coeff",
        "margin",
        "fraction [95% CI]",
        "random band (p)",
        "steerable / anti",
        "fluency drop",
    ):
        table.add_column(col, justify="right")
    for vector in ("model_diff", "contrastive"):
        for model, key, label in (
            ("finetuned", "undone", "subtract from fine-tuned"),
            ("base", "induced", "add to base"),
        ):
            for layer_set in (best, "all"):
                row = best_coherent(
                    study.rows,
                    key,
                    study.max_fluency_drop,
                    stage="sweep",
                    vector=vector,
                    model=model,
                    scale="raw",
                    layers=layer_set,
                )
                if row:
                    table.add_row(
                        vector,
                        label,
                        str(layer_set),
                        f"{row['coeff']:g}",
                        f"{row['margin']:+.4f}",
                        f"{row[key]:.0%} {key} {_ci(row.get('ci95'))}",
                        _band(row.get("random")),
                        _spread(row),
                        f"{row['fluency_drop']:+.3f}",
                    )
    results.print(table)


def _ci(ci: list | None) -> str:
    if not ci:
        return ""
    return "[unbounded]" if None in ci else f"[{ci[0]:.0%}, {ci[1]:.0%}]"


def _band(random: dict | None) -> str:
    if not random:
        return "—"
    sided = "two-sided" if random.get("alternative") == "two-sided" else "one-sided"
    return f"{random['lo']:.0%}..{random['hi']:.0%} ({sided} p={random['p']:.2g}, k={random['k']})"


def _spread(row: dict) -> str:
    if row.get("steerable_fraction") is None:
        return "—"
    return f"{row['steerable_fraction']:.0%} / {row['anti_steerable_fraction']:.0%}"
