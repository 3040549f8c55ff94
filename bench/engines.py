"""The two engines side by side in one run: the hf engine (transformers + steerlab's hooks) and the vllm
engine (vLLM's continuous batching, steering in its workers), on the same rows.

Run (quiet machine; vLLM needs the ``if __name__ == "__main__"`` guard, which this script has):
    .venv/bin/python bench/engines.py [--model smollm2] [--json]

Workloads (greedy unless said; rates are generated tokens per second, min_new_tokens = max_new_tokens
so both engines generate the same number of tokens):
1. sweep: Q questions x 6 coefficients x 32 tokens at one layer, as rows of one call; then the same
   sweep with 8 random same-norm controls as extra rows (9x the rows): tokens/s on each engine and
   the cost ratio of the controls;
2. vLLM steered vs vLLM unsteered on the same rows (the steering overhead; goal <= 1.2x);
3. persona-style: every (instruction, question) of a trait under its positive and negative system
   prompts, sampled at temperature 1 (the persona pipeline's answer generation).
Each timed call is preceded by a warm-up of the same shape; steered and unsteered runs alternate.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from steerlab.engines.base import EngineConfig
from steerlab.engines.hf import HfEngine
from steerlab.evaluate.controls import random_directions
from steerlab.formats.pairs import builtin_pairs_path, load_pairs
from steerlab.formats.traits import load_trait
from steerlab.model.loading import load_model
from steerlab.steering.generation import expand_grid
from steerlab.steering.steerer import SteeringSpec
from steerlab.vectors.vector import SteeringVector


def timed(engine, prompts, **kwargs) -> tuple[int, float]:
    start = time.perf_counter()
    gens = engine.generate(prompts, **kwargs)
    return sum(g.n_new_tokens for g in gens), time.perf_counter() - start


def rate(result: tuple[int, float]) -> float:
    return result[0] / result[1]


def sweep_rows(questions, coeffs, vector, controls, layer):
    """Rows of the sweep (coefficient-major) and one spec per direction acting on its own block of rows."""
    rows, row_coeffs = expand_grid(questions, coeffs)
    directions = [vector, *controls]
    n = len(rows)
    specs = [
        SteeringSpec(d, layer, row_coeffs * len(directions), rows=list(range(k * n, (k + 1) * n)))
        for k, d in enumerate(directions)
    ]
    return rows * len(directions), specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--questions", type=int, default=12)
    parser.add_argument("--coeffs", default="-4,-2,-1,1,2,4")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--controls", type=int, default=8)
    parser.add_argument("--trait", default="evil")
    parser.add_argument("--persona-questions", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    lm = load_model(args.model)
    hf = HfEngine(lm)
    from steerlab.engines.vllm.engine import VllmEngine

    vllm = VllmEngine(args.model, EngineConfig("vllm", max_model_len=1024))
    pairs = load_pairs(builtin_pairs_path("deception"))
    questions = [p.question for p in pairs if p.split == "heldout"][: args.questions]
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(lm.n_layers, lm.d_model, generator=gen)
    norms = hf.mean_residual_norms(questions)
    vector = SteeringVector(direction / direction.norm(dim=-1, keepdim=True) * 0.1 * norms[:, None])
    controls = [SteeringVector(d) for d in random_directions(vector, args.controls, seed=1)]
    coeffs = [float(c) for c in args.coeffs.split(",")]
    n = args.max_new_tokens
    fixed = {"max_new_tokens": n, "min_new_tokens": n}
    out: dict[str, object] = {"model": args.model, "threads": torch.get_num_threads(), "max_new_tokens": n}

    for name, engine in (("hf", hf), ("vllm", vllm)):
        plain_rows, plain_specs = sweep_rows(questions, coeffs, vector, [], args.layer)
        all_rows, all_specs = sweep_rows(questions, coeffs, vector, controls, args.layer)
        warm = min(8, len(plain_rows))
        timed(engine, plain_rows[:warm], steering=[s.select_rows(range(warm), len(plain_rows)) for s in plain_specs],
              max_new_tokens=4)  # fmt: skip
        no_controls = timed(engine, plain_rows, steering=plain_specs, **fixed)
        with_controls = timed(engine, all_rows, steering=all_specs, **fixed)
        out[f"{name}_sweep_rows"] = len(plain_rows)
        out[f"{name}_sweep_tok_s"] = rate(no_controls)
        out[f"{name}_sweep_controls_rows"] = len(all_rows)
        out[f"{name}_sweep_controls_tok_s"] = rate(with_controls)
        out[f"{name}_controls_cost"] = with_controls[1] / no_controls[1]
        print(f"{name}: sweep {rate(no_controls):.1f} tok/s, with controls {rate(with_controls):.1f} tok/s", flush=True)

    rows, specs = sweep_rows(questions, coeffs, vector, [], args.layer)
    steered_runs, plain_runs = [], []
    for _ in range(2):
        plain_runs.append(timed(vllm, rows, **fixed))
        steered_runs.append(timed(vllm, rows, steering=specs, **fixed))
    best_plain, best_steered = min(plain_runs, key=lambda r: r[1]), min(steered_runs, key=lambda r: r[1])
    out["vllm_unsteered_tok_s"] = rate(best_plain)
    out["vllm_steered_tok_s"] = rate(best_steered)
    out["vllm_steered_time_ratio"] = best_steered[1] / best_plain[1]

    trait = load_trait(args.trait)
    persona = [
        [{"role": "system", "content": system}, {"role": "user", "content": q}]
        for kind in ("pos", "neg")
        for system in trait.system_prompts(kind)
        for q in trait.questions[: args.persona_questions]
    ]
    for name, engine in (("hf", hf), ("vllm", vllm)):
        result = timed(engine, persona, temperature=1.0, seed=0, **fixed)
        out[f"{name}_persona_rows"] = len(persona)
        out[f"{name}_persona_tok_s"] = rate(result)
    out["persona_vllm_vs_hf"] = out["vllm_persona_tok_s"] / out["hf_persona_tok_s"]
    out["sweep_vllm_vs_hf"] = out["vllm_sweep_tok_s"] / out["hf_sweep_tok_s"]
    out["sweep_controls_vllm_vs_hf"] = out["vllm_sweep_controls_tok_s"] / out["hf_sweep_controls_tok_s"]
    vllm.close()

    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{args.model}, {len(questions)} questions x {len(coeffs)} coefficients x {n} tokens, layer {args.layer}")
    print("                              hf tok/s   vllm tok/s   vllm/hf")
    for key, label in (("sweep", "sweep"), ("sweep_controls", f"sweep + {args.controls} controls"),
                       ("persona", f"persona ({len(persona)} rows, T=1)")):  # fmt: skip
        h, v = out[f"hf_{key}_tok_s"], out[f"vllm_{key}_tok_s"]
        print(f"  {label:<28}{h:9.1f}   {v:10.1f}   {v / h:6.2f}x")
    print(f"  controls cost (time with / without): hf {out['hf_controls_cost']:.2f}x, "
          f"vllm {out['vllm_controls_cost']:.2f}x")  # fmt: skip
    print(f"  vllm steered vs unsteered (time, same rows): {out['vllm_steered_time_ratio']:.3f}x  (goal <= 1.2x)")


if __name__ == "__main__":
    main()
