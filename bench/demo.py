"""The demo's time goal: ``steerlab demo`` (size small) with and without the blend rows, each in a fresh
run directory, normalised to a machine with 200 GFLOP/s of fp32 GEMM. Run:
.venv/bin/python bench/demo.py [--size small] [--order with,without] [--json]

Machines of one kind differ about 2x in speed, so the GEMM rate is measured in this process (a
2048 x 2048 fp32 matmul loop, torch's default threads, before and after the demos) and each wall time t
is reported as ``t x rate / 200`` (the time on a 200 GFLOP/s machine), beside the load average (other
work on the machine makes timings meaningless: run it when ``uptime`` shows a load below 1.5).
Without blends means the same demo with ``blend_alphas`` emptied (everything else unchanged).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import steerlab.pipelines.demo as demo

REFERENCE_GFLOPS = 200.0


def gemm_gflops(n: int = 2048, seconds: float = 5.0) -> float:
    """fp32 GEMM rate of this machine (GFLOP/s): ``2 n^3`` per ``[n, n] @ [n, n]``, best of 1 s windows."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    a @ b  # warm-up
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < 1.0:
            a @ b
            reps += 1
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
    return best


def timed_demo(size: str, blends: bool, keep: Path | None = None) -> tuple[float, dict[str, float]]:
    """Seconds of one demo in a fresh run directory (``keep``: this one, kept; else a temporary one),
    and its stage timings."""
    cfg = demo.SIZES[size]
    if not blends:
        demo.SIZES[size] = replace(cfg, study=replace(cfg.study, blend_alphas=[]))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = keep if keep is not None else Path(tmp) / "demo"
            if out.exists():
                raise SystemExit(f"--out: {out} exists (the timing needs a fresh run directory)")
            start = time.perf_counter()
            result = demo.run_demo(out, size=size)
            return time.perf_counter() - start, result.timings
    finally:
        demo.SIZES[size] = cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--order", default="with,without", help="which demos, in order: with,without")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path, help="keep the runs in OUT/with and OUT/without (fresh directories)")
    args = parser.parse_args()
    rates = [gemm_gflops()]
    load = [os.getloadavg()[0]]
    runs = {}
    for which in args.order.split(","):
        keep = args.out / which if args.out else None
        seconds, timings = timed_demo(args.size, blends=which == "with", keep=keep)
        runs[which] = {"seconds": round(seconds, 1), "timings": timings, "load_after": os.getloadavg()[0]}
    rates.append(gemm_gflops())
    rate = sum(rates) / len(rates)
    for run in runs.values():
        run["normalised_seconds"] = round(run["seconds"] * rate / REFERENCE_GFLOPS, 1)
    out = {"gemm_gflops": [round(r, 1) for r in rates], "load_before": load[0], "threads": torch.get_num_threads()}
    out["runs"] = runs
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(
        f"fp32 GEMM 2048^3: {out['gemm_gflops']} GFLOP/s (before, after); {out['threads']} threads; load {load[0]:.2f}"
    )
    for which, run in runs.items():
        study = run["timings"].get("diff.study")
        print(
            f"demo {args.size} {which} blends: {run['seconds']:.0f} s wall, {run['normalised_seconds']:.0f} s at "
            f"{REFERENCE_GFLOPS:.0f} GFLOP/s (study stage {study} s; load after {run['load_after']:.2f})"
        )
    if {"with", "without"} <= set(runs):
        print(f"blends add {runs['with']['seconds'] - runs['without']['seconds']:+.0f} s wall")


if __name__ == "__main__":
    main()
