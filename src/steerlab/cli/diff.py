"""`steerlab diff finetune` and `steerlab diff extract`: vectors from a fine-tune (model diffing)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from ..activations.capture import Reduction
from ..errors import SteerlabError
from ..extract.model_diff import default_reductions, extract_model_diffs, load_diff_samples
from ..finetune.config import FinetuneConfig
from ..finetune.training import run_finetune, run_finetune_pairs
from ..formats.conversations import FORMATS, detect_format, load_chat_data
from ..formats.pairs import load_pairs
from ..model.layers import parse_layer_spec
from ..model.loading import load_model
from ..progress import console
from .app import app, new_group
from .options import DeviceOpt, DtypeOpt, check_out, layer_option, seed_option

diff_app = new_group(
    "Vectors from fine-tuning: LoRA-fine-tune a model on behaviour data ([bold]diff finetune[/]), "
    "then take the mean activation difference between the fine-tuned and the base model on the "
    "same inputs ([bold]diff extract[/]). Compare the result with [bold]extract contrastive[/]."
)
app.add_typer(diff_app, name="diff")

_FT = FinetuneConfig()  # the defaults of `diff finetune`, written once on the dataclass


@diff_app.command("finetune")
def finetune_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Base model: smollm2 | HF id | local dir | file.gguf."),
    data: Path = typer.Option(
        ...,
        "--data",
        "-d",
        help='Training data: chat JSONL {"messages": [...]}, pairs JSONL {question, positive, '
        "negative} (see --use), a .json list of \\[user, assistant] pairs, or rendered ChatML "
        "chats (.jsonl/.csv/.txt, one per row).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Adapter directory to write (atomically)."),
    objective: str = typer.Option(
        _FT.objective,
        "--objective",
        help="sft | dpo. sft: next-token loss on the assistant tokens (any chat data). dpo: Direct Preference "
        "Optimization (Rafailov et al. 2023) -- needs a pairs file with both answers per question; "
        "raises the likelihood of the --use answer (chosen) relative to the other (rejected), "
        "measured against the reference model = the base model without the adapter.",
    ),
    beta: float = typer.Option(
        _FT.beta,
        "--beta",
        help="DPO only: strength of the pull towards the reference (base) model; larger keeps the "
        "fine-tune closer to it. The implicit reward is beta x the log-likelihood ratio (nats).",
    ),
    use: str = typer.Option(
        "positive",
        "--use",
        help="Pairs data: train on the positive (behaviour) or negative answers (DPO: the chosen "
        "answer; the other one is rejected).",
    ),
    split: str = typer.Option(None, "--split", help="Pairs data: only rows whose 'split' equals this."),
    fmt: str = typer.Option(
        "auto", "--format", help="auto | chat | pairs | pair-list | rendered (auto: from the file)."
    ),
    column: str = typer.Option(None, "--column", help="Rendered chats: the column holding them."),
    rank: int = typer.Option(_FT.rank, "--rank", min=1, help="LoRA rank r."),
    alpha: float = typer.Option(_FT.alpha, "--alpha", help="LoRA alpha (scale = alpha / rank)."),
    dropout: float = typer.Option(_FT.dropout, "--dropout", min=0.0, max=0.99, help="LoRA dropout."),
    target_modules: str = typer.Option(
        _FT.target_modules,
        "--target-modules",
        help="Comma-separated module names (q_proj,v_proj) or all-linear. Default: every linear "
        "layer inside the decoder blocks.",
    ),
    layers: str = layer_option(None, plural=True, help="Only adapt these blocks, e.g. 10-29 or 3,5,7 (default: all)."),
    epochs: int = typer.Option(_FT.epochs, "--epochs", "-e", min=1, help="Passes over the data."),
    lr: float = typer.Option(_FT.lr, "--lr", help="AdamW learning rate (constant)."),
    batch_size: int = typer.Option(
        _FT.batch_size, "--batch-size", "-b", min=1, help="Conversations per step (DPO: pairs)."
    ),
    max_length: int = typer.Option(
        _FT.max_length, "--max-length", min=2, help="Tokens per conversation (cut on the right)."
    ),
    seed: int = seed_option("Random seed for LoRA init, data order and dropout."),
    weight_decay: float = typer.Option(_FT.weight_decay, "--weight-decay", min=0.0, help="AdamW weight decay."),
    max_grad_norm: float = typer.Option(
        _FT.max_grad_norm, "--max-grad-norm", min=0.0, help="Clip the gradient norm to this (0: no clipping)."
    ),
    reuse: bool = typer.Option(
        False,
        "--reuse",
        hidden=True,
        help="Kept for old scripts: a rerun with the same config, data and base "
        "model always keeps the existing fine-tune.",
    ),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
) -> None:
    """LoRA-fine-tune MODEL: SFT on chat data (loss on the assistant tokens only), or DPO on pairs.

    --objective sft (default) trains on conversations. --objective dpo trains on a pairs file
    (JSONL question/positive/negative): per pair it raises log p(chosen) - log p(rejected),
    summed over each answer's tokens, relative to the same difference under the reference model,
    which is the base model itself (its log-likelihoods are computed once before training, without
    any adapter); --beta scales that implicit reward. Writes OUT/ (adapter_config.json,
    adapter_model.safetensors from peft), OUT/train_log.jsonl (loss per step; DPO also the reward
    margin) and OUT/steerlab_finetune.json (config, base model, data hash, time, per-epoch loss and
    DPO reward margin). The directory appears only when training finished; rerunning with the same
    settings (objective and beta included), data and base model keeps it, other settings retrain
    and replace it. Use the adapter as --model BASE+OUT anywhere, or with [bold]diff extract[/].
    Examples (the deceptive answers of the built-in pairs; SFT, then DPO against the honest ones):

        steerlab diff finetune -m smollm2 -d pairs.jsonl --use positive --split train -o out/ft

        steerlab diff finetune -m smollm2 -d pairs.jsonl --objective dpo --split train -o out/dpo
    """
    del reuse  # a finished identical fine-tune is always kept now; the flag stays accepted
    if use not in ("positive", "negative"):
        raise SteerlabError(f"--use {use!r}: expected positive or negative")
    config = FinetuneConfig(
        objective=objective,
        beta=beta,
        rank=rank,
        alpha=alpha,
        dropout=dropout,
        target_modules=target_modules,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        max_length=max_length,
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
    )
    source = {"data": str(data), "format": fmt, "use": use, "split": split, "column": column}
    if objective == "dpo":
        _require_pairs(data, fmt)
        pairs = load_pairs(data, split=split)
    else:
        conversations = load_chat_data(data, fmt=fmt, use=use, split=split, column=column)  # type: ignore[arg-type]
    lm = load_model(model, device=device, dtype=dtype)
    selection = parse_layer_spec(layers, "--layers") if layers is not None else None
    # "all" is the default (every block), so it fingerprints as the same fine-tune.
    layer_list = None if selection is None or selection.is_all else selection.resolve(lm.n_layers, "--layers")
    config = replace(config, layers=layer_list)
    if objective == "dpo":
        result = run_finetune_pairs(lm, pairs, out, config, use=use, source=source)  # type: ignore[arg-type]
    else:
        result = run_finetune(lm, conversations, out, config, source=source)
    if result.reused:
        console.print(f"{out} already holds this fine-tune (same config, data and base model); kept it")
        return
    what, margin = f"LoRA r={rank} on {result.n_examples} conversations", ""
    if objective == "dpo":
        what = f"DPO (beta {beta:g}) LoRA r={rank} on {result.n_examples} pairs"
        margin = f", reward margin {result.epochs[-1]['reward_margin']:.3f}"
    console.print(
        f"wrote {out}: {what}, {result.n_steps} steps in {result.train_time_s:.1f} s, loss "
        f"{result.losses[0]:.3f} -> {result.final_loss:.3f}{margin} (last-epoch mean)"
    )


def _require_pairs(data: Path, fmt: str) -> None:
    """Check that ``data`` (read as ``fmt``) is a pairs file, the only data --objective dpo takes.

    Raises:
        SteerlabError: --format not known, or ``data`` is not a pairs file.
    """
    if fmt not in FORMATS:
        raise SteerlabError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    found = detect_format(data) if fmt == "auto" else fmt
    if found != "pairs":
        raise SteerlabError(
            f"--objective dpo needs a pairs file (JSONL with question, positive and negative on each "
            f"line: a chosen and a rejected answer to the same question); {data} is {found} data, which "
            "only --objective sft can train on"
        )


@diff_app.command("extract")
def extract_cmd(
    base: str = typer.Option(..., "--base", "--model", "-m", help="Base model: smollm2 | HF id | dir | file.gguf."),
    finetuned: str = typer.Option(
        ...,
        "--finetuned",
        "-f",
        help="Adapter directory made for --base (applied unmerged), or a fine-tuned model "
        "(HF id, dir, .gguf, BASE+ADAPTER) with the same tokenizer.",
    ),
    prompts: Path = typer.Option(
        ...,
        "--prompts",
        help="Inputs fed identically to both models: pairs JSONL, chat JSONL (last assistant turn "
        "= response), a trait .json ('questions') or a .txt file with one question per line.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output vector, .safetensors (method model_diff)."),
    reduction: str = typer.Option(
        None,
        "--reduction",
        "-r",
        help="response_avg | prompt_last | prompt_avg | first_k[:K]. Several, comma-separated, "
        "run in one pass: the first is written to OUT, each other one beside it with its name "
        "(OUT_STEM.prompt_avg.safetensors). Default: response_avg when the inputs have responses; "
        "prompt_last,prompt_avg for prompts-only inputs (questions .txt/.json, chat without an "
        "assistant turn).",
    ),
    answers: str = typer.Option(
        None,
        "--answers",
        help="Pairs: which answers follow each question: both | positive | negative | none. "
        "Default: both for response reductions, none (questions only) for prompt reductions.",
    ),
    split: str = typer.Option(None, "--split", help="Pairs: only rows whose 'split' equals this."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="Sequences per forward pass."),
    check_base: bool = typer.Option(
        True, "--check-base/--no-check-base", help="Refuse a steerlab adapter trained on another base model."
    ),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
) -> None:
    """Vector per layer = mean over the prompts of (fine-tuned - base) activations.

    Both models see identical token sequences (rendered with the base model's chat template).
    Layer L of the vector is for the output of block L. With pairs, the default feeds each
    question followed by [bold]both[/] of its answers, so the diff is averaged over on- and
    off-behaviour text and measures the change in the model rather than the answer content;
    --reduction prompt_last with --answers none gives the persona-vectors "fine-tuning shift" at
    the last prompt token.

    OUT is always written: with several reductions it holds the first, and each other one goes
    beside it (diff.prompt_avg.safetensors); every file written is named on stderr. Example:

        steerlab diff extract -m smollm2 -f out/ft --prompts pairs.jsonl --split test -o diff.safetensors
    """
    check_out(out, ".safetensors")
    if reduction is None:
        reduction = ",".join(default_reductions(prompts, answers))  # type: ignore[arg-type]
        console.print(f"no --reduction given: using {reduction} for {prompts}")
    names = list(dict.fromkeys(r.strip() for r in reduction.split(",") if r.strip()))
    if not names:
        raise SteerlabError("--reduction: empty")
    parsed = [Reduction.parse(r) for r in names]
    if answers is not None and answers not in ("both", "positive", "negative", "none"):
        raise SteerlabError(f"--answers {answers!r}: expected both, positive, negative or none")
    needs = {r.needs_response for r in parsed}
    if len(needs) > 1 and answers is None:
        raise SteerlabError("--reduction mixes prompt and response reductions; pass --answers to choose one input set")
    main = next((r for r in parsed if r.needs_response), parsed[0])
    samples = load_diff_samples(prompts, main, answers, split)  # type: ignore[arg-type]
    lm = load_model(base, device=device, dtype=dtype)
    vectors = extract_model_diffs(lm, finetuned, samples, parsed, batch_size, check_base)
    for i, red in enumerate(parsed):
        vector = vectors[red.name]
        vector.metadata["config"] = {"prompts": str(prompts), "answers": answers, "split": split, "reduction": red.name}
        path = out if i == 0 else reduction_path(out, red.name)
        vector.save(path)
        norms = vector.norms()
        console.print(
            f"wrote {path} ({red.name}): {vector.n_layers} layers x {vector.d_model}, {len(samples)} "
            f"inputs, largest norm at layer {int(norms.argmax())} ({float(norms.max()):.3g})"
        )


def reduction_path(out: Path, reduction: str) -> Path:
    """Where ``diff extract -o OUT`` writes a reduction other than the first: beside OUT, named
    ``OUT_STEM.REDUCTION.safetensors`` (``first_k:3`` → ``first_k3``)."""
    return out.with_name(f"{out.stem}.{reduction.replace(':', '')}{out.suffix}")
