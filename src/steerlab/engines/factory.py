"""Build the engine a command or a pipeline asked for (:class:`~steerlab.engines.base.EngineConfig`)."""

from __future__ import annotations

from ..errors import SteerlabError
from ..model.loading import LoadedModel, load_model
from .base import Engine, EngineConfig
from .hf import HfEngine


def make_engine(
    config: EngineConfig | str,
    model: str,
    lm: LoadedModel | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    adapter: str | None = None,
    enable_lora: bool = False,
    seed: int = 0,
) -> Engine:
    """The engine of ``config`` (or its kind, ``"hf"`` / ``"vllm"``) on the model spec ``model``.

    ``hf`` runs on ``lm`` when given (a model the caller already loaded, e.g. to capture activations),
    else loads ``model`` with ``device``/``dtype``/``adapter``. ``vllm`` starts vLLM on ``model`` (with
    ``adapter`` on every request; ``enable_lora`` lets pipelines run fine-tuned rows as LoRA requests);
    it places the model itself, so ``device`` must be left unset (use ``CUDA_VISIBLE_DEVICES``).

    Raises SteerlabError for an unknown engine, a model that cannot load, or vLLM missing or unable
    to steer.
    """
    config = EngineConfig(kind=config) if isinstance(config, str) else config
    if config.kind == "hf":
        return HfEngine(lm if lm is not None else load_model(model, device=device, dtype=dtype, adapter=adapter))
    if device not in (None, "auto"):
        raise SteerlabError(
            f"--device {device}: the vllm engine places the model itself (choose GPUs with CUDA_VISIBLE_DEVICES)"
        )
    from .vllm.engine import VllmEngine

    if lm is not None and adapter is None:
        adapter = lm.adapter
    return VllmEngine(model, config, dtype=dtype, adapter=adapter, enable_lora=enable_lora, seed=seed)
