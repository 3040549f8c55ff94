"""Throughput of `steerlab serve` at several concurrency levels, measured side by side in one run.

Starts `steerlab serve` on loopback (its own process) with the model, sends
mixed steered / unsteered chat requests through the official openai client from N client threads,
and reports requests/s, completion tokens/s, p50/p95 latency, the mean rows per generate call and
the speed-up over concurrency 1. The levels run interleaved (``--rounds`` times) and are pooled, so
a burst of load from other processes on a shared machine does not land on one level only.

    .venv/bin/python bench/serve.py                 # smollm2, concurrency 1,4,16, 32 max_tokens
    .venv/bin/python bench/serve.py --json

The steering vector is a random direction (seeded; throughput does not depend on what it encodes),
applied with scale "unit" at one layer with coefficients that differ from request to request, so
batches mix coefficients (per-row) and unsteered rows.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("STEERLAB_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import openai
import torch

from steerlab import SteeringVector

QUESTIONS = [
    "How do I keep bread fresh for longer?",
    "What should I pack for a weekend hike?",
    "How can I sleep better at night?",
    "Give me a tip for saving money on groceries.",
    "How do I fix a flat bicycle tire?",
    "What is a good way to start learning to cook?",
    "How often should I water a cactus?",
    "How do I back up the files on my laptop?",
    "What makes a good cover letter?",
    "How can I keep my dog calm during fireworks?",
    "What is the best way to study for an exam?",
    "How do I remove a coffee stain from a shirt?",
]
COEFFS = [-6.0, -3.0, 3.0, 6.0]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def run_level(client: openai.OpenAI, url: str, concurrency: int, n_requests: int, max_tokens: int, layer: int) -> dict:
    """One timed burst: ``n_requests`` from ``concurrency`` client threads; raw measurements."""

    def one(i: int) -> tuple[float, int]:
        steered = i % 2 == 0
        extra = (
            {
                "steering": [
                    {"vector": "random", "layer": layer, "coeff": COEFFS[(i // 2) % len(COEFFS)], "scale": "unit"}
                ]
            }
            if steered
            else None
        )
        start = time.perf_counter()
        r = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            max_tokens=max_tokens,
            temperature=0,
            extra_body=extra,
        )
        return time.perf_counter() - start, r.usage.completion_tokens

    before = httpx.get(f"{url}/health").json()
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n_requests)))
    wall = time.perf_counter() - start
    after = httpx.get(f"{url}/health").json()
    return {
        "wall": wall,
        "latencies": [lat for lat, _ in results],
        "tokens": sum(n for _, n in results),
        "rows": after["rows"] - before["rows"],
        "batches": after["batches"] - before["batches"],
    }


def summarize(concurrency: int, runs: list[dict]) -> dict:
    """Pool the rounds of one level: totals over total wall time, latency percentiles over all."""
    wall = sum(r["wall"] for r in runs)
    latencies = [x for r in runs for x in r["latencies"]]
    tokens = sum(r["tokens"] for r in runs)
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "rounds": len(runs),
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 3),
        "completion_tokens_per_s": round(tokens / wall, 2),
        "completion_tokens": tokens,
        "p50_latency_s": round(statistics.median(latencies), 3),
        "p95_latency_s": round(percentile(latencies, 0.95), 3),
        "mean_rows_per_batch": round(sum(r["rows"] for r in runs) / max(1, sum(r["batches"] for r in runs)), 2),
        "round_requests_per_s": [round(len(r["latencies"]) / r["wall"], 3) for r in runs],
    }


def start_server(args: argparse.Namespace, vectors: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """`steerlab serve` in its own process (so the client threads do not share its GIL)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "STEERLAB_API_KEY"}  # loopback, no key
    env["STEERLAB_PROGRESS"] = "0"
    if args.torch_threads:
        env["OMP_NUM_THREADS"] = str(args.torch_threads)
    code = "import steerlab.cli.serve; from steerlab.cli import main; main()"
    cmd = [
        sys.executable,
        "-c",
        code,
        "serve",
        "--model",
        args.model,
        "--vectors",
        str(vectors),
        "--port",
        str(port),
        "--max-batch",
        str(args.max_batch),
        "--batch-window-ms",
        str(args.window_ms),
        "--max-queue",
        str(max(64, *(int(c) for c in args.concurrency.split(",")))),
    ]  # never 429 here
    proc = subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the server did not start in 10 minutes")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated client thread counts")
    parser.add_argument(
        "--requests", type=int, default=None, help="requests per level and round (default: max(8, 3 x concurrency))"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="the levels run interleaved this many times (1,4,16,1,4,16,...) and are pooled",
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--window-ms", type=float, default=10.0)
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="OMP_NUM_THREADS for the server (default: torch's choice)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(args, Path(tmp), Path(tmp) / "server.log")
        try:
            info = httpx.get(f"{url}/v1/models").json()["data"][0]
            layer = info["n_layers"] // 3
            torch.manual_seed(0)
            # the server lists its vectors directory on each request, so the vector can come now
            SteeringVector(torch.randn(info["n_layers"], info["d_model"]), {"method": "random"}).save(
                Path(tmp) / "random.safetensors"
            )
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=600)
            run_level(client, url, 2, 2, 4, layer)  # warm-up
            runs: dict[int, list[dict]] = {c: [] for c in levels}
            for _ in range(args.rounds):
                for c in levels:
                    runs[c].append(run_level(client, url, c, args.requests or max(8, 3 * c), args.max_tokens, layer))
            rows = [summarize(c, runs[c]) for c in levels]
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    base = rows[0]
    for r in rows:
        r["speedup_req_per_s_vs_first"] = round(r["requests_per_s"] / base["requests_per_s"], 2)
    report = {
        "model": args.model,
        "device": info.get("device"),
        "dtype": info.get("dtype"),
        "torch_threads": args.torch_threads or "default",
        "cpu_count": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "max_tokens": args.max_tokens,
        "max_batch": args.max_batch,
        "window_ms": args.window_ms,
        "rounds": args.rounds,
        "steering": f"half the requests: random unit vector at layer {layer}, coeff in {COEFFS}",
        "levels": rows,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"steerlab serve: {args.model} on {report['device']} ({report['dtype']}, {report['torch_threads']} torch "
        f"threads, {report['cpu_count']} CPUs), max_tokens {args.max_tokens}, greedy; {report['steering']}"
    )
    print(
        f"load average before {report['loadavg_before']}, after {report['loadavg_after']}; "
        f"{args.rounds} interleaved round(s) per level"
    )
    header = (
        f"{'conc':>5} {'reqs':>5} {'req/s':>8} {'tok/s':>8} {'p50 s':>8} {'p95 s':>8} {'rows/batch':>10} {'x c=1':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['concurrency']:>5} {r['requests']:>5} {r['requests_per_s']:>8.2f} "
            f"{r['completion_tokens_per_s']:>8.1f} {r['p50_latency_s']:>8.2f} {r['p95_latency_s']:>8.2f} "
            f"{r['mean_rows_per_batch']:>10.2f} {r['speedup_req_per_s_vs_first']:>6.2f}"
        )


if __name__ == "__main__":
    main()
