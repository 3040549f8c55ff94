"""`steerlab demo`: the whole study on the embedded default model (offline), ending in report.html."""

from __future__ import annotations

from pathlib import Path

import typer

from ..pipelines.demo import DEMO_TRAITS, SIZES, run_demo
from ..progress import console, results
from ..report.html import build_report
from .app import app
from .diff_study import print_study
from .options import (
    EngineOpt,
    GpuMemoryOpt,
    JudgeUrlOpt,
    MaxModelLenOpt,
    PipelineParallelOpt,
    TensorParallelOpt,
    engine_config,
)
from .study_tables import print_summary_parts


@app.command()
def demo(
    out: Path = typer.Option(Path("out/demo"), "--out", "-o", help="Run directory (rerun to resume)."),
    model: str = typer.Option("smollm2", "--model", "-m", help="Model spec (default: the embedded smollm2)."),
    judge: str = typer.Option("local", "--judge", "-j", help="local (embedded smollm2) | local:MODEL | openai:MODEL."),
    judge_base_url: str = JudgeUrlOpt,
    size: str = typer.Option(
        "small", "--size", help=f"{' | '.join(SIZES)}: ci (tests), small (≤ 10 min on CPU), full (paper scale, GPU)."
    ),
    traits: list[str] = typer.Option(
        list(DEMO_TRAITS),
        "--traits",
        "--trait",
        "-t",
        help="Built-in traits of the multi-trait persona part (repeat -t; 'all').",
    ),
    controls: int = typer.Option(
        None,
        "--controls",
        min=0,
        help="Random same-norm directions per steering condition (default 8, 19 at --size full: enough for "
        "p = 0.05; 0: off). With K of them p cannot go below 1/(K+1).",
    ),
    engine: str = EngineOpt,
    tensor_parallel_size: int = TensorParallelOpt,
    pipeline_parallel_size: int = PipelineParallelOpt,
    gpu_memory_utilization: float = GpuMemoryOpt,
    max_model_len: int = MaxModelLenOpt,
) -> None:
    """Contrastive vs fine-tuning directions on the built-in deception data, steering study, persona
    pipeline and monitoring; writes DIR/summary.json and DIR/report.html.

    Every steering effect comes with random same-norm directions (--controls), a bootstrap interval,
    the per-pair spread and the prompting baseline; the persona part runs the multi-trait study
    (evil, sycophantic, hallucinating).

    GPU, real model:

        steerlab demo -m Qwen/Qwen2.5-7B-Instruct -j openai:gpt-4.1-mini --size full -o out/qwen
    """
    engines = engine_config(engine, tensor_parallel_size, pipeline_parallel_size, gpu_memory_utilization, max_model_len)
    result = run_demo(out, model, judge, size, traits, judge_base_url, controls, engine=engines)
    print_study(result.study, result.comparison)
    print_summary_parts({"blends": result.summary.get("blends"), "objectives": result.summary.get("objectives")})
    for line in result.reading:
        results.print(f"- {line}", markup=False, highlight=False)
    report_path, _ = build_report(out)
    console.print(f"report: {report_path}", markup=False, highlight=False)
