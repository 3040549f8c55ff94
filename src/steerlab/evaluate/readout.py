"""Reading a steering vector: what each layer's direction means to the model, in tokens and in size.

For each layer L of a vector (layer L = output of decoder block L, ``hidden_states[L + 1]``):

- **Logit lens of the direction** — the tokens it promotes and suppresses when the model's own
  final norm and unembedding read it::

      lens(v) = U(N(v)) − U(N(0))          [vocab] logits

  where N is the model's final norm module (``model.norm``, ``transformer.ln_f``, ...) applied to
  ``v`` itself as if ``v`` were a residual-stream state, and U the unembedding (``lm_head``).
  Subtracting ``U(N(0))`` drops what does not depend on ``v`` — a LayerNorm's bias and an
  unembedding bias (both zero for RMSNorm models with a bias-free head) — which would otherwise add
  the same token list to every readout. So for RMSNorm with gain g:
  ``lens(v) = W_U (g ⊙ v / sqrt(mean(v²) + ε))`` (Gemma's ``(1 + g)`` gain likewise, through the
  module); for LayerNorm: ``W_U (g ⊙ (v − mean v) / sqrt(var v + ε))``. Promoted tokens are the
  ``top_k`` largest entries, suppressed the ``top_k`` smallest.

  *Why v itself, not N(h + v) − N(h).* The logit lens (nostalgebraist, "interpreting GPT: the logit
  lens", LessWrong 2020) decodes a residual state through the final norm and unembedding; the
  activation difference lens (Minder et al. 2025, "Narrow finetuning leaves clearly readable traces
  in activation differences", arXiv:2510.13900) decodes a mean activation *difference* the same way,
  treating the difference as a state. Applied to ``v`` alone the readout is a property of the
  direction: it depends neither on reference prompts nor on the vector's scale (N divides by v's own
  RMS). The alternative, N(h + v) − N(h) averaged over reference tokens h, measures what adding this
  ``v`` at this size would do there; for ‖v‖ ≪ ‖h‖ and RMSNorm it is ≈ g ⊙ (v − (v·ĥ)ĥ) / rms(h), the
  same direction up to its component along each h. The values are logits of a state equal to the
  normalised direction: their order and relative size are what to read, not their absolute value.
  Not applied: a final logit soft-cap (Gemma 2; monotone, it keeps the order). Rows of the head
  beyond the tokenizer's vocabulary (padding) are left out.

- **Size** — ‖v_L‖ against the mean residual norm ‖h_L‖ over every token of reference prompts
  (:func:`steerlab.steering.calibration.mean_residual_norms`; default: the first
  :data:`DEFAULT_REFERENCE_PROMPTS` built-in generic prompts), and their ratio: a coefficient of
  ``1 / ratio`` adds a vector as long as the residual stream itself.
- **Cosine** with other vectors at the same layer (:func:`steerlab.vectors.vector.cosine`).

:func:`readout_vector` returns all of it as one JSON-able document (``steerlab inspect --out``;
the report renders it with :func:`steerlab.report.readout.readout_section`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ..errors import SteerlabError
from ..formats.prompts import generic_prompts
from ..io.runs import file_digest
from ..model.blocks import find_final_norm, unwrap_model
from ..model.chat import Prompt
from ..model.layers import LayerSpec, resolve_layers
from ..model.loading import LoadedModel
from ..steering.calibration import mean_residual_norms
from ..vectors.vector import SteeringVector, cosine, steerlab_version

FORMAT = "steerlab.readout/1"
DEFAULT_TOP_K = 10
DEFAULT_REFERENCE_PROMPTS = 16
LENS_FORMULA = "lens(v) = U(N(v)) - U(N(0)); N = the model's final norm, U = its unembedding"


def _module_device_dtype(module: torch.nn.Module, lm: LoadedModel) -> tuple[torch.device, torch.dtype]:
    param = next(module.parameters(), None)
    return (param.device, param.dtype) if param is not None else (lm.device, lm.dtype)


@torch.no_grad()
def logit_lens(lm: LoadedModel, directions: torch.Tensor) -> torch.Tensor:
    """``lens(v) = U(N(v)) − U(N(0))`` (module docstring) for each row of ``directions``
    ``[k, d_model]`` (or one ``[d_model]``): ``[k, vocab]`` float32 logits, ``vocab`` = the tokenizer's
    size (rows of the head beyond it dropped). Runs the model's own final norm and unembedding
    modules in the model's dtype. Raises SteerlabError for a width other than ``lm.d_model`` or a
    model without an output embedding."""
    x = torch.as_tensor(directions, dtype=torch.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[-1] != lm.d_model:
        raise SteerlabError(f"logit lens: expected directions [k, {lm.d_model}], got {list(x.shape)}")
    norm, _ = find_final_norm(lm.model, lm.blocks_path)
    head = unwrap_model(lm.model).get_output_embeddings()
    if head is None:
        raise SteerlabError(f"logit lens: {lm.name} has no output embedding (lm_head) to read a direction with")
    device, dtype = _module_device_dtype(norm, lm)
    rows = torch.cat([x, x.new_zeros(1, x.shape[-1])]).to(device=device, dtype=dtype)
    head_device, head_dtype = _module_device_dtype(head, lm)
    logits = head(norm(rows).to(device=head_device, dtype=head_dtype)).float().cpu()
    vocab = min(logits.shape[-1], len(lm.tokenizer)) if lm.tokenizer is not None else logits.shape[-1]
    return (logits[:-1] - logits[-1:])[:, :vocab]


def top_tokens(lm: LoadedModel, logits: torch.Tensor, k: int = DEFAULT_TOP_K) -> dict[str, list[dict[str, Any]]]:
    """The ``k`` largest (``promoted``) and ``k`` smallest (``suppressed``) entries of one lens row
    ``[vocab]``: ``{"promoted": [{"id", "token", "logit"}, ...], "suppressed": [...]}``, most extreme
    first; ``token`` is the id decoded alone (``tokenizer.decode([id])``)."""
    k = min(int(k), logits.shape[-1])

    def entries(values: torch.Tensor, ids: torch.Tensor, sign: float) -> list[dict[str, Any]]:
        return [
            {"id": int(i), "token": _decode(lm, int(i)), "logit": float(sign * v)}
            for v, i in zip(values.tolist(), ids.tolist(), strict=True)
        ]

    high = torch.topk(logits, k)
    low = torch.topk(-logits, k)
    return {"promoted": entries(high.values, high.indices, 1.0), "suppressed": entries(low.values, low.indices, -1.0)}


def _decode(lm: LoadedModel, token_id: int) -> str:
    if lm.tokenizer is None:
        return str(token_id)
    return lm.tokenizer.decode([token_id])


def _check_fits(vector: SteeringVector, lm: LoadedModel, label: str, layers: Sequence[int] | None = None) -> None:
    try:
        vector.check_compatible(lm.n_layers, lm.d_model, lm.name, layers)
    except SteerlabError as exc:
        raise SteerlabError(f"{label}: {exc}") from None


def readout_vector(
    lm: LoadedModel,
    vector: SteeringVector,
    layers: LayerSpec | None = None,
    top_k: int = DEFAULT_TOP_K,
    compare: Mapping[str, SteeringVector] | None = None,
    prompts: Sequence[Prompt] | None = None,
    residual_norms: torch.Tensor | None = None,
    name: str | None = None,
    source: str | Path | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Read a vector per layer: logit lens, norm against the residual norm, cosine with others.

    Args:
        lm: the model the vector was made for (``[n_layers, d_model]`` must fit it; a partial
            llama.cpp vector only needs its layers).
        vector: the vector; its row L is read at layer L.
        layers: layers to read (the layer grammar; default: every layer the vector holds).
        top_k: promoted and suppressed tokens per layer.
        compare: other vectors by name; each layer gets its cosine with each (``None`` where the
            other holds no direction for that layer).
        prompts: reference prompts for the mean residual norm (default: the first
            :data:`DEFAULT_REFERENCE_PROMPTS` built-in generic prompts). Ignored when
            ``residual_norms`` (``[n_layers]``, activation units) is given.
        name: the vector's name in the document (default: the file's stem, else ``"vector"``).
        source: the vector's file, recorded with its SHA-256.

    Returns the readout document (JSON-able): ``format``, ``name``, ``vector`` (file, sha256,
    method, model), ``model``, ``n_layers``, ``d_model``, ``lens`` (formula, final norm, vocab),
    ``reference`` (what the residual norms were measured on), ``top_k``, ``compare`` (names) and
    ``layers``: one ``{"layer", "norm", "residual_norm", "relative_norm", "zero", "promoted",
    "suppressed", "cosine"}`` per layer (tokens as in :func:`top_tokens`; a zero row has empty
    token lists). Norms in activation units (L2); ``relative_norm = norm / residual_norm``.

    Raises:
        SteerlabError: naming the vector (or the compared one) for a vector that does not fit the
            model (width, layer count, absent layers), a layer out of range, ``top_k < 1``, a
            vector that is zero at every layer read, or no reference prompts.
    """
    label = name or (Path(source).stem if source else "vector")
    if top_k < 1:
        raise SteerlabError(f"--top-k {top_k}: expected at least 1 token per side")
    chosen = vector.layers_present if layers is None else resolve_layers(layers, lm.n_layers, "--layer", lm.name)
    _check_fits(vector, lm, str(source or label), chosen)
    compare = dict(compare or {})
    for other_name, other in compare.items():
        _check_fits(other, lm, other_name)
    rows = vector.data[chosen]
    norms = rows.norm(dim=-1)
    if not bool((norms > 0).any()):
        raise SteerlabError(f"{source or label}: the vector is zero at every layer read ({chosen}); no direction")
    reference: dict[str, Any]
    if residual_norms is None:
        if prompts is None:
            prompts = generic_prompts()[:DEFAULT_REFERENCE_PROMPTS]
            reference = {"prompts": "built-in generic prompts", "n_prompts": len(prompts)}
        else:
            reference = {"prompts": "given", "n_prompts": len(prompts)}
        if not prompts:
            raise SteerlabError("--reference-prompts: no prompts to measure the residual norm on")
        residual_norms = mean_residual_norms(lm, prompts, batch_size)
    else:
        reference = {"prompts": "precomputed residual norms"}
    lens = logit_lens(lm, rows)
    out_layers = []
    for i, layer in enumerate(chosen):
        norm, resid = float(norms[i]), float(residual_norms[layer])
        zero = norm == 0.0
        tokens = {"promoted": [], "suppressed": []} if zero else top_tokens(lm, lens[i], top_k)
        cosines = {
            other_name: (float(cosine(rows[i], other.data[layer])) if layer in other.layers_present else None)
            for other_name, other in compare.items()
        }
        out_layers.append(
            {
                "layer": layer,
                "norm": norm,
                "residual_norm": resid,
                "relative_norm": norm / resid if resid > 0 else None,
                "zero": zero,
                **tokens,
                "cosine": cosines,
            }
        )
    final_norm, norm_path = find_final_norm(lm.model, lm.blocks_path)
    meta = vector.metadata
    return {
        "format": FORMAT,
        "name": label,
        "vector": {
            "file": str(source) if source else meta.get("source"),
            "sha256": file_digest(Path(source)) if source else None,
            "method": meta.get("method"),
            "model": meta.get("model"),
            "reduction": meta.get("reduction"),
        },
        "model": lm.name,
        "n_layers": lm.n_layers,
        "d_model": lm.d_model,
        "lens": {
            "formula": LENS_FORMULA,
            "final_norm": f"{norm_path} ({type(final_norm).__name__})",
            "vocab": int(lens.shape[-1]),
        },
        "reference": reference,
        "top_k": int(top_k),
        "compare": list(compare),
        "layers": out_layers,
        "steerlab_version": steerlab_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
