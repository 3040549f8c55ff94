"""steerlab: steering vectors for Hugging Face causal LMs.

Convention: ``layer L`` (0-based) is the output of decoder block L, i.e. ``hidden_states[L + 1]``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .activations import ChatSample, Reduction, capture, mean_activations
from .chat import encode_chat, render_prompt
from .errors import SteerlabError
from .extract import extract_contrastive
from .gguf_vectors import export_gguf, import_gguf
from .models import LoadedModel, load_model, wrap_model
from .pairs import Pair, load_pairs
from .vectors import SteeringVector, cosine, random_cosine_baseline

__all__ = [
    "ChatSample",
    "LoadedModel",
    "Pair",
    "Reduction",
    "SteeringVector",
    "SteerlabError",
    "__version__",
    "capture",
    "cosine",
    "encode_chat",
    "export_gguf",
    "extract_contrastive",
    "import_gguf",
    "load_model",
    "load_pairs",
    "mean_activations",
    "random_cosine_baseline",
    "render_prompt",
    "wrap_model",
]
