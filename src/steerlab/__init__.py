"""steerlab: steering vectors for Hugging Face causal LMs.

Convention: ``layer L`` (0-based) is the output of decoder block L, i.e. ``hidden_states[L + 1]``.

The public face is lazy: ``import steerlab`` loads nothing heavy (no torch, no transformers); each
name below is imported from its subpackage on first use. Every job the CLI runs is one call here
(README, "Python API").
"""

from __future__ import annotations

import importlib
from typing import Any

from .version import __version__

# public name -> the module that defines it (relative to steerlab)
_FACE: dict[str, str] = {
    # errors
    "SteerlabError": "errors",
    # model
    "LoadedModel": "model.loading",
    "load_model": "model.loading",
    "wrap_model": "model.loading",
    "encode_chat": "model.chat",
    "render_prompt": "model.chat",
    # formats
    "Pair": "formats.pairs",
    "load_pairs": "formats.pairs",
    "builtin_pairs_path": "formats.pairs",
    "pairs_to_chat": "formats.conversations",
    "generic_prompts": "formats.prompts",
    "condition_examples": "formats.condition_examples",
    "Trait": "formats.traits",
    "list_traits": "formats.traits",
    "load_trait": "formats.traits",
    # activations
    "ChatSample": "activations.capture",
    "Reduction": "activations.capture",
    "capture": "activations.capture",
    "mean_activations": "activations.capture",
    # vectors
    "SteeringVector": "vectors.vector",
    "cosine": "vectors.vector",
    "random_cosine_baseline": "vectors.vector",
    "export_gguf": "vectors.gguf",
    "import_gguf": "vectors.gguf",
    # steering
    "ActivationSteerer": "steering.compat",
    "SteeringSpec": "steering.steerer",
    "steer": "steering.steerer",
    "generate": "steering.generation",
    "generate_batch": "steering.generation",
    "cap_threshold": "steering.calibration",
    "mean_residual_norms": "steering.calibration",
    "bake_direction": "steering.bake",
    # engines
    "Engine": "engines.base",
    "EngineConfig": "engines.base",
    "HfEngine": "engines.hf",
    "make_engine": "engines.factory",
    "Condition": "steering.conditions",
    "calibrate_condition": "steering.condition_threshold",
    "load_condition": "steering.condition_threshold",
    # fine-tuning
    "FinetuneConfig": "finetune.config",
    "FinetuneResult": "finetune.stage",
    "run_finetune": "finetune.training",
    "run_finetune_pairs": "finetune.training",
    # judge
    "Judge": "judge.base",
    "make_judge": "judge.base",
    "judge_trait": "judge.base",
    "judge_coherence": "judge.base",
    # extraction
    "MeanDifference": "extract.mean_difference",
    "extract_contrastive": "extract.contrastive",
    "extract_condition_vector": "extract.condition",
    "extract_model_diff": "extract.model_diff",
    "extract_model_diffs": "extract.model_diff",
    "pair_diff_samples": "extract.model_diff",
    "extract_position_diffs": "extract.positions",
    "attached_adapter": "model.adapters",
    "persona_vectors": "extract.persona",
    # evaluation
    "behaviour_margin": "evaluate.margin",
    "project": "evaluate.monitor",
    "compare_vectors": "evaluate.geometry",
    "split_half_reliability": "evaluate.geometry",
    "trait_matrix": "evaluate.geometry",
    "readout_vector": "evaluate.readout",
    "Evidence": "evaluate.evidence",
    "steering_evidence": "evaluate.evidence",
    # pipelines
    "SweepConfig": "pipelines.sweep",
    "run_sweep": "pipelines.sweep",
    "sweep_plan": "pipelines.sweep",
    "PersonaConfig": "pipelines.persona",
    "run_persona": "pipelines.persona",
    "PersonaTraitsConfig": "pipelines.persona_traits",
    "run_persona_traits": "pipelines.persona_traits",
    "NoEffectivePairsError": "pipelines.persona",
    "DiffStudyConfig": "pipelines.diff_study",
    "StudyConfig": "pipelines.study",
    "StudyResult": "pipelines.study",
    "DiffStudyResult": "pipelines.diff_study",
    "run_diff_study": "pipelines.diff_study",
    "TraitStudyConfig": "pipelines.trait_study",
    "run_trait_study": "pipelines.trait_study",
    "DemoSize": "pipelines.demo",
    "DemoResult": "pipelines.demo",
    "run_demo": "pipelines.demo",
    "CalibrationConfig": "pipelines.calibration",
    "CalibrationResult": "pipelines.calibration",
    "run_calibration": "pipelines.calibration",
    "load_calibration": "pipelines.calibration_auto",
    "ReadoutConfig": "pipelines.readouts",
    "write_readouts": "pipelines.readouts",
    # report
    "build_report": "report.html",
    # serving
    "ServeConfig": "serve.config",
    "create_app": "serve.app",
}

__all__ = ["__version__", *sorted(_FACE)]


def __getattr__(name: str) -> Any:
    module = _FACE.get(name)
    if module is None:
        raise AttributeError(f"module 'steerlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FACE))
