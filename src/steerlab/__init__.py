"""steerlab: steering vectors for Hugging Face causal LMs.

Convention: ``layer L`` (0-based) is the output of decoder block L, i.e. ``hidden_states[L + 1]``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .activations import ChatSample, Reduction, capture, mean_activations
from .chat import encode_chat, render_prompt
from .errors import SteerlabError
from .extract import extract_contrastive
from .finetune import FinetuneResult
from .generation import generate, generate_batch
from .geometry import compare_vectors, split_half_reliability, trait_matrix
from .gguf_vectors import export_gguf, import_gguf
from .judge import Judge, judge_coherence, judge_trait, make_judge
from .margin import behaviour_margin
from .model_diff import extract_model_diff, extract_model_diffs
from .models import LoadedModel, load_model, wrap_model
from .monitor import project
from .pairs import Pair, load_pairs
from .steering import ActivationSteerer, SteeringSpec, steer
from .traits import Trait, list_traits, load_trait
from .vectors import SteeringVector, cosine, random_cosine_baseline

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
