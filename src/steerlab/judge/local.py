"""The ``local[:MODEL]`` judge: the exact expected score from a local causal LM (docs/design.md §6).

Any :func:`~steerlab.model.loading.load_model` spec (default ``smollm2``) or a loaded
:class:`~steerlab.model.loading.LoadedModel`. The prompt goes through the chat template and the
exact probability of every answer "0".."100" is computed by teacher forcing, even when the
tokenizer splits numbers into several tokens ("100" -> "1","0","0"):

    p(k) = p(tokens of k | prompt) · p(next token does not start with a digit | prompt, k)

The termination factor makes the events disjoint: "10" does not steal the mass of "100" (whose next
token is "0"), so Σ_k p(k) ≤ 1 is the probability that the reply is a number 0..100 and the 0.25
rule means the same thing as for the API backend. Any non-digit token ends the number (end-of-turn,
newline, ".", " out of 100" ...), not only the end-of-turn token, so a judge that writes "85." still
counts as answering 85. The answer text is what the chat template puts before an assistant message
(e.g. " 85" after "Assistant:"), tokenized together with the rendered prompt (canonical
tokenization). All 101 continuations of a prompt are scored in ONE forward pass: the prompt is
followed by the continuations merged into a trie ("1", "10" and "100" share their "1"; 101 nodes
instead of 193 tokens when digits are single tokens), each node attending to the prompt and to its
ancestors only (a 4-D "tree" attention mask with per-node position ids). Prompts are batched, those
of one judge template side by side: the tokens a batch's prompts share at their start (the
template's instructions before the question, when at least ``SHARED_MIN`` tokens) run once, as a
KV cache the batch continues from (:class:`~steerlab.model.prefix_cache.PrefixCache`). Models whose attention cannot
take a 4-D mask (flash/flex attention, or prompts longer than a sliding window) use
prompt+continuation rows instead (same numbers, more compute).

The cache identity is the model's name, adapter, dtype and scoring-method version. A LoadedModel
passed in directly is not cached on disk unless ``cache_dir`` is given, since its name need not
identify its weights.
"""

from __future__ import annotations

import inspect
import itertools
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import SteerlabError
from ..model.blocks import unwrap_model
from ..model.chat import has_system_role, merge_system_role, render_prompt, to_messages
from ..model.loading import LoadedModel
from ..model.prefix_cache import PrefixCache, cache_argument
from ..progress import progress_bar
from .base import BaseJudge
from .score import ANSWERS, MIN_NUMBER_MASS, JudgeResult, score_from_distribution

DIGITS = "0123456789"
SHARED_MIN = 32  # shared leading prompt tokens worth a separate cached pass
_LOCAL_METHOD = "tree-v1"  # part of the local cache identity: bump when the scoring changes
_BYTE_DIGIT = re.compile(r"<0x3[0-9]>")  # SentencePiece byte-fallback pieces for "0".."9"


def _starts_with_digit(piece: str | None) -> bool:
    return bool(piece) and (piece[0] in DIGITS or bool(_BYTE_DIGIT.fullmatch(piece)))


@dataclass
class _Row:
    """One sequence: prompt token ids followed by the continuations scored after it."""

    prompt: list[int]
    conts: list[list[int]]


class _Trie:
    """The answers' token sequences merged into a trie, nodes in creation order (parents first).

    ``tokens[k]``/``parents[k]`` (-1 for a root)/``depths[k]`` (1 for a root) per node; ``paths[b]``:
    the nodes of answer b, in order; ``ancestors``: ``[n, n]`` bool, node q may attend to node k
    (k an ancestor of q, or q itself).
    """

    def __init__(self, conts: Sequence[Sequence[int]]):
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.depths: list[int] = []
        self.paths: list[list[int]] = []
        index: dict[tuple[int, ...], int] = {}
        for cont in conts:
            path: list[int] = []
            for j in range(len(cont)):
                key = tuple(cont[: j + 1])
                if key not in index:
                    index[key] = len(self.tokens)
                    self.tokens.append(cont[j])
                    self.parents.append(path[-1] if path else -1)
                    self.depths.append(j + 1)
                path.append(index[key])
            self.paths.append(path)
        n = len(self.tokens)
        self.ancestors = torch.eye(n, dtype=torch.bool)
        for k, parent in enumerate(self.parents):
            if parent >= 0:
                self.ancestors[k] |= self.ancestors[parent]


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix every sequence starts with."""
    first = seqs[0]
    n = min(map(len, seqs))
    for other in seqs[1:]:
        n = next((i for i in range(n) if other[i] != first[i]), n)
    return n


class LocalJudge(BaseJudge):
    """Exact expected score from a local causal LM (see module docstring).

    ``lm``: the judge model; ``batch_size``: prompts per forward pass; ``cache_dir``: see
    :class:`~steerlab.judge.base.BaseJudge` (default False: no disk cache); ``tree``: force (True)
    or forbid (False) the one-pass tree mask (default: by attention implementation); ``name``:
    shown in progress bars and logs; ``min_mass``: the 0.25 rule. Raises SteerlabError for
    ``batch_size`` < 1. ``forwards`` counts the model forward passes run.
    """

    def __init__(
        self,
        lm: LoadedModel,
        batch_size: int = 4,
        cache_dir: str | os.PathLike[str] | bool | None = False,
        tree: bool | None = None,
        name: str | None = None,
        min_mass: float = MIN_NUMBER_MASS,
    ):
        if batch_size < 1:
            raise SteerlabError(f"--judge-batch-size {batch_size}: expected at least 1")
        self.lm = lm
        self.batch_size = batch_size
        self.name = name or f"local:{lm.name}"
        self.forwards = 0  # model forward passes run (for tests and logs)
        model = unwrap_model(lm.model)
        config = getattr(model, "config", None)
        attn = getattr(config, "_attn_implementation", None) or "eager"
        self._tree_ok = attn in ("eager", "sdpa") if tree is None else tree
        self._sliding = getattr(config, "sliding_window", None) or None
        params = inspect.signature(model.forward).parameters
        self._keep_arg = "logits_to_keep" in params
        self._digit_mask: torch.Tensor | None = None
        dtype = str(lm.dtype).removeprefix("torch.")
        adapter = f"+{lm.adapter}" if lm.adapter else ""
        super().__init__(f"local:{lm.name}{adapter}[{dtype}]#{_LOCAL_METHOD}", cache_dir, min_mass)

    # ---- tokenization -----------------------------------------------------------------------

    def _answer_prefix(self, prompt: str, rendered: str) -> str:
        """What the chat template writes between the generation prompt and an answer's text."""
        tok = self.lm.tokenizer
        messages = [*to_messages(prompt), {"role": "assistant", "content": "7"}]
        if not has_system_role(tok):
            messages = merge_system_role(messages)
        try:
            full = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        except Exception:  # templates that reject a trailing assistant turn
            return ""
        if not full.startswith(rendered):
            return ""
        rest = full[len(rendered) :]
        cut = rest.find("7")
        return rest[:cut] if cut > 0 else ""

    def _encode(self, prompt: str) -> _Row:
        """Prompt ids and the token ids of each answer "0".."100" as the model would continue."""
        tok = self.lm.tokenizer
        rendered = render_prompt(tok, prompt)
        prefix = self._answer_prefix(prompt, rendered)
        prompt_ids = list(tok(rendered, add_special_tokens=False)["input_ids"])
        if not prompt_ids:
            raise SteerlabError("judge prompt renders to no tokens")
        texts = [rendered + prefix + a for a in ANSWERS]
        full = tok(texts, add_special_tokens=False)["input_ids"]
        n = len(prompt_ids)
        conts = []
        for answer, ids in zip(ANSWERS, full, strict=True):
            ids = list(ids)
            if ids[:n] == prompt_ids and len(ids) > n:
                conts.append(ids[n:])
            else:  # the answer merged with the prompt's last token: the model cannot emit that
                conts.append(list(tok(prefix + answer, add_special_tokens=False)["input_ids"]))
        return _Row(prompt_ids, conts)

    def digit_mask(self, vocab: int) -> torch.Tensor:
        """Bool [vocab]: tokens whose text starts with an ASCII digit (they continue a number).

        Raw vocabulary pieces are used: a piece with a leading space marker ("Ġ5", "▁5") does not
        continue the number ("42 5" is not 425).
        """
        if self._digit_mask is None or self._digit_mask.numel() != vocab:
            tok = self.lm.tokenizer
            n = min(vocab, len(tok))
            pieces = tok.convert_ids_to_tokens(list(range(n)))
            mask = torch.zeros(vocab, dtype=torch.bool)
            mask[:n] = torch.tensor([_starts_with_digit(p) for p in pieces], dtype=torch.bool)
            self._digit_mask = mask
        return self._digit_mask

    # ---- scoring ------------------------------------------------------------------------------

    def answer_logprobs(self, prompts: Sequence[str]) -> torch.Tensor:
        """float64 [n_prompts, 101]: log p(reply is exactly k) for k = 0..100 (no cache)."""
        rows = [self._encode(p) for p in prompts]
        out = torch.empty(len(rows), len(ANSWERS), dtype=torch.float64)
        # Prompts of one template side by side (their shared start runs once per template), then by length.
        order = sorted(range(len(rows)), key=lambda i: (rows[i].prompt[:SHARED_MIN], len(rows[i].prompt)))
        groups = [list(g) for _, g in itertools.groupby(order, key=lambda i: rows[i].prompt[:SHARED_MIN])]
        with progress_bar(f"judging ({self.name})", len(rows)) as advance:
            pooled: list[int] = []  # prompts without a shared start worth a pass of its own
            for members in groups:
                prefix = self._shared_start([rows[i] for i in members]) if len(members) > 1 else None
                if prefix is None:
                    pooled += members
                    continue
                self._score_batches(rows, members, prefix, out, advance)
            self._score_batches(rows, sorted(pooled, key=lambda i: len(rows[i].prompt)), None, out, advance)
        return out

    def _score_batches(
        self, rows: list[_Row], order: list[int], prefix: PrefixCache | None, out: torch.Tensor, advance: Any
    ) -> None:
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            for i, logp in zip(idx, self._score_rows([rows[i] for i in idx], prefix), strict=True):
                out[i] = logp
            advance(len(idx))

    def _compute(self, prompts: list[str]) -> list[JudgeResult]:
        logp = self.answer_logprobs(prompts)
        return [score_from_distribution(row.exp().tolist()) for row in logp]

    def _tree_fits(self, rows: list[_Row]) -> bool:
        longest = max(len(r.prompt) + sum(map(len, r.conts)) for r in rows)
        return self._tree_ok and not (self._sliding and longest > self._sliding)

    def _shared_start(self, rows: list[_Row]) -> PrefixCache | None:
        """The KV cache of the tokens every prompt of ``rows`` starts with (all but each prompt's last
        token), when the tree mask is used and they are at least ``SHARED_MIN``; else None."""
        shared = min(_common_prefix([r.prompt for r in rows]), min(len(r.prompt) for r in rows) - 1)
        if shared < SHARED_MIN or not self._tree_fits(rows):
            return None
        prefix = PrefixCache.build(self.lm, [rows[0].prompt[:shared]])
        if prefix is not None:
            self.forwards += 1
        return prefix

    def _score_rows(self, rows: list[_Row], prefix: PrefixCache | None = None) -> list[torch.Tensor]:
        if self._tree_fits(rows):
            return [t for t in self._forward(rows, tree=True, prefix=prefix)]
        # Fallback: one row per (prompt, answer), plain causal attention.
        flat = [_Row(r.prompt, [c]) for r in rows for c in r.conts]
        per = max(1, self.batch_size * 8)
        logps = []
        for start in range(0, len(flat), per):
            logps.extend(self._forward(flat[start : start + per], tree=False))
        flat_logp = torch.cat(logps)
        return list(flat_logp.split([len(r.conts) for r in rows]))

    def _forward(self, rows: list[_Row], tree: bool, prefix: PrefixCache | None = None) -> list[torch.Tensor]:
        """One forward pass over left-padded rows (continuing from ``prefix``, the KV cache of their
        shared start, with the tree mask); returns log p of each continuation per row."""
        lm = self.lm
        device = lm.device
        start = int(prefix.lengths[0]) if prefix is not None else 0
        rows = [_Row(r.prompt[start:], r.conts) for r in rows]
        # Each row: its prompt, then the answers as a trie (answers sharing leading tokens, such as
        # "1", "10", "100", share those nodes): a node attends to the prompt and to its ancestors.
        tries = [_Trie(r.conts) for r in rows]
        seqs = [list(r.prompt) + t.tokens for r, t in zip(rows, tries, strict=True)]
        width = max(map(len, seqs))
        pads = [width - len(s) for s in seqs]
        pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        if tree:
            allowed = torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1)  # pad rows attend to themselves
        for i, (r, t) in enumerate(zip(rows, tries, strict=True)):
            p, n = pads[i], len(r.prompt)
            input_ids[i, p:] = torch.tensor(seqs[i])
            position_ids[i, p:] = torch.tensor([*range(start, start + n), *(start + n - 1 + d for d in t.depths)])
            if tree:
                allowed[i, p:, p : p + n] = True
                allowed[i, p : p + n, p : p + n] = torch.ones(n, n, dtype=torch.bool).tril()
                allowed[i, p + n :, p + n :] = t.ancestors
        if tree:
            if start:  # every row attends to the whole shared start (one prefix: no padding there)
                allowed = torch.cat([torch.ones(len(rows), width, start, dtype=torch.bool), allowed], dim=-1)
            mask = torch.zeros(allowed.shape, dtype=lm.dtype).masked_fill(~allowed, torch.finfo(lm.dtype).min)[:, None]
        else:  # one answer per row: the trie is a chain, plain causal attention over the tokens
            mask = torch.tensor([[0] * p + [1] * (width - p) for p in pads])
        # Logits are needed from the last prompt token on: the last `keep` positions of every row.
        keep = max(len(t.tokens) for t in tries) + 1
        kwargs: dict[str, Any] = {"logits_to_keep": keep} if self._keep_arg else {}
        if prefix is not None:
            kwargs.update(
                {cache_argument(self.lm): prefix.select(torch.zeros(len(rows), dtype=torch.long))}, use_cache=True
            )
        else:
            kwargs["use_cache"] = False
        with torch.inference_mode():
            logits = lm.model(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                position_ids=position_ids.to(device),
                **kwargs,
            ).logits
        self.forwards += 1
        logits = logits[:, -keep:].float()
        digit = self.digit_mask(logits.shape[-1]).to(logits.device)
        results = []
        for i, t in enumerate(tries):
            first = keep - len(t.tokens)  # index (in kept logits) of the first trie node
            # node k is predicted by its parent's position (the last prompt token for a root node)
            preds = [first - 1 if parent < 0 else first + parent for parent in t.parents]
            ends = [first + path[-1] for path in t.paths]
            row = logits[i]
            logz = torch.logsumexp(row[preds + ends], dim=-1)
            n_tok = len(preds)
            node_lp = (row[preds, t.tokens] - logz[:n_tok]).double()
            stop_lp = torch.logsumexp(row[ends].masked_fill(digit, -math.inf), dim=-1) - logz[n_tok:]
            total = torch.stack([node_lp[path].sum() for path in t.paths])
            results.append((total + stop_lp.double()).cpu())
        return results
