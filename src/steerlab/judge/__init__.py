"""The LLM judge (docs/design.md §6): scores filled judge prompts 0-100, or None when it gives no number.

Modules: :mod:`.score` (the score maths), :mod:`.cache` (the sqlite answer cache), :mod:`.base`
(the protocol, the shared base class, :func:`make_judge`, prompt filling), :mod:`.openai_compat`
(``openai:MODEL``) and :mod:`.local` (``local[:MODEL]``). The two backends are imported on first
use (``steerlab.judge.OpenAIJudge``, ``make_judge("openai:...")``), so importing this package loads
neither the OpenAI client nor the local judge's torch code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import (
    LOCAL_DEFAULT_MODEL,
    BaseJudge,
    Judge,
    evaluate_coherence,
    evaluate_prompts,
    evaluate_trait,
    fill_prompts,
    judge_coherence,
    judge_trait,
    make_judge,
)
from .cache import ScoreCache, default_cache_dir
from .score import (
    ANSWERS,
    MAX_SCORE,
    MIN_NUMBER_MASS,
    JudgeResult,
    mean_score,
    parse_number_token,
    score_from_distribution,
    score_from_top_logprobs,
)

if TYPE_CHECKING:
    from .local import LocalJudge
    from .openai_compat import OpenAIJudge

_LAZY = {"LocalJudge": ".local", "OpenAIJudge": ".openai_compat"}


def __getattr__(name: str) -> Any:
    """The backend classes, imported on first access (PEP 562)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ANSWERS",
    "LOCAL_DEFAULT_MODEL",
    "MAX_SCORE",
    "MIN_NUMBER_MASS",
    "BaseJudge",
    "Judge",
    "JudgeResult",
    "LocalJudge",
    "OpenAIJudge",
    "ScoreCache",
    "default_cache_dir",
    "evaluate_coherence",
    "evaluate_prompts",
    "evaluate_trait",
    "fill_prompts",
    "judge_coherence",
    "judge_trait",
    "make_judge",
    "mean_score",
    "parse_number_token",
    "score_from_distribution",
    "score_from_top_logprobs",
]
