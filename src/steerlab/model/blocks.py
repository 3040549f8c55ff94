"""Finding the decoder blocks of a causal LM.

Convention used everywhere in steerlab: ``layer L`` (0-based) is the **output of decoder block L**,
i.e. ``hidden_states[L + 1]`` of ``output_hidden_states`` (for the last block, transformers applies
the final norm to ``hidden_states[-1]``; steerlab's layer ``n_layers - 1`` is the raw block output).
"""

from __future__ import annotations

from torch import nn

from ..errors import SteerlabError

# Dotted paths (relative to the unwrapped causal-LM module) tried in order.
KNOWN_BLOCK_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Qwen2/3, Mistral, Gemma 2/3 text, Phi-3
    "model.language_model.layers",  # Gemma 3 multimodal, newer VLM wrappers
    "language_model.model.layers",
    "model.text_model.layers",
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
    "layers",
)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip PEFT wrappers so block paths are the same with and without an adapter."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _get_path(root: nn.Module, path: str) -> nn.Module | None:
    module: object = root
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module if isinstance(module, nn.Module) else None


def find_decoder_blocks(model: nn.Module, path: str | None = None) -> tuple[nn.ModuleList, str]:
    """Return ``(blocks, dotted_path)`` for the model's decoder blocks.

    ``path`` overrides discovery (e.g. ``"model.layers"``). Raises SteerlabError naming the module
    lists seen when nothing matches.
    """
    root = unwrap_model(model)
    candidates = (path,) if path else KNOWN_BLOCK_PATHS
    for candidate in candidates:
        module = _get_path(root, candidate)
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return module, candidate
    seen = [name for name, mod in root.named_modules() if isinstance(mod, nn.ModuleList)]
    if path:
        raise SteerlabError(
            f"--blocks-path {path!r}: no non-empty ModuleList at that path in "
            f"{type(root).__name__}. Module lists seen: {', '.join(seen) or 'none'}."
        )
    raise SteerlabError(
        f"cannot find the decoder blocks of {type(root).__name__}: tried "
        f"{', '.join(KNOWN_BLOCK_PATHS)}. Module lists seen: {', '.join(seen) or 'none'}. "
        "Pass the dotted path of the block list (blocks_path=... / --blocks-path)."
    )


# Names of the norm applied to the last block's output before the unembedding, looked up beside the
# block list (Llama/Qwen/Mistral/Gemma ``model.norm``, GPT-2 ``transformer.ln_f``, GPT-NeoX
# ``gpt_neox.final_layer_norm``, OPT ``model.decoder.final_layer_norm``, Phi ``final_layernorm``).
FINAL_NORM_NAMES: tuple[str, ...] = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f")


def find_final_norm(model: nn.Module, blocks_path: str) -> tuple[nn.Module, str]:
    """Return ``(module, dotted_path)`` of the final norm: the module that normalises the last
    block's output before the unembedding (``lm_head``), found beside the block list at
    ``blocks_path`` under one of :data:`FINAL_NORM_NAMES`.

    Raises SteerlabError naming the children seen beside the blocks when none is there.
    """
    root = unwrap_model(model)
    parent_path = blocks_path.rpartition(".")[0]
    parent = _get_path(root, parent_path) if parent_path else root
    for name in FINAL_NORM_NAMES:
        module = getattr(parent, name, None) if parent is not None else None
        if isinstance(module, nn.Module):
            return module, f"{parent_path}.{name}" if parent_path else name
    seen = [name for name, _ in parent.named_children()] if parent is not None else []
    raise SteerlabError(
        f"cannot find the final norm of {type(root).__name__}: looked for {', '.join(FINAL_NORM_NAMES)} "
        f"beside the blocks at {blocks_path!r}; modules there: {', '.join(seen) or 'none'}"
    )
