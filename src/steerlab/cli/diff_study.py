"""`steerlab diff study`: fine-tune (or take an adapter), extract both vectors, compare, steer."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..engines.factory import make_engine
from ..errors import SteerlabError
from ..formats.pairs import load_pairs
from ..judge import make_judge
from ..model.layers import parse_layers
from ..model.loading import load_model
from ..pipelines.diff_objectives import check_objectives, steering_rows
from ..pipelines.diff_study import DiffStudyConfig, run_diff_study
from ..pipelines.persona import PersonaConfig
from ..pipelines.records import DirectionsDoc
from ..pipelines.study import StudyConfig, StudyResult, check_all_layers_coeffs, check_all_layers_models
from ..pipelines.study_vectors import check_alphas
from ..pipelines.trait_study import TraitStudyConfig, resolve_trait, run_trait_study
from ..progress import results
from .diff import diff_app
from .options import (
    DeviceOpt,
    DtypeOpt,
    EngineOpt,
    GpuMemoryOpt,
    JudgeOpt,
    JudgeUrlOpt,
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
from .study_tables import print_summary_parts

# the defaults, written once on the dataclasses
_D, _S, _P, _T = DiffStudyConfig(), StudyConfig(), PersonaConfig(), TraitStudyConfig()


@diff_app.command("study")
def study_cmd(
    base: str = typer.Option(
        ..., "--base", "--model", "-m", help="Base model spec (smollm2, HF id, directory, .gguf)."
    ),
    pairs: Path = typer.Option(
        None,
        "--pairs",
        "-p",
        help="Pairs JSONL with a 'split' field (train / heldout), positive = behaviour (or -t TRAIT instead).",
    ),
    trait: str = typer.Option(
        None,
        "--trait",
        "-t",
        help="Study a trait instead of a pairs file: a built-in name (steerlab traits list) or a persona-vectors "
        "trait file. Its pairs come from the persona pipeline (answers under the trait's instructions, judged by "
        "-j, effective pairs; --no-filter keeps every pair), split by question into train and held-out; the "
        "persona vector is a third direction and the prompting baseline uses the trait's own instructions.",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Run directory (resumable): adapter/, vectors/, directions.json, positions.json, study.json, "
        "study_margins.csv, samples.jsonl, summary.json (-t adds persona/ and trait_pairs.json; --objectives "
        "sft,dpo adds adapter_dpo/ and study_dpo.json).",
    ),
    finetuned: Path = typer.Option(
        None, "--finetuned", "-f", help="An existing adapter directory for --base (skips the SFT fine-tune)."
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
    all_layers_coeffs: str = typer.Option(
        None,
        "--all-layers-coeffs",
        help="Coefficient magnitudes of the all-layers sweep (default: --coeffs). The same coefficient at every "
        "layer adds the vector once per layer, so all layers usually need far smaller ones, e.g. 0.0625,0.125 "
        "where one layer takes 1,2,4.",
    ),
    all_layers_models: str = typer.Option(
        ",".join(_S.all_layers_models),
        "--all-layers-models",
        help="Which all-layers sweeps run: finetuned (subtract: undo the fine-tune), base (add: induce the "
        "behaviour) or both; the best-layer sweep always runs both.",
    ),
    blend_alphas: str = typer.Option(
        None,
        "--blend-alphas",
        help="Also steer with blends alpha x contrastive + (1 - alpha) x model-diff, each direction normalised "
        "per layer and the blend at the model-diff vector's norm (0: the model-diff vector, 1: the contrastive "
        "one), e.g. 0,0.25,0.5,0.75,1; every blend row has the evidence of the others (default: none).",
    ),
    objectives: str = typer.Option(
        ",".join(_D.objectives),
        "--objectives",
        help="Fine-tuning objectives, sft first: sft (the behaviour answers) or sft,dpo (also DPO on the same "
        "pairs, the behaviour answer chosen: its own adapter_dpo/, model-diff vector and study_dpo.json, and "
        "the cosine per layer of the SFT and DPO directions).",
    ),
    beta: float = typer.Option(_D.beta, "--beta", min=0.0, help="DPO's beta (with --objectives sft,dpo)."),
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
    judge: str = typer.Option("local", "--judge", "-j", help="-t: the judge of the persona answers. " + JudgeOpt.help),
    judge_base_url: str = JudgeUrlOpt,
    filter_pairs: bool = typer.Option(
        _P.filter,
        "--filter/--no-filter",
        help="-t: --no-filter keeps every persona pair, not only the effective ones (for a judge that cannot "
        "score); recorded in summary.json and the report.",
    ),
    max_questions: int = typer.Option(
        None, "--max-questions", min=2, help="-t: use only the trait's first K questions."
    ),
    max_instructions: int = typer.Option(
        None, "--max-instructions", min=1, help="-t: use only the trait's first K instruction pairs."
    ),
    max_new_tokens: int = typer.Option(
        _P.max_new_tokens, "--max-new-tokens", "-n", min=1, help="-t: tokens per persona answer."
    ),
    heldout_fraction: float = typer.Option(
        _T.heldout_fraction, "--heldout-fraction", help="-t: share of the questions held out (0-1)."
    ),
    seed: int = seed_option("Random seed of the fine-tune, the random directions, the bootstrap and -t's split."),
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

    Examples: steerlab diff study -m smollm2 -p pairs.jsonl -o out/study --blend-alphas 0,0.25,0.5,0.75,1
    | steerlab diff study -m smollm2 -p pairs.jsonl -o out/dpo --objectives sft,dpo
    | steerlab diff study -m smollm2 -t sycophantic -j local --no-filter -o out/syco
    """
    if (pairs is None) == (trait is None):
        raise SteerlabError(
            "--pairs / --trait: give exactly one (a pairs file, or a trait whose pairs the persona pipeline makes)"
        )
    if (behaviour_prompt is None) != (opposite_prompt is None):
        raise SteerlabError("--behaviour-prompt and --opposite-prompt go together (the prompting baseline needs both)")
    if trait is not None and behaviour_prompt is not None:
        raise SteerlabError(
            "--behaviour-prompt / --opposite-prompt: with -t the trait's own instructions are the prompts"
        )
    prompts = {"behaviour": behaviour_prompt, "opposite": opposite_prompt} if behaviour_prompt else None
    objective_list = check_objectives([o.strip() for o in objectives.split(",") if o.strip()])
    alphas = check_alphas(parse_floats(blend_alphas, "--blend-alphas")) if blend_alphas else []
    all_layers = (
        check_all_layers_coeffs(parse_floats(all_layers_coeffs, "--all-layers-coeffs")) if all_layers_coeffs else None
    )
    all_layers_on = check_all_layers_models([m.strip() for m in all_layers_models.split(",") if m.strip()])
    if trait is None:
        train = load_pairs(pairs, split=train_split)[:max_train]
        heldout = load_pairs(pairs, split=heldout_split)[:max_heldout]
        spec = None
    else:
        spec = resolve_trait(trait)[0]  # a bad name or file fails before the model loads
        if finetuned is not None:
            raise SteerlabError("--finetuned: with -t the trait study fine-tunes on the trait's own pairs")
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
        objectives=objective_list,
        beta=beta,
        study=StudyConfig(
            layers=layer_list,
            coeffs=parse_floats(coeffs, "--coeffs"),
            batch_size=batch_size,
            controls=controls,
            seed=seed,
            prompts=prompts,
            positions=steering_positions,
            blend_alphas=alphas,
            all_layers_coeffs=all_layers,
            all_layers_models=all_layers_on,
        ),
    )
    with make_engine(engines, base, lm, dtype=dtype, enable_lora=True) as scorer:
        if spec is None:
            result = run_diff_study(lm, train, heldout, out, config, adapter_dir=finetuned, engine=scorer)
        else:
            persona = PersonaConfig(
                max_questions=max_questions,
                max_instructions=max_instructions,
                max_new_tokens=max_new_tokens,
                seed=seed,
                filter=filter_pairs,
            )
            trait_config = TraitStudyConfig(persona=persona, diff=config, heldout_fraction=heldout_fraction)
            scorer_judge = make_judge(
                lm if judge == "local" and lm.name == "smollm2" else judge, base_url=judge_base_url
            )
            result = run_trait_study(lm, trait, scorer_judge, out, trait_config, judge_name=judge, engine=scorer).diff
    print_study(result.study, result.comparison)
    print_summary_parts(result.summary)


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
    vectors = dict.fromkeys(r["vector"] for r in study.rows if r["stage"] == "sweep" and r["scale"] == "raw")
    for vector in sorted(vectors, key=lambda v: v != "model_diff"):  # the model-diff vector first
        best_rows = {layer_set: steering_rows(study, vector, layer_set) for layer_set in (best, "all")}
        for model, key, label in (
            ("finetuned", "undone", "subtract from fine-tuned"),
            ("base", "induced", "add to base"),
        ):
            for layer_set in (best, "all"):
                row = best_rows[layer_set][model]
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
