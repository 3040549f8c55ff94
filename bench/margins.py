"""Teacher-forced margins with controls: shared prompts and skipped blocks vs whole sequences.

One steering condition of the demo's study, measured side by side in this one run on smollm2: the
held-out deception pairs, a vector at one layer and at all layers, 3 coefficients, and K random
controls as extra rows (``condition_margins``). Each way is timed on the same rows:

- ``whole``: every row runs its whole sequence (``share_prompts=False``), as before issue 12;
- ``shared``: each distinct prompt runs once as a KV cache, rows run their last prompt token and
  answer, and rows steered at layer L start at block L.

Both give the same margins (the largest difference is printed). Run:
``.venv/bin/python bench/margins.py [--controls 8] [--pairs 24] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from steerlab import extract_contrastive, load_model, load_pairs
from steerlab.activations.samples import pair_samples
from steerlab.evaluate.controls import random_directions
from steerlab.formats.pairs import builtin_pairs_path
from steerlab.steering.scoring import response_logprobs
from steerlab.steering.steerer import SteeringSpec
from steerlab.vectors.vector import SteeringVector


def rows(pairs, conditions, coeffs):
    """The rows condition_margins builds: (condition, coefficient, side, pair) with per-row specs."""
    pos, neg = pair_samples(pairs)
    block = 2 * len(pairs) * len(coeffs)
    samples = [s for _ in conditions for _ in coeffs for s in pos + neg]
    row_coeffs = torch.tensor([c for _ in conditions for c in coeffs for _ in range(2 * len(pairs))])
    specs = [
        SteeringSpec(v, layers, row_coeffs, positions="response", rows=list(range(i * block, (i + 1) * block)))
        for i, (v, layers) in enumerate(conditions)
    ]
    return samples, specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--controls", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    lm = load_model("smollm2")
    path = builtin_pairs_path("deception")
    vector = extract_contrastive(lm, load_pairs(path, split="train")[:64])
    heldout = load_pairs(path, split="heldout")[: args.pairs]
    coeffs = [-1.0, -2.0, -4.0]
    controls = [SteeringVector(d) for d in random_directions(vector, args.controls, 0)]
    report = {}
    for layers in (24, "all"):
        conditions = [(v, layers) for v in [vector, *controls]]
        samples, specs = rows(heldout, conditions, coeffs)
        times, values = {}, {}
        for way, share in (("whole", False), ("shared", True)):
            start = time.perf_counter()
            values[way] = response_logprobs(lm, samples, specs, batch_size=args.batch_size, share_prompts=share)
            times[way] = time.perf_counter() - start
        report[f"layer {layers}"] = {
            "rows": len(samples),
            "whole_s": round(times["whole"], 1),
            "shared_s": round(times["shared"], 1),
            "speedup": round(times["whole"] / times["shared"], 2),
            "max_abs_diff": float((values["whole"] - values["shared"]).abs().max()),
        }
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(
        f"smollm2, {args.pairs} held-out pairs x 2 answers x {len(coeffs)} coefficients x "
        f"(1 vector + {args.controls} controls), batch {args.batch_size}, {torch.get_num_threads()} threads"
    )
    for name, r in report.items():
        print(
            f"{name:>9}: {r['rows']} rows  whole sequences {r['whole_s']:7.1f} s  shared prompts "
            f"{r['shared_s']:6.1f} s  ({r['speedup']:.2f}x)  max |difference| {r['max_abs_diff']:.1e} nats/token"
        )


if __name__ == "__main__":
    main()
