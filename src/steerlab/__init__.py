"""steerlab: steering vectors for Hugging Face causal LMs.

Convention: ``layer L`` (0-based) is the output of decoder block L, i.e. ``hidden_states[L + 1]``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .activations.capture import ChatSample, Reduction, capture, mean_activations
from .errors import SteerlabError
from .evaluate.geometry import compare_vectors, split_half_reliability, trait_matrix
from .evaluate.margin import behaviour_margin
from .evaluate.monitor import project
from .extract.contrastive import extract_contrastive
from .extract.model_diff import extract_model_diff, extract_model_diffs
from .finetune.training import FinetuneResult
from .formats.pairs import Pair, load_pairs
from .formats.traits import Trait, list_traits, load_trait
from .judge import Judge, judge_coherence, judge_trait, make_judge
from .model.chat import encode_chat, render_prompt
from .model.loading import LoadedModel, load_model, wrap_model
from .steering.generation import generate, generate_batch
from .steering.steerer import ActivationSteerer, SteeringSpec, steer
from .vectors.gguf import export_gguf, import_gguf
from .vectors.vector import SteeringVector, cosine, random_cosine_baseline

__all__ = [
    "ActivationSteerer",
    "ChatSample",
    "FinetuneResult",
    "Judge",
    "LoadedModel",
    "Pair",
    "Reduction",
    "SteeringSpec",
    "SteeringVector",
    "SteerlabError",
    "Trait",
    "__version__",
    "behaviour_margin",
    "capture",
    "compare_vectors",
    "cosine",
    "encode_chat",
    "export_gguf",
    "extract_contrastive",
    "extract_model_diff",
    "extract_model_diffs",
    "generate",
    "generate_batch",
    "import_gguf",
    "judge_coherence",
    "judge_trait",
    "list_traits",
    "load_model",
    "load_pairs",
    "load_trait",
    "make_judge",
    "mean_activations",
    "project",
    "random_cosine_baseline",
    "render_prompt",
    "split_half_reliability",
    "steer",
    "trait_matrix",
    "wrap_model",
]
