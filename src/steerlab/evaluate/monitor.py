"""Monitoring a trait without steering: projections of activations on a vector (docs/design.md §5).

The projection of an activation ``a`` (output of block L, reduced over tokens) on the vector ``v``
for layer L is ``(a · v) / ‖v‖`` — the length of ``a`` along the direction of ``v``, in activation
units. Reductions: ``response_avg`` (mean over the response tokens) and ``prompt_last`` (last prompt
token, i.e. the state just before the model answers) by default; any
:class:`~steerlab.activations.capture.Reduction` works.

- :func:`projection` — the pure formula on tensors ``[..., n_layers, d]``.
- :func:`project` — one batched forward pass per batch (streamed: memory grows with batch x layers x
  d, results are ``[n, len(layers)]``), samples as :class:`~steerlab.activations.capture.ChatSample`.
  Samples whose response is empty get NaN for response reductions (prompt reductions still work).
- Multi-turn conversations, :func:`per_turn_samples` / :func:`project_turns`: one sample per
  assistant turn, the prompt being the conversation up to that turn and the response that turn's
  content. Each sample goes through the chat template once, as a whole (``steerlab.model.chat``); turns
  are never tokenized on their own.
- Inputs (:func:`load_monitor_data`): chat JSONL ``{"messages": [...]}`` and generation files
  written by ``steerlab sweep`` (``generations.jsonl``: ``question``, ``text``, ``layer``,
  ``coeff``) or ``steerlab generate --out`` (the same fields; see :mod:`steerlab.formats.records`,
  whose readers also accept the older ``prompt`` for ``question``). Generations are read
  by the model as loaded — normally the unsteered model reading the steered text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..activations.capture import ChatSample, Reduction, encode_samples, forward_batch, length_sorted_batches
from ..errors import SteerlabError
from ..formats.conversations import validate_conversation
from ..formats.records import PROMPT_FIELD, GenerationRecord, prompt_from_text, record_prompt_field
from ..io.files import IS_DIRECTORY, file_problem, read_json
from ..io.tables import first_jsonl_row, read_jsonl
from ..model.chat import Message
from ..model.layers import LayerSpec, parse_layers
from ..model.loading import LoadedModel
from ..progress import progress_bar
from ..vectors.vector import SteeringVector

DEFAULT_REDUCTIONS = ("response_avg", "prompt_last")

LayerArg = LayerSpec  # the layer grammar of steerlab.model.layers


# --- the formula ---------------------------------------------------------------------------------


def projection(acts: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``(a · v) / ‖v‖`` per layer: ``acts [..., n_layers, d]``, ``vectors [n_layers, d]`` →
    ``[..., n_layers]`` float32 (computed in float64). Raises on a zero vector at any layer."""
    v = torch.as_tensor(vectors).double()
    if v.ndim == 1:
        v = v[None, :]
    norms = v.norm(dim=-1)
    if (norms == 0).any():
        zero = norms.eq(0).nonzero()[:, 0].tolist()
        raise SteerlabError(f"cannot project on a zero vector (zero at layer rows {zero})")
    a = torch.as_tensor(acts).double()
    if a.shape[-2:] != v.shape:
        raise SteerlabError(f"activations {tuple(a.shape)} do not match vectors {tuple(v.shape)} ([..., layers, d])")
    return ((a * v).sum(-1) / norms).float()


def _vector_rows(lm: LoadedModel, vector: SteeringVector, layers: list[int]) -> torch.Tensor:
    vector.check_compatible(lm.n_layers, lm.d_model, lm.name, layers)
    rows = vector.data[layers]
    zero = [layer for layer, n in zip(layers, rows.norm(dim=-1), strict=True) if float(n) == 0]
    if zero:
        raise SteerlabError(f"--vector is zero at layer(s) {zero}: nothing to project on")
    return rows


# --- projections ---------------------------------------------------------------------------------


def project(
    lm: LoadedModel,
    samples: Sequence[ChatSample],
    vector: SteeringVector,
    layers: LayerArg,
    reductions: Sequence[str | Reduction] = DEFAULT_REDUCTIONS,
    batch_size: int = 16,
    description: str = "projecting",
) -> dict[str, torch.Tensor]:
    """Projections ``{reduction name: [n_samples, len(layers)]}`` of each sample's activations at
    ``layers`` (layer L = output of block L; an int, a list, ``"10,12"``, ``"10-15"`` or ``"all"``)
    on ``vector``: ``(a · v_L) / ‖v_L‖``, in activation units (the length of ``a`` along v_L). NaN
    for response reductions of samples with no response tokens. Batched results equal per-sample
    results.

    Raises SteerlabError for no samples or reductions, a layer out of range, a vector that does not
    fit the model or is zero at a requested layer, or an empty prompt.
    """
    if not samples:
        raise SteerlabError("no samples to project")
    parsed = list({r.name: r for r in (Reduction.parse(r) for r in reductions)}.values())
    if not parsed:
        raise SteerlabError("no reductions given (e.g. response_avg, prompt_last)")
    layer_list = parse_layers(layers, lm.n_layers, "--layer")
    rows = _vector_rows(lm, vector, layer_list)
    encoded = encode_samples(lm, samples, need_response=False)
    out = {r.name: torch.full((len(samples), len(layer_list)), float("nan")) for r in parsed}
    with_response = [i for i, e in enumerate(encoded) if e.response_len > 0]
    without = [i for i, e in enumerate(encoded) if e.response_len == 0]
    prompt_only = [r for r in parsed if not r.needs_response]
    pad_id = lm.tokenizer.pad_token_id
    with progress_bar(description, len(samples)) as advance:
        for subset, reds in ((with_response, parsed), (without, prompt_only)):
            if not subset:
                continue
            if not reds:
                advance(len(subset))
                continue
            for idx, batch in length_sorted_batches(encoded, subset, batch_size, pad_id, lm.device):
                for name, acts in forward_batch(lm, batch, reds, layer_list).items():
                    out[name][idx] = projection(acts, rows)
                advance(len(idx))
    return out


def conversation_sample(messages: Sequence[Message]) -> ChatSample:
    """The whole conversation as one sample: a final assistant message is the response and
    everything before it the prompt; otherwise everything is the prompt (empty response)."""
    messages = [dict(m) for m in messages]
    if messages and messages[-1]["role"] == "assistant":
        return ChatSample(messages[:-1], messages[-1]["content"])
    return ChatSample(messages, "")


def turn_samples(messages: Sequence[Message]) -> list[tuple[int, ChatSample]]:
    """One ``(message index, sample)`` per assistant turn: prompt = the messages before it (system
    included), response = its content."""
    messages = [dict(m) for m in messages]
    return [(i, ChatSample(messages[:i], m["content"])) for i, m in enumerate(messages) if m["role"] == "assistant"]


def per_turn_samples(conversations: Sequence[Sequence[Message]]) -> tuple[list[ChatSample], list[dict[str, int]]]:
    """Samples for every assistant turn of every conversation, with ``{"conversation", "turn",
    "message_index"}`` for each (``turn`` counts assistant turns from 0)."""
    samples, keys = [], []
    for c, messages in enumerate(conversations):
        for turn, (index, sample) in enumerate(turn_samples(messages)):
            samples.append(sample)
            keys.append({"conversation": c, "turn": turn, "message_index": index})
    return samples, keys


def project_turns(
    lm: LoadedModel,
    conversations: Sequence[Sequence[Message]],
    vector: SteeringVector,
    layers: LayerArg,
    reductions: Sequence[str | Reduction] = DEFAULT_REDUCTIONS,
    batch_size: int = 16,
) -> tuple[list[dict[str, int]], dict[str, torch.Tensor]]:
    """Per-turn projections: ``(keys, {reduction: [n_turns_total, len(layers)]})``, one row per
    assistant turn (see :func:`per_turn_samples` for the keys)."""
    samples, keys = per_turn_samples(conversations)
    if not samples:
        raise SteerlabError("no assistant turns in the conversations")
    return keys, project(lm, samples, vector, layers, reductions, batch_size)


# --- inputs --------------------------------------------------------------------------------------


@dataclass
class MonitorData:
    """Samples to project, one metadata dict per sample, and the metadata keys to group by."""

    kind: str  # "chat" | "generations"
    samples: list[ChatSample]
    meta: list[dict[str, Any]]
    group_by: list[str] = field(default_factory=list)
    source: str = ""


def load_chat(path: str | Path, per_turn: bool = False) -> MonitorData:
    """Chat JSONL (``{"messages": [...]}`` per line). Whole conversations (see
    :func:`conversation_sample`), or with ``per_turn`` one sample per assistant turn."""
    samples: list[ChatSample] = []
    meta: list[dict[str, Any]] = []
    for c, (number, obj) in enumerate(read_jsonl(path, "chat file")):
        where = f"{path}:{number}"
        if "messages" not in obj:
            raise SteerlabError(f"{where}: missing field 'messages' (got {sorted(obj)})")
        messages = validate_conversation(obj["messages"], where, require_response=False)
        if per_turn:
            turns = turn_samples(messages)
            if not turns:
                raise SteerlabError(f"{where}: --per-turn: the conversation has no assistant message")
            for turn, (index, sample) in enumerate(turns):
                samples.append(sample)
                meta.append({"line": number, "conversation": c, "turn": turn, "message_index": index})
        else:
            samples.append(conversation_sample(messages))
            meta.append({"line": number, "conversation": c})
    return MonitorData("chat", samples, meta, ["turn"] if per_turn else [], str(path))


GENERATION_META = ("question_index", "coeff", "layer", "n_new_tokens", "finish_reason")


def load_generations(path: str | Path) -> MonitorData:
    """Generations from ``steerlab sweep`` (``generations.jsonl``, or its run directory) or
    ``steerlab generate --out``: each row's prompt (``question`` or ``prompt``) with its ``text`` as
    the response. The system prompt is the row's ``system`` or, beside a sweep's
    ``generations.jsonl``, ``sweep.json``'s ``config.system``. The generation's steering layer is
    kept as ``steer_layer``; rows are grouped by (``steer_layer``, ``coeff``) where present."""
    path = Path(path)
    if file_problem(path) == IS_DIRECTORY:
        path = path / "generations.jsonl"
    system = None
    sweep_json = path.parent / "sweep.json"
    if sweep_json.is_file():
        doc = read_json(sweep_json, "sweep file")
        config = doc.get("config") or {} if isinstance(doc, dict) else None
        if not isinstance(config, dict):
            raise SteerlabError(f"{sweep_json}: not a valid sweep.json (expected a JSON object)")
        system = config.get("system")
    samples: list[ChatSample] = []
    meta: list[dict[str, Any]] = []
    for number, obj in read_jsonl(path, "generations file"):
        record = GenerationRecord.from_json(obj, f"{path}:{number}")
        row_system = obj.get("system") if isinstance(obj.get("system"), str) else system
        prompt = prompt_from_text(record.question)
        if not isinstance(prompt, str) and prompt[0].get("role") == "system":
            row_system = None
        samples.append(ChatSample(prompt, record.text, row_system or None))
        row: dict[str, Any] = {"line": number}
        for name in GENERATION_META:
            if name in obj:
                row["steer_layer" if name == "layer" else name] = obj[name]
        row[PROMPT_FIELD] = record.question
        meta.append(row)
    group_by = [k for k in ("steer_layer", "coeff") if any(m.get(k) is not None for m in meta)]
    return MonitorData("generations", samples, meta, group_by, str(path))


def detect_kind(path: str | Path) -> str:
    """``"chat"`` or ``"generations"`` from the first row of a JSONL file (or a sweep directory)."""
    path = Path(path)
    if file_problem(path) == IS_DIRECTORY:  # (Path.is_dir raises OSError on a name over 255 bytes)
        if (path / "generations.jsonl").is_file():
            return "generations"
        raise SteerlabError(f"--data {path}: a directory must hold a sweep's generations.jsonl")
    _, first = first_jsonl_row(path, "data file")
    if "messages" in first:
        return "chat"
    if "text" in first and record_prompt_field(first) is not None:
        return "generations"
    raise SteerlabError(
        f"--data {path}: expected chat JSONL ('messages' per line) or generations ('question'/'prompt' and "
        f"'text' per line, as written by steerlab sweep/generate); the first row has {sorted(first)}"
    )


def load_monitor_data(path: str | Path, per_turn: bool = False) -> MonitorData:
    """Chat JSONL or generations, detected from the file (see :func:`detect_kind`)."""
    kind = detect_kind(path)
    if kind == "chat":
        return load_chat(path, per_turn)
    if per_turn:
        raise SteerlabError(f"--per-turn needs chat data ('messages' per line); {path} holds generations")
    return load_generations(path)


# --- results -------------------------------------------------------------------------------------


def _number(x: float) -> float | None:
    return None if math.isnan(x) else x


def projection_rows(data: MonitorData, values: dict[str, torch.Tensor], layers: Sequence[int]) -> list[dict[str, Any]]:
    """Long format: one row per (sample, monitored layer): the sample's metadata, ``sample``,
    ``layer`` and one column per reduction (None where undefined)."""
    rows = []
    for i, meta in enumerate(data.meta):
        for j, layer in enumerate(layers):
            row = {"sample": i, **meta, "layer": int(layer)}
            row.update({name: _number(float(v[i, j])) for name, v in values.items()})
            rows.append(row)
    return rows


def summarize(
    rows: Sequence[dict[str, Any]], group_by: Sequence[str], reductions: Sequence[str]
) -> list[dict[str, Any]]:
    """Per (group, layer): ``n`` and ``{reduction}_mean`` / ``{reduction}_std`` (population std)
    over the defined values (NaN/None left out), sorted by group then layer."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = (*(row.get(k) for k in group_by), row["layer"])
        groups.setdefault(key, []).append(row)

    def order(key: tuple) -> tuple:
        return tuple((x is None, x if isinstance(x, int | float) else str(x)) for x in key)

    out = []
    for key in sorted(groups, key=order):
        members = groups[key]
        summary: dict[str, Any] = dict(zip([*group_by, "layer"], key, strict=True))
        summary["n"] = len(members)
        for name in reductions:
            vals = torch.tensor([r[name] for r in members if r.get(name) is not None], dtype=torch.float64)
            summary[f"{name}_mean"] = float(vals.mean()) if len(vals) else None
            summary[f"{name}_std"] = float(vals.std(unbiased=False)) if len(vals) else None
        out.append(summary)
    return out
