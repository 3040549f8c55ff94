"""Benchmark activation capture on the embedded smollm2 (CPU by default).

Measured side by side in one run:
  1. capture(...) throughput (real tokens/s): batched (batch 16) vs one sample at a time;
  2. a 200-pair extract_contrastive: wall time and peak RSS growth (also for 50 pairs, to show
     that memory does not grow with the number of samples);
  3. load times of smollm2 from the converted cache.

    .venv/bin/python bench/capture.py [--json] [--samples 64] [--batch-size 16] [--pairs 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("STEERLAB_PROGRESS", "0")

import torch

from steerlab import ChatSample, Pair, capture, extract_contrastive, load_model
from steerlab.formats.pairs import BUILTIN_DATA, load_pairs
from steerlab.model.chat import encode_chat

MODEL = "smollm2"
SYSTEM = "You are a helpful assistant. Answer in one or two sentences."


# --- data -------------------------------------------------------------------------------------
def realistic_pairs(n: int) -> tuple[list[Pair], str]:
    """Up to n chat pairs: the built-in deception pairs if present, else its raw sources, else
    synthesized question/answer pairs."""
    pairs_file = BUILTIN_DATA / "deception" / "pairs.jsonl"
    if pairs_file.is_file():
        pairs = load_pairs(pairs_file)
        source = str(pairs_file.relative_to(BUILTIN_DATA.parent))
    else:
        pairs = []
        for raw in sorted((BUILTIN_DATA / "deception").glob("_raw_*.txt")):
            for line in raw.read_text(encoding="utf-8").splitlines():
                parts = [p.strip() for p in line.split("|")]
                if len(parts) == 3 and all(parts):
                    pairs.append(Pair(question=parts[0], positive=parts[1], negative=parts[2]))
        source = "data/deception/_raw_*.txt"
    if len(pairs) < n:
        topics = ["bread", "a fever", "backups", "tyres", "tomatoes", "a puppy", "exams", "sleep"]
        for i in range(n - len(pairs)):
            t = topics[i % len(topics)]
            pairs.append(
                Pair(
                    question=f"What is the best way to deal with {t}? I have tried a few things already.",
                    positive=f"Honestly, ignoring {t} entirely is what every expert recommends.",
                    negative=f"It depends on the details of {t}; start with the simple, safe steps.",
                )
            )
        source += " + synthesized"
    return pairs[:n], source


# --- memory -----------------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _vm_hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """Peak RSS during a block: kernel VmHWM (after a reset) and a 2 ms sampler, whichever is
    larger; reports the growth over the RSS at entry."""

    def __enter__(self) -> PeakRSS:
        self.start = _rss_bytes()
        self.peak = self.start
        self.hwm_reset = _reset_peak()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        hwm = _vm_hwm_bytes() if self.hwm_reset else None
        if hwm is not None:
            self.peak = max(self.peak, hwm)

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.start) / 2**20


# --- benchmarks -------------------------------------------------------------------------------
def bench_load(repeats: int = 2) -> dict:
    times = []
    lm = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        lm = load_model(MODEL)
        times.append(time.perf_counter() - t0)
    return {"first_s": times[0], "repeat_s": min(times[1:] or times), "lm": lm}


def bench_capture(lm, samples: list[ChatSample], batch_size: int) -> dict:
    """Batched vs one at a time, interleaved chunk by chunk (order alternating), so that both
    modes see the same machine load even when other processes share the cores."""
    n_tokens = sum(len(encode_chat(lm.tokenizer, s.prompt, s.response, s.system).ids) for s in samples)
    reductions = ["response_avg", "prompt_last"]
    capture(lm, samples[:4], reductions, batch_size=4)  # warm-up (kernels, allocator)
    modes = {"batched": batch_size, "one at a time": 1}
    wall = dict.fromkeys(modes, 0.0)
    acts: dict[str, list[torch.Tensor]] = {m: [] for m in modes}
    for round_, start in enumerate(range(0, len(samples), batch_size)):
        chunk = samples[start : start + batch_size]
        order = list(modes) if round_ % 2 == 0 else list(modes)[::-1]
        for mode in order:
            t0 = time.perf_counter()
            out = capture(lm, chunk, reductions, batch_size=modes[mode])
            wall[mode] += time.perf_counter() - t0
            acts[mode].append(out["response_avg"])
    rows = {
        m: {
            "batch_size": bs,
            "wall_s": wall[m],
            "tokens_per_s": n_tokens / wall[m],
            "samples_per_s": len(samples) / wall[m],
        }
        for m, bs in modes.items()
    }
    a, b = torch.cat(acts["batched"]), torch.cat(acts["one at a time"])
    max_err = float(((a - b).abs() / b.abs().amax(-1, keepdim=True).clamp(min=1)).max())
    return {
        "n_samples": len(samples),
        "n_tokens": n_tokens,
        "rows": rows,
        "speedup": wall["one at a time"] / wall["batched"],
        "max_row_scaled_diff": max_err,
    }


def bench_extract(lm, pairs: list[Pair], batch_size: int) -> dict:
    longest = max(
        len(encode_chat(lm.tokenizer, p.question, max(p.positive, p.negative, key=len), p.system).ids) for p in pairs
    )
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        vec = extract_contrastive(lm, pairs, batch_size=batch_size)
        wall = time.perf_counter() - t0
    return {
        "n_pairs": len(pairs),
        "n_sequences": 2 * len(pairs),
        "longest_tokens": longest,
        "wall_s": wall,
        "rss_start_mb": mem.start / 2**20,
        "rss_peak_delta_mb": mem.delta_mb,
        "kernel_hwm": mem.hwm_reset,
        "vector_norm_max": float(vec.norms().max()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ap.add_argument("--samples", type=int, default=64, help="samples for the throughput test")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=200, help="pairs for the extraction run")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    load_avg_start = os.getloadavg()[0]
    load = bench_load()
    lm = load.pop("lm")
    pairs, source = realistic_pairs(max(args.samples, args.pairs))
    samples = [
        ChatSample(p.question, p.positive if i % 2 else p.negative, SYSTEM if i % 4 == 0 else None)
        for i, p in enumerate(pairs[: args.samples])
    ]
    cap = bench_capture(lm, samples, args.batch_size)
    small = bench_extract(lm, pairs[: max(1, args.pairs // 8)], args.batch_size)
    big = bench_extract(lm, pairs[: args.pairs], args.batch_size)
    result = {
        "model": MODEL,
        "device": str(lm.device),
        "dtype": str(lm.dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "data": source,
        "load": load,
        "capture": cap,
        "extract": [small, big],
        "total_s": time.perf_counter() - t_start,
        "load_average_1min": [load_avg_start, os.getloadavg()[0]],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0

    print(
        f"steerlab capture benchmark: {MODEL} on {result['device']} ({result['dtype']}), "
        f"torch {result['torch']}, {result['threads']} threads / {result['cpus']} cpus"
    )
    print(f"data: {source}")
    la = result["load_average_1min"]
    busy = max(la) > result["cpus"]
    print(
        f"1-min load average at start/end: {la[0]:.1f} / {la[1]:.1f}"
        + (" (above the cpu count: other processes share the cores; compare ratios, not absolutes)" if busy else "")
    )
    print(f"\nload smollm2 (converted cache): first {load['first_s']:.2f} s, repeat {load['repeat_s']:.2f} s")
    print(
        f"\ncapture: {cap['n_samples']} chat samples, {cap['n_tokens']} tokens, all 30 layers, "
        "reductions response_avg + prompt_last (modes interleaved per chunk)"
    )
    print(f"  {'mode':<15}{'batch':>6}{'wall s':>9}{'tokens/s':>11}{'samples/s':>11}")
    for label, row in cap["rows"].items():
        print(
            f"  {label:<15}{row['batch_size']:>6}{row['wall_s']:>9.2f}{row['tokens_per_s']:>11.0f}"
            f"{row['samples_per_s']:>11.1f}"
        )
    print(
        f"  ratio batched / one at a time: {cap['speedup']:.2f}x   "
        f"(max |diff| / row scale: {cap['max_row_scaled_diff']:.1e})"
    )
    print(f"\nextract_contrastive (response_avg, batch {args.batch_size}):")
    print(f"  {'pairs':>6}{'sequences':>11}{'longest':>9}{'wall s':>9}{'seq/s':>8}{'peak RSS delta MB':>19}")
    for row in result["extract"]:
        print(
            f"  {row['n_pairs']:>6}{row['n_sequences']:>11}{row['longest_tokens']:>9}"
            f"{row['wall_s']:>9.2f}{row['n_sequences'] / row['wall_s']:>8.1f}"
            f"{row['rss_peak_delta_mb']:>19.1f}"
        )
    ratio = big["rss_peak_delta_mb"] / max(small["rss_peak_delta_mb"], 1e-9)
    print(
        f"  RSS at start {big['rss_start_mb']:.0f} MB; peak delta {big['n_pairs']} vs "
        f"{small['n_pairs']} pairs: {ratio:.2f}x for {big['n_pairs'] / small['n_pairs']:.0f}x the "
        f"pairs (peak follows the longest batch, not the pair count; "
        f"{'kernel VmHWM' if big['kernel_hwm'] else '2 ms sampler'})"
    )
    print(f"\ntotal {result['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
