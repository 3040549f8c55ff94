"""Sweep throughput: steerlab's batched sweep (per-row coefficients) vs the naive loop, the
overhead of steering on the same batch, and what a sweep's random controls cost. Run:
.venv/bin/python bench/sweep.py [--json] [--quick] [--controls-only] [--judge local]

Naive = what the persona-vectors notebook's run_steering_experiment does: for every coefficient and
question, ``model.generate`` on one prompt inside an ActivationSteerer. Rates are generated tokens
per second, measured side by side in this one run. ``--quick`` times the naive loop on a subset of
its calls (its rate is per call, so the subset gives the same tokens/s) to keep CPU runs short.

Controls: ``run_sweep`` with its defaults (8 random directions: margins at every cell, generated text
only where a judged effect is reported) against the same sweep with ``controls=0``, each in a fresh
run directory, alternated and the best of each kept; with ``--pairs N`` the sweep also measures the
margin on N held-out pairs, with ``--judge`` it judges every generation (the judge's calls are counted
by the sweep's plan). ``--controls-only`` runs just this part.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from steerlab import extract_contrastive, load_model, load_pairs
from steerlab.formats.pairs import builtin_pairs_path
from steerlab.model.chat import render_prompt
from steerlab.steering.compat import ActivationSteerer
from steerlab.steering.generation import auto_batch_size, expand_grid, generate_batch, stop_token_ids
from steerlab.steering.steerer import SteeringSpec


def naive_loop(lm, vector, layer, questions, coeffs, max_new_tokens):
    tokens = 0
    eos = stop_token_ids(lm)
    start = time.perf_counter()
    for c in coeffs:
        for q in questions:
            ids = lm.tokenizer(render_prompt(lm.tokenizer, q), return_tensors="pt", add_special_tokens=False).to(
                lm.device
            )
            with ActivationSteerer(lm.model, vector, coeff=c, layer=layer, positions="all"), torch.inference_mode():
                out = lm.model.generate(
                    **ids,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=eos,
                    pad_token_id=lm.tokenizer.pad_token_id,
                )
            tokens += out.shape[1] - ids["input_ids"].shape[1]
    return tokens, time.perf_counter() - start


def timed(fn):
    start = time.perf_counter()
    gens = fn()
    return sum(g.n_new_tokens for g in gens), time.perf_counter() - start


def controls_cost(lm, vector, layer, questions, coeffs, pairs, n, repeats, judge=None, eval_prompt=None):
    """The default sweep (controls included) and the same sweep with controls=0, each the best of
    ``repeats`` alternated runs in fresh directories: ``{name: {"total_s", "generation_s",
    "margin_s", "judge_s"}}`` (each the best over runs), and the default sweep's plan."""
    from steerlab.pipelines.sweep import SweepConfig, run_sweep, sweep_plan

    default = SweepConfig(str(layer), coeffs, max_new_tokens=n)
    off = SweepConfig(str(layer), coeffs, max_new_tokens=n, controls=0)
    runs: dict[str, list[dict[str, float]]] = {"default": [], "controls_0": []}
    for _ in range(repeats):
        for name, config in (("default", default), ("controls_0", off)):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                result = run_sweep(
                    lm, vector, questions, Path(tmp) / "run", config, pairs=pairs, judge=judge, eval_prompt=eval_prompt
                )
                runs[name].append({"total_s": time.perf_counter() - start, **result.timings})
    best = {name: {k: min(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    plan = sweep_plan(default, 1, len(questions), judge is not None, len(pairs or []))
    return best, plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--coeffs", default="-4,-2,-1,1,2,4")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="time the naive loop on 2 coeffs x 5 questions")
    parser.add_argument("--repeats", type=int, default=2, help="alternating unsteered/steered runs")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--controls-only", action="store_true", help="only the default sweep vs --controls 0")
    parser.add_argument("--sweep-questions", type=int, default=12, help="questions of the controls comparison")
    parser.add_argument("--sweep-coeffs", default="-4,-2,2,4", help="coefficients of the controls comparison")
    parser.add_argument("--sweep-tokens", type=int, default=32, help="new tokens of the controls comparison")
    parser.add_argument("--pairs", type=int, default=12, help="held-out pairs for the margins (0: none)")
    parser.add_argument("--judge", default=None, help="judge every generation too (e.g. local)")
    args = parser.parse_args()

    lm = load_model(args.model)
    pairs = load_pairs(builtin_pairs_path())
    vector = extract_contrastive(lm, [p for p in pairs if p.split == "train"][:64])
    questions = [p.question for p in pairs if p.split == "heldout"][: args.questions]
    coeffs = [float(c) for c in args.coeffs.split(",")]
    result: dict = {"model": args.model, "device": str(lm.device), "dtype": str(lm.dtype)}
    result["threads"] = torch.get_num_threads()
    held = [p for p in pairs if p.split == "heldout"]
    sweep_questions = [p.question for p in held][: args.sweep_questions]
    sweep_pairs = held[-args.pairs :] if args.pairs else None  # not the questions generated from
    judge = eval_prompt = None
    if args.judge:
        from steerlab.formats.traits import load_trait
        from steerlab.judge import make_judge

        judge = make_judge(lm if args.judge == "local" else args.judge)
        eval_prompt = load_trait("deceptive").eval_prompt
    sweep_coeffs = [float(c) for c in args.sweep_coeffs.split(",")]
    best, plan = controls_cost(
        lm, vector, args.layer, sweep_questions, sweep_coeffs, sweep_pairs, args.sweep_tokens, args.repeats,
        judge, eval_prompt,
    )  # fmt: skip
    default_s, off_s = best["default"]["total_s"], best["controls_0"]["total_s"]
    gen = best["default"]["generation_s"] / best["controls_0"]["generation_s"]
    result.update(
        controls_plan=plan.describe(),
        default_sweep=best["default"],
        controls_0_sweep=best["controls_0"],
        default_vs_controls_0=default_s / off_s,
        generation_default_vs_controls_0=gen,
    )
    print_controls = (
        f"{args.model}: sweep of {len(sweep_questions)} questions x {len(sweep_coeffs)} coefficients x "
        f"{args.sweep_tokens} tokens at layer {args.layer}"
        + (f", margins on {len(sweep_pairs)} pairs" if sweep_pairs else "")
        + (f", judged ({args.judge})" if judge else "")
        + f" (best of {args.repeats} alternated runs)\n  {plan.describe()}"
        + "".join(
            f"\n  {label:30} {best[k]['total_s']:7.1f} s (generation {best[k]['generation_s']:.1f} s, margins "
            f"{best[k]['margin_s']:.1f} s, judge {best[k]['judge_s']:.1f} s)"
            for k, label in (("default", "default (8 controls)"), ("controls_0", "--controls 0"))
        )
        + f"\n  ratio default / --controls 0   {default_s / off_s:7.2f}x  (target <= 2); generation alone {gen:.2f}x"
    )
    if args.controls_only:
        print(json.dumps(result, indent=2) if args.json else print_controls)
        return

    rows, row_coeffs = expand_grid(questions, coeffs)
    spec = SteeringSpec(vector, args.layer, row_coeffs)
    generate_batch(lm, rows[:4], max_new_tokens=4)  # warm-up

    n = args.max_new_tokens
    sweep_tokens, sweep_s = timed(
        lambda: generate_batch(lm, rows, steering=spec, max_new_tokens=n, batch_size=args.batch_size)
    )
    naive_q, naive_c = (questions[:5], coeffs[:2]) if args.quick else (questions, coeffs)
    naive_tokens, naive_s = naive_loop(lm, vector[args.layer], args.layer, naive_q, naive_c, n)
    fixed = {"max_new_tokens": n, "min_new_tokens": n, "batch_size": args.batch_size}
    # alternate unsteered / steered runs and keep each one's best, so drift does not favour either
    plain_runs, steer_runs = [], []
    for _ in range(args.repeats):
        plain_runs.append(timed(lambda: generate_batch(lm, rows, **fixed)))
        steer_runs.append(timed(lambda: generate_batch(lm, rows, steering=spec, **fixed)))
    plain_tokens, plain_s = min(plain_runs, key=lambda r: r[1])
    steer_tokens, steer_s = min(steer_runs, key=lambda r: r[1])
    # steerlab's default batching (automatic batch size) against unsteered generation of every row in
    # one batch, the machine's practical limit; alternated as above
    one_runs, default_runs = [], []
    for _ in range(args.repeats):
        one_runs.append(
            timed(lambda: generate_batch(lm, rows, max_new_tokens=n, min_new_tokens=n, batch_size=len(rows)))
        )
        default_runs.append(timed(lambda: generate_batch(lm, rows, steering=spec, max_new_tokens=n, min_new_tokens=n)))
    one_tokens, one_s = min(one_runs, key=lambda r: r[1])
    default_tokens, default_s = min(default_runs, key=lambda r: r[1])

    result.update(
        {
            "rows": len(rows),
            "max_new_tokens": n,
            "sweep_tokens_per_s": sweep_tokens / sweep_s,
            "naive_tokens_per_s": naive_tokens / naive_s,
            "naive_calls_timed": len(naive_q) * len(naive_c),
            "sweep_vs_naive": (sweep_tokens / sweep_s) / (naive_tokens / naive_s),
            "unsteered_tokens_per_s": plain_tokens / plain_s,
            "steered_tokens_per_s": steer_tokens / steer_s,
            "steered_vs_unsteered": (steer_tokens / steer_s) / (plain_tokens / plain_s),
            "auto_batch_size": auto_batch_size(lm, len(rows), n + 64),
            "unsteered_one_batch_tokens_per_s": one_tokens / one_s,
            "steered_default_tokens_per_s": default_tokens / default_s,
            "default_vs_one_batch": (default_tokens / default_s) / (one_tokens / one_s),
        }
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{args.model} on {result['device']} ({result['dtype']}, {result['threads']} threads), "
        f"{len(questions)} questions x {len(coeffs)} coefficients x {n} new tokens, greedy"
    )
    print(f"  batched sweep (per-row coeffs) {result['sweep_tokens_per_s']:9.1f} tok/s")
    print(f"  naive loop ({result['naive_calls_timed']} calls)       {result['naive_tokens_per_s']:9.1f} tok/s")
    print(f"  ratio sweep / naive            {result['sweep_vs_naive']:9.2f}x")
    print(f"  unsteered, same batch          {result['unsteered_tokens_per_s']:9.1f} tok/s")
    print(f"  steered, same batch            {result['steered_tokens_per_s']:9.1f} tok/s")
    print(f"  ratio steered / unsteered      {result['steered_vs_unsteered']:9.3f}x")
    print(f"  unsteered, all rows one batch  {result['unsteered_one_batch_tokens_per_s']:9.1f} tok/s")
    print(
        f"  steered, default batching      {result['steered_default_tokens_per_s']:9.1f} tok/s "
        f"(automatic batch size {result['auto_batch_size']})"
    )
    print(f"  ratio default / one batch      {result['default_vs_one_batch']:9.3f}x  (target >= 0.95)")
    print(print_controls)


if __name__ == "__main__":
    main()
