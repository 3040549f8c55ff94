"""steerlab inside vLLM's workers: a worker extension (``worker_extension_cls``) called by ``collective_rpc``.

vLLM mixes :class:`SteerlabWorker` into its Worker class in every worker process (every tensor- and
pipeline-parallel rank); the engine (:mod:`steerlab.engines.vllm.engine`) calls its methods by name:

- ``steerlab_install()`` once after start-up: checks that module hooks will run (the V1 model runner,
  eager mode: no compiled graph, no CUDA graph) and raises otherwise; wraps the runner's
  ``_model_forward`` (called once per real forward, after the batch is prepared) to build the step plan;
  puts one forward hook on every decoder layer this rank holds (none on ``PPMissingLayer``).
- ``steerlab_register(id, bytes)``: a direction ``[d_model]`` (float32 bytes), kept on the device.
- ``steerlab_fetch(keys)``: the captures of finished requests (bytes of ``torch.save``), then dropped.
- ``steerlab_status()``: what is installed, and counters (forwards planned, hook calls that steered).

**The step plan** (one per forward, on the CPU, from the runner's batch state): request i of the batch
owns rows ``[query_start_loc[i], query_start_loc[i+1])`` of the flattened ``[num_tokens, d_model]``
hidden states, and its token j sits at absolute position ``num_computed_tokens[i] + j`` — the same
positions vLLM computes — so prompt / response positions are right under chunked prefill, preemption
(recomputed tokens keep their positions) and prefix-cache hits (cached tokens never reach the model).
Each request's steering is read from ``sampling_params.extra_args`` (:mod:`.protocol`) once and kept
until the request leaves the batch. Per layer the plan holds groups of tokens that share an
intervention (vector, operator, scale, thresholds) with their per-token coefficients, in the order
each row applies them.

**The output of block L.** vLLM's Llama-style decoder layers return ``(out0, out1)``: the MLP output
and the residual before it; the block's output — HF's ``hidden_states[L + 1]`` — is their sum, which
the next layer forms first. Steering adds its delta (:func:`steerlab.steering.operators.operator_delta`,
computed on the sum in float32) to ``out0`` only; ``ablate`` and ``cap`` project the sum. Layers that
return one tensor are steered on it. New tensors are returned (never written in place: the next
layer's fused kernels may reuse the inputs). Every tensor-parallel rank holds the same replicated
residual stream and applies the same delta; under pipeline parallelism a rank steers only the layers
it holds, while every rank sees every request's plan.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ...steering.operators import operator_delta
from .protocol import parse_request


class SteerlabRefusal(RuntimeError):
    """Raised in a worker when steering could not run as asked (the engine shows it as a SteerlabError)."""


@dataclass
class _Group:
    """Tokens of one intervention at one layer: flat row indices, per-token coefficients, the operator."""

    order: int
    vid: str
    op: str
    scale: str
    ref: float | None
    ceil: float | None
    floor: float | None
    rows: list[int] = field(default_factory=list)
    coeffs: list[float] = field(default_factory=list)


@dataclass
class _Plan:
    steer: dict[int, list[tuple[_Group, torch.Tensor, torch.Tensor]]]
    capture: dict[int, list[tuple[str, np.ndarray, torch.Tensor]]]  # layer -> (key, positions, rows)


@dataclass
class _State:
    layers: dict[int, torch.nn.Module]
    n_layers: int
    device: torch.device
    dtype: torch.dtype
    vectors: dict[str, torch.Tensor] = field(default_factory=dict)
    requests: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    captures: dict[str, dict[str, Any]] = field(default_factory=dict)
    plan: _Plan | None = None
    forwards: int = 0
    steered_calls: int = 0
    handles: list[Any] = field(default_factory=list)


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers of a vLLM model (``model.layers``, ``language_model.model.layers``, ...).
    Raises SteerlabRefusal naming what was seen when none is found."""
    for path in ("model.layers", "language_model.model.layers", "model.language_model.layers", "transformer.h"):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise SteerlabRefusal(
        f"steerlab: no decoder layers found in vLLM's {type(model).__name__} (looked for model.layers, "
        "language_model.model.layers, model.language_model.layers, transformer.h)"
    )


def _hidden(output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(output, torch.Tensor):
        return output, None
    if isinstance(output, tuple) and len(output) == 2 and all(isinstance(t, torch.Tensor) for t in output):
        return output[0], output[1]
    raise SteerlabRefusal(
        f"steerlab: a decoder layer returned {type(output).__name__} of "
        f"{[type(t).__name__ for t in output] if isinstance(output, tuple) else '?'}; expected a tensor or "
        "(hidden_states, residual)"
    )


class SteerlabWorker:
    """Methods vLLM adds to its Worker (``self`` is the Worker: ``self.model_runner``, ``self.rank``)."""

    # --- set-up ------------------------------------------------------------------------------------

    def steerlab_install(self) -> dict[str, Any]:
        """Check that hooks will run and install them (idempotent); returns :meth:`steerlab_status`."""
        if getattr(self, "_steerlab", None) is not None:
            return self.steerlab_status()
        runner = self.model_runner
        problems = _runner_problems(self, runner)
        if problems:
            raise SteerlabRefusal("; ".join(problems))
        from vllm.model_executor.models.utils import PPMissingLayer

        model = runner.get_model() if hasattr(runner, "get_model") else runner.model
        all_layers = decoder_layers(model)
        local = {i: layer for i, layer in enumerate(all_layers) if not isinstance(layer, PPMissingLayer)}
        param = next(model.parameters())
        state = _State(local, len(all_layers), param.device, param.dtype)
        self._steerlab = state
        original = runner._model_forward

        def model_forward(*args: Any, **kwargs: Any) -> Any:
            state.plan = _build_plan(state, runner)
            state.forwards += 1
            try:
                return original(*args, **kwargs)
            finally:
                state.plan = None

        runner._model_forward = model_forward  # this runner instance only; vLLM itself is not patched
        _score_prompts_without_lora_logits(runner, model)
        _allocate_pipeline_buffers(runner)
        for index, layer in local.items():
            state.handles.append(layer.register_forward_hook(_layer_hook(state, index)))
        return self.steerlab_status()

    def steerlab_status(self) -> dict[str, Any]:
        """What this rank holds: runner, ranks, layers hooked, vectors, counters."""
        state = getattr(self, "_steerlab", None)
        parallel = self.parallel_config
        return {
            "runner": type(self.model_runner).__name__,
            "rank": int(self.rank),
            "tp": int(parallel.tensor_parallel_size),
            "pp": int(parallel.pipeline_parallel_size),
            "installed": state is not None,
            "layers": sorted(state.layers) if state else [],
            "n_layers": state.n_layers if state else None,
            "d_model": int(self.model_runner.model_config.get_hidden_size()),
            "vectors": len(state.vectors) if state else 0,
            "forwards": state.forwards if state else 0,
            "steered_calls": state.steered_calls if state else 0,
            "pending_captures": len(state.captures) if state else 0,
        }

    def steerlab_register(self, vid: str, payload: bytes) -> int:
        """Keep direction ``vid`` (little-endian float32 ``[d_model]``) on this rank's device, float32."""
        state = self._steerlab
        if vid not in state.vectors:
            values = torch.from_numpy(np.frombuffer(payload, dtype="<f4").copy())
            state.vectors[vid] = values.to(state.device)
        return len(state.vectors)

    def steerlab_fetch(self, keys: list[str]) -> bytes:
        """The captures named ``keys`` recorded on this rank (``torch.save`` bytes of ``{key: {layer:
        {...}}}``), removed from the rank."""
        state = self._steerlab
        out = {key: state.captures.pop(key) for key in keys if key in state.captures}
        buffer = io.BytesIO()
        torch.save(out, buffer)
        return buffer.getvalue()


def _score_prompts_without_lora_logits(runner: Any, model: torch.nn.Module) -> None:
    """With LoRA enabled, vLLM 0.32 computes prompt log-probabilities through its LoRA logits processor
    with the sampling step's LoRA mapping (one row per request), which breaks on the prompt's many rows
    (vllm-project/vllm#16668: an einsum shape error kills the engine). Adapters that steerlab runs never
    train the unembedding (:meth:`steerlab.engines.vllm.engine.VllmEngine.adapter` refuses those), so the
    LoRA logits processor adds nothing: prompt log-probabilities run through its base layer instead, on
    this runner instance only."""
    processor = getattr(model, "logits_processor", None)
    base = getattr(processor, "base_layer", None)
    original = getattr(runner, "_get_prompt_logprobs_dict", None)
    if base is None or original is None:
        return

    def prompt_logprobs(*args: Any, **kwargs: Any) -> Any:
        model.logits_processor = base
        try:
            return original(*args, **kwargs)
        finally:
            model.logits_processor = processor

    runner._get_prompt_logprobs_dict = prompt_logprobs


def _allocate_pipeline_buffers(runner: Any) -> None:
    """A pipeline stage after the first receives the previous stage's hidden states into a buffer the
    runner allocates in its warm-up pass; vLLM 0.32 skips that pass on CPU in eager mode, so the first
    request fails (``assert self.intermediate_tensors is not None``) even without steerlab. Allocate it
    here, as the warm-up would (same shapes, dtype and device), on this runner instance only."""
    from vllm.distributed.parallel_state import get_pp_group

    if get_pp_group().is_first_rank or getattr(runner, "intermediate_tensors", None) is not None:
        return
    runner.intermediate_tensors = runner.model.make_empty_intermediate_tensors(
        batch_size=runner.max_num_tokens, dtype=runner.model_config.dtype, device=runner.device
    )


def _runner_problems(worker: Any, runner: Any) -> list[str]:
    """Why module hooks would not run (or could not be mapped to requests) on this runner."""
    from vllm.config import CompilationMode

    problems = []
    config = worker.vllm_config
    if getattr(config, "use_v2_model_runner", False):
        problems.append("the V2 model runner is active (set VLLM_USE_V2_MODEL_RUNNER=0)")
    compilation = config.compilation_config
    if compilation.mode != CompilationMode.NONE:
        problems.append(f"the model is compiled (compilation mode {compilation.mode.name}; use enforce_eager=True)")
    graphs = getattr(compilation, "cudagraph_mode", None)
    if graphs is not None and getattr(graphs, "name", str(graphs)) != "NONE":
        problems.append(f"CUDA graphs are captured (cudagraph_mode {graphs}; use enforce_eager=True)")
    for attribute in ("input_batch", "query_start_loc", "requests", "_model_forward"):
        if not hasattr(runner, attribute):
            problems.append(f"the model runner {type(runner).__name__} has no {attribute}")
    if getattr(config, "speculative_config", None) is not None:
        problems.append("speculative decoding is not supported with steering")
    return problems


def _build_plan(state: _State, runner: Any) -> _Plan | None:
    """The step plan of the forward about to run (module docstring), or None when nothing is steered
    or captured. Raises SteerlabRefusal for a malformed request or an unregistered vector."""
    batch = runner.input_batch
    n = batch.num_reqs
    if n == 0:
        return None
    # forget requests that have left the batch
    live = runner.requests
    for rid in [rid for rid in state.requests if rid not in live]:
        del state.requests[rid]
    starts = runner.query_start_loc.np[: n + 1]
    computed = batch.num_computed_tokens_cpu[:n]
    groups: dict[tuple, _Group] = {}
    captures: dict[int, list[tuple[str, np.ndarray, list[int]]]] = {}
    for i, rid in enumerate(batch.req_ids[:n]):
        if rid not in state.requests:
            request = live[rid]
            params = request.sampling_params
            try:
                state.requests[rid] = parse_request(params.extra_args if params is not None else None)
            except (ValueError, TypeError) as exc:
                raise SteerlabRefusal(f"steerlab: request {rid}: {exc}") from None
        parsed = state.requests[rid]
        begin, end = int(starts[i]), int(starts[i + 1])
        if parsed is None or end <= begin:
            continue
        positions = int(computed[i]) + np.arange(end - begin)
        n_prompt = live[rid].num_prompt_tokens
        order: dict[int, int] = {}
        for item in parsed["steer"]:
            layer = int(item["l"])
            if layer not in state.layers:
                if not 0 <= layer < state.n_layers:
                    raise SteerlabRefusal(
                        f"steerlab: request {rid}: layer {layer} out of range 0..{state.n_layers - 1}"
                    )
                continue  # another pipeline stage holds it
            if item["v"] not in state.vectors:
                raise SteerlabRefusal(f"steerlab: request {rid}: vector {item['v']} was never registered")
            prompt_len = n_prompt if item.get("rs") is None else int(item["rs"])
            if item["pos"] == "all":
                chosen = np.arange(end - begin)
            elif item["pos"] == "prompt":
                chosen = np.nonzero(positions < prompt_len)[0]
            else:
                chosen = np.nonzero(positions >= prompt_len - 1)[0]
            k = order[layer] = order.get(layer, -1) + 1
            if not len(chosen):
                continue
            key = (
                layer,
                k,
                item["v"],
                item["op"],
                item.get("sc", "raw"),
                item.get("ref"),
                item.get("ceil"),
                item.get("floor"),
            )
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group(k, *key[2:])
            group.rows.extend((begin + chosen).tolist())
            group.coeffs.extend([float(item.get("c", 1.0))] * len(chosen))
        capture = parsed.get("capture")
        if capture:
            state.captures.setdefault(capture["key"], {"P": int(capture["P"]), "layers": {}})
            for layer in capture["layers"]:
                if int(layer) in state.layers:
                    captures.setdefault(int(layer), []).append((rid, positions, list(range(begin, end)), capture))
    if not groups and not captures:
        return None
    steer: dict[int, list[tuple[_Group, torch.Tensor, torch.Tensor]]] = {}
    for key, group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        rows = torch.tensor(group.rows, dtype=torch.long).to(state.device, non_blocking=True)
        coeffs = torch.tensor(group.coeffs, dtype=torch.float32).to(state.device, non_blocking=True)
        steer.setdefault(key[0], []).append((group, rows, coeffs))
    capture_plan = {
        layer: [(c["key"], pos, torch.tensor(rows, dtype=torch.long), c) for _, pos, rows, c in entries]
        for layer, entries in captures.items()
    }
    return _Plan(steer, capture_plan)


def _direction(state: _State, group: _Group) -> torch.Tensor:
    v = state.vectors[group.vid]
    if group.op == "add" and group.scale == "raw":
        return v
    unit = v / v.norm()
    if group.op == "add" and group.scale == "relative":
        return unit * float(group.ref)
    return unit


def _layer_hook(state: _State, index: int):
    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
        plan = state.plan
        if plan is None or (index not in plan.steer and index not in plan.capture):
            return None
        out0, out1 = _hidden(output)
        for key, positions, rows, capture in plan.capture.get(index, ()):
            if capture.get("pre"):  # the block's output before steering, to compare with after
                _record(state, key, index, positions, rows, out0, out1, capture, "pre")
        for group, rows, coeffs in plan.steer.get(index, ()):
            h = out0[rows].float() if out1 is None else out0[rows].float() + out1[rows].float()
            delta = operator_delta(h, _direction(state, group), coeffs[:, None], group.op, group.ceil, group.floor)
            out0 = out0.index_add(0, rows, delta.to(out0.dtype))
            state.steered_calls += 1
        for key, positions, rows, capture in plan.capture.get(index, ()):
            _record(state, key, index, positions, rows, out0, out1, capture)
        if index in plan.steer:
            return out0 if out1 is None else (out0, out1)
        return None

    return hook


def _record(
    state: _State,
    key: str,
    layer: int,
    positions: np.ndarray,
    rows: torch.Tensor,
    out0: torch.Tensor,
    out1: torch.Tensor | None,
    capture: dict[str, Any],
    when: str = "post",
) -> None:
    """Add one forward's tokens of a capture request to its statistics (see protocol.capture_request);
    ``when="pre"`` records the block's output before this layer's steering into ``pre`` only."""
    rows = rows.to(out0.device)
    h = (out0[rows].float() if out1 is None else out0[rows].float() + out1[rows].float()).cpu()
    entry = state.captures[key]["layers"].setdefault(
        layer,
        {
            "sum": torch.zeros(h.shape[-1], dtype=torch.float64),
            "count": 0,
            "norm_sum": 0.0,
            "last": None,
            "proj": [[] for _ in capture["dirs"]],
            "full": {},
            "pre": {},
            "forwards": 0,
        },
    )
    if when == "pre":
        for p, row in zip(positions.tolist(), h, strict=True):
            entry["pre"][int(p)] = row.clone()
        return
    entry["forwards"] += 1
    prompt_len = int(capture["P"])
    in_prompt = torch.from_numpy(positions < prompt_len)
    hp = h[in_prompt]
    entry["sum"] += hp.double().sum(0)
    entry["count"] += int(in_prompt.sum())
    entry["norm_sum"] += float(hp.double().norm(dim=-1).sum())
    last = np.nonzero(positions == prompt_len - 1)[0]
    if len(last):
        entry["last"] = h[int(last[0])].clone()
    for j, vid in enumerate(capture["dirs"]):
        v = state.vectors[vid].float().cpu()
        entry["proj"][j].extend((hp @ (v / v.norm())).tolist())
    if capture.get("full"):
        for p, row in zip(positions.tolist(), h, strict=True):
            entry["full"][int(p)] = row.clone()
