"""What travels between steerlab and its code inside vLLM's workers: plain data, no tensors, no vLLM.

Vectors are registered once per engine under the hash of their content (:func:`vector_id`), so a
changed vector never reuses another's state. Each request (one row) carries its steering as plain
JSON in ``SamplingParams.extra_args["steerlab"]`` (over HTTP: ``vllm_xargs``): a list of
interventions, one per steered layer, in the order they apply (:func:`row_interventions`):

    {"l": layer, "v": vector id, "op": "add"|"ablate"|"cap", "c": coefficient, "pos": "all"|"prompt"|
     "response", "sc": "raw"|"unit"|"relative", "ref": mean residual norm (relative) or null,
     "ceil": τ or null, "floor": τ or null, "rs": response start (teacher forcing) or null}

and, for reference statistics, ``"capture"`` (:func:`capture_request`). A steered request gets a
prefix-cache salt derived from all of it (:func:`cache_salt`): its KV blocks are never reused by
another condition or by unsteered rows, while identical conditions still share theirs.

Positions follow :mod:`steerlab.steering.operators` with p the absolute token position and P the
prompt length (``rs`` when given): ``all`` every token, ``prompt`` p < P, ``response`` p ≥ P − 1 —
which is right under chunked prefill, preemption and prefix-cache hits, since p is absolute.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ...steering.operators import Intervention, row_mask

PROTOCOL = "sl1"  # part of every salt: bump when what a spec means changes
KEY = "steerlab"


def vector_id(vector: torch.Tensor) -> str:
    """The registration id of a direction ``[d_model]``: SHA-256 of its float32 bytes (first 32 hex)."""
    data = vector.detach().to(torch.float32).cpu().contiguous()
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()[:32]


def vector_payload(vector: torch.Tensor) -> bytes:
    """A direction ``[d_model]`` as little-endian float32 bytes (what :func:`vector_id` hashes)."""
    return vector.detach().to(torch.float32).cpu().contiguous().numpy().astype("<f4").tobytes()


def _coeff_at(coeff: Any, row: int) -> float:
    if isinstance(coeff, int | float):
        return float(coeff)
    values = torch.as_tensor(coeff, dtype=torch.float32).reshape(-1)
    return float(values[row] if values.numel() > 1 else values[0])


def row_interventions(
    interventions: Sequence[Sequence[Intervention]], n_rows: int, response_starts: Sequence[int] | None = None
) -> list[list[dict[str, Any]]]:
    """Per row of ``n_rows``, the JSON interventions acting on it, in the order they apply.

    ``interventions[k]`` are spec k's resolved :class:`Intervention` objects (one per layer, as
    :meth:`SteeringSpec.interventions` returns them; per-row coefficients ``[n_rows]`` and ``rows``
    as there). Identities are left out: ``add`` and ``ablate`` with coefficient 0. With
    ``response_starts`` (teacher forcing) each row's ``rs`` is its prompt length.
    """
    out: list[list[dict[str, Any]]] = [[] for _ in range(n_rows)]
    for spec_ivs in interventions:
        for iv in spec_ivs:
            mask = row_mask(iv.rows, n_rows) if iv.rows is not None else None
            vid = vector_id(iv.vector)
            for row in range(n_rows):
                if mask is not None and not bool(mask[row]):
                    continue
                coeff = _coeff_at(iv.coeff, row)
                if iv.operator != "cap" and coeff == 0.0:
                    continue
                out[row].append(
                    {
                        "l": iv.layer,
                        "v": vid,
                        "op": iv.operator,
                        "c": coeff,
                        "pos": iv.positions,
                        "sc": iv.scale,
                        "ref": iv.reference_norm,
                        "ceil": iv.ceiling,
                        "floor": iv.floor,
                        "rs": None if response_starts is None else int(response_starts[row]),
                    }
                )
    return out


def capture_request(
    key: str,
    layers: Sequence[int],
    prompt_len: int,
    directions: Sequence[str] = (),
    full: bool = False,
    pre: bool = False,
) -> dict[str, Any]:
    """The ``capture`` entry of a request that records its block outputs at ``layers``.

    Statistics over the prompt's tokens (positions < ``prompt_len``): the sum and the last token's
    output ``[d_model]``, their count, the sum of norms, and each token's projection on each registered
    direction id in ``directions`` (in that order). ``full`` also keeps every computed token's output
    (after steering) by absolute position, prompt and generated, and ``pre`` the same before this
    layer's steering (for tests of what steering did). ``key`` names the capture when fetched.
    """
    return {
        "key": key,
        "layers": [int(x) for x in layers],
        "P": int(prompt_len),
        "dirs": list(directions),
        "full": bool(full),
        "pre": bool(pre),
    }


def cache_salt(items: Sequence[Mapping[str, Any]], prompt_len: int, lora: str | None = None) -> str | None:
    """The prefix-cache salt of a request steered by ``items``; None when it is not steered.

    It hashes the protocol version, the interventions (vector ids are content hashes) and, when any
    of them depends on positions (``prompt``/``response``), the prompt length: a block's keys and
    values then depend on where the prompt ends, so two prompts sharing a prefix must not share
    blocks. ``lora`` (the adapter's name) is already in vLLM's block hashes; it is hashed here too.
    """
    if not items:
        return None
    positional = any(item["pos"] != "all" for item in items)
    body = json.dumps(
        {"p": PROTOCOL, "items": list(items), "P": prompt_len if positional else None, "lora": lora},
        sort_keys=True,
        separators=(",", ":"),
    )
    return f"{PROTOCOL}-{hashlib.sha256(body.encode()).hexdigest()[:48]}"


def parse_request(extra_args: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The steerlab part of a request's ``extra_args`` (a dict, or a JSON string over HTTP), or None.

    Returns ``{"steer": [items], "capture": {...} | None}``. Raises ValueError for a malformed entry
    (the worker refuses the step rather than steering wrongly).
    """
    if not extra_args or KEY not in extra_args:
        return None
    value = extra_args[KEY]
    if isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, list):  # the short form: interventions only
        value = {"steer": value}
    if not isinstance(value, dict):
        raise ValueError(f"steerlab request: expected an object or a list, got {type(value).__name__}")
    steer = value.get("steer") or []
    for item in steer:
        missing = {"l", "v", "op", "pos"} - set(item)
        if missing:
            raise ValueError(f"steerlab intervention {item}: missing {sorted(missing)}")
        if item["op"] not in ("add", "ablate", "cap") or item["pos"] not in ("all", "prompt", "response"):
            raise ValueError(f"steerlab intervention {item}: unknown operator or positions")
    return {"steer": list(steer), "capture": value.get("capture")}
