"""The engine interface: the model work pipelines ask for, whichever engine runs it.

Pipelines need two things of a model besides activation capture: **steered generation** (prompts,
per-row steering specs, sampling settings, top log-probabilities) and **teacher-forced answer
log-likelihoods under per-row steering** (the behaviour margin and everything built on it). Both go
through an :class:`Engine`; two implement it:

- ``hf`` (:class:`steerlab.engines.hf.HfEngine`): transformers with steerlab's own forward hooks, shared
  prompt caches and batching — the reference and the default;
- ``vllm`` (:class:`steerlab.engines.vllm.engine.VllmEngine`): vLLM's continuous batching, tensor and
  pipeline parallelism, with steering applied inside its workers.

The two agree (docs/design.md §13): the same block-L output (``hidden_states[L + 1]``), the same steering
at the same positions, greedy generations equal on the same machine and dtype except for float ties,
margins equal to 1e-3 nats/token. Users keep writing :class:`~steerlab.steering.steerer.SteeringSpec`:
an engine resolves specs on its model (layers, widths, scales) before any work and raises
SteerlabError for specs that do not fit.

An engine also measures the reference statistics that some specs need (mean residual norms for scale
``relative``, projections for cap percentiles, prompt activations for condition gates), and runs a
PEFT adapter's fine-tuned model beside its base (:meth:`Engine.adapter`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..activations.capture import ChatSample
from ..errors import SteerlabError
from ..model.chat import Prompt
from ..model.layers import check_layer_index
from ..steering.generation import Generation
from ..steering.steerer import SteeringSpec

ENGINES = ("hf", "vllm")


@dataclass(frozen=True)
class EngineConfig:
    """Which engine runs generation and scoring, and its settings (the CLI's ``--engine`` flags).

    - ``kind``: ``hf`` (default, the reference) or ``vllm``.
    - ``tensor_parallel_size``, ``pipeline_parallel_size``: vLLM's parallelism (GPUs, or CPU processes).
    - ``gpu_memory_utilization``: vLLM's fraction of device memory for weights and KV cache.
    - ``max_model_len``: vLLM's longest sequence, tokens (None: the model's).
    - ``max_lora_rank``: largest LoRA rank an adapter may have on vLLM (adapters run as LoRA requests).
    - ``options``: further keyword arguments for ``vllm.LLM`` (e.g. ``{"swap_space": 4}``).

    Raises SteerlabError for an unknown kind or settings out of range.
    """

    kind: str = "hf"
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    max_model_len: int | None = None
    max_lora_rank: int = 64
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ENGINES:
            raise SteerlabError(f"--engine {self.kind!r}: expected one of {', '.join(ENGINES)}")
        for flag, value in (
            ("--tensor-parallel-size", self.tensor_parallel_size),
            ("--pipeline-parallel-size", self.pipeline_parallel_size),
            ("--max-lora-rank", self.max_lora_rank),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SteerlabError(f"{flag} {value!r}: expected an integer of at least 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise SteerlabError(
                f"--gpu-memory-utilization {self.gpu_memory_utilization!r}: expected a fraction in (0, 1]"
            )
        if self.max_model_len is not None and self.max_model_len < 2:
            raise SteerlabError(f"--max-model-len {self.max_model_len!r}: expected at least 2 tokens")
        if self.kind == "hf" and (self.tensor_parallel_size > 1 or self.pipeline_parallel_size > 1):
            raise SteerlabError(
                "--tensor-parallel-size/--pipeline-parallel-size: for --engine vllm (the hf engine spreads a "
                "large model over GPUs with device_map='auto')"
            )


class Engine(ABC):
    """Steered generation and teacher-forced scoring on one model (see the module docstring).

    Model facts: ``name`` (the model spec), ``n_layers`` (decoder blocks; layer L = output of block L),
    ``d_model`` (residual width), ``tokenizer`` (the model's Hugging Face tokenizer; prompts are
    rendered through its chat template host-side, the same way on every engine). An engine is a
    context manager: leaving it (or :meth:`close`) frees what it holds.
    """

    kind: ClassVar[str]
    name: str
    n_layers: int
    d_model: int
    tokenizer: Any

    def check_layer(self, layer: int, flag: str = "--layer") -> int:
        """Validate a layer index (negative counts from the end); returns it non-negative.
        Raises SteerlabError naming ``flag`` when out of range."""
        return check_layer_index(layer, self.n_layers, flag, self.name)

    def fingerprint(self) -> dict[str, Any]:
        """What of the engine a resumable stage's config hash must include: ``{}`` for the reference
        engine (so runs made before engines existed stay valid), the engine and its settings otherwise."""
        return {}

    @abstractmethod
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
        """One completion per prompt under ``steering``, in prompt order.

        As :func:`steerlab.steering.generation.generate_batch`: prompts are rendered through the chat
        template (with ``system``; ``chat=False`` takes string prompts as raw text); a spec's per-row
        ``coeff`` and ``rows`` are given per prompt (``[len(prompts)]``), so sweeps, conditions and
        random controls are rows of one call; ``temperature`` 0 is greedy; ``top_logprobs`` k adds
        each generated token's log-probability and the k most likely tokens (nats); ``stop`` strings
        cut the text; ``reference_norms`` (``[n_layers]``) is needed for scale ``relative``;
        ``batch_size`` bounds rows per forward where the engine batches itself. A spec with a
        ``condition`` (CAST) acts only on the prompts that pass it, decided once per prompt from
        :meth:`prompt_activations` before any steering (:func:`steerlab.steering.conditions.resolve_conditions`).

        Raises SteerlabError before any generation for no prompts, bad sampling settings, per-row
        values whose count is not ``len(prompts)``, or steering that does not fit the model.
        """

    @abstractmethod
    def response_logprobs(
        self,
        samples: Sequence[ChatSample],
        steering: Sequence[SteeringSpec] = (),
        row_coeffs: Sequence[float] | None = None,
        batch_size: int = 16,
        reference_norms: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean log p(response token | prefix) per sample, teacher-forced under steering: ``[n_samples]``
        float64, nats/token.

        With ``row_coeffs`` (one per sample) every spec uses that sample's coefficient; a spec's own
        per-row coefficients and ``rows`` are honoured, so conditions are rows of one stream; a spec's
        ``condition`` (CAST) gates it on each sample's prompt (without the response). Steering
        acts where generation would: ``response`` positions are the last prompt token and every
        response token, ``prompt`` the prompt tokens. Raises SteerlabError for no samples, an empty
        prompt or response, or steering that does not fit the model.
        """

    @abstractmethod
    def mean_residual_norms(self, prompts: Sequence[Prompt | ChatSample], batch_size: int = 16) -> torch.Tensor:
        """Mean ‖h‖ over every token of the prompts at each layer, unsteered: ``[n_layers]`` float32
        (activation units), the reference of scale ``relative``. Raises SteerlabError for no prompts."""

    @abstractmethod
    def layer_projections(
        self,
        prompts: Sequence[Prompt | ChatSample],
        directions: Mapping[int, torch.Tensor],
        batch_size: int = 16,
    ) -> dict[int, torch.Tensor]:
        """h·v̂ at every token of the prompts, unsteered, for each ``{layer: direction [d_model]}``:
        ``{layer: [n_tokens]}`` float32 (activation units); cap percentiles are read from them."""

    @abstractmethod
    def prompt_activations(
        self,
        prompts: Sequence[Prompt | ChatSample],
        layers: Sequence[int],
        reduction: str = "prompt_avg",
        batch_size: int = 16,
    ) -> torch.Tensor:
        """Unsteered prompt activations ``[n_prompts, len(layers), d_model]`` float32: the mean over the
        prompt's tokens (``prompt_avg``) or its last token (``prompt_last``) of the output of block L."""

    @abstractmethod
    def adapter(self, adapter_dir: str) -> AbstractContextManager[Engine]:
        """A context yielding the engine of this model with a PEFT adapter applied (the fine-tuned
        model); inside it this engine still runs the true base model. Raises SteerlabError for an
        adapter the engine cannot apply."""

    def close(self) -> None:  # noqa: B027 - engines without resources need no cleanup
        """Free what the engine holds (processes, device memory); idempotent."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
