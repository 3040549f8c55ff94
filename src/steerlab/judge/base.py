"""What every judge shares (docs/design.md §6): the :class:`Judge` protocol, :class:`BaseJudge` (deduplication
and the disk cache), :func:`make_judge` (backends by spec string), and filling the trait and
coherence prompts with (question, answer) pairs.

A judge reads ``eval_prompt`` filled with ``{question}`` and ``{answer}`` and answers a number
0-100; :mod:`.score` turns its answer distribution into a score or ``None``. Backends:

``openai:MODEL``
    :class:`~steerlab.judge.openai_compat.OpenAIJudge`, any OpenAI-compatible endpoint.
``local[:MODEL]``
    :class:`~steerlab.judge.local.LocalJudge`, a local causal LM (default ``smollm2``).

Both are imported only when built, so ``import steerlab.judge`` loads neither the OpenAI client
nor torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..errors import SteerlabError
from ..formats.traits import check_judge_prompt, coherence_prompt, fill_judge_prompt
from .cache import ScoreCache, default_cache_dir
from .score import MIN_NUMBER_MASS, JudgeResult

if TYPE_CHECKING:
    from ..model.loading import LoadedModel

LOCAL_DEFAULT_MODEL = "smollm2"


@runtime_checkable
class Judge(Protocol):
    """Anything that scores filled judge prompts: one score in [0, 100] or None per prompt."""

    def score(self, prompts: list[str]) -> list[float | None]:
        """Scores 0-100, one per prompt (None where the judge gave no number)."""
        ...


class BaseJudge:
    """Deduplicates prompts, serves what the disk cache has, computes the rest in ``_compute``.

    ``identity`` keys the cache (it must change whenever the judge's answers could);
    ``cache_dir``: the cache directory (None or True: :func:`default_cache_dir`; False: no cache);
    ``min_mass``: the probability on number answers below which a score is None (docs/design.md §6: 0.25).
    Raises SteerlabError when ``min_mass`` is not in [0, 1].
    """

    name: str = "judge"

    def __init__(
        self,
        identity: str,
        cache_dir: str | os.PathLike[str] | bool | None = None,
        min_mass: float = MIN_NUMBER_MASS,
    ):
        if not 0 <= min_mass <= 1:
            raise SteerlabError(f"--judge-min-mass {min_mass}: expected a probability in [0, 1]")
        self.identity = identity
        self.min_mass = min_mass
        if cache_dir is False:
            self.cache: ScoreCache | None = None
        else:
            self.cache = ScoreCache(default_cache_dir() if cache_dir is None or cache_dir is True else cache_dir)

    def score(self, prompts: list[str]) -> list[float | None]:
        """Scores in [0, 100] (None where the judge gave no number, or could not be reached)."""
        return [r.score for r in self.evaluate(prompts)]

    def evaluate(self, prompts: Sequence[str]) -> list[JudgeResult]:
        """Like :meth:`score`, with the probability mass on numbers for each prompt.

        Raises TypeError when given one string instead of a list.
        """
        if isinstance(prompts, str):
            raise TypeError("score() takes a list of prompts, not one string")
        unique = list(dict.fromkeys(prompts))
        known = self.cache.get_many(self.identity, unique) if self.cache is not None else {}
        todo = [p for p in unique if p not in known]
        if todo:
            computed = dict(zip(todo, self._compute(todo), strict=True))
            if self.cache is not None:
                self.cache.put_many(self.identity, computed)
            known.update(computed)
        return [known[p].with_threshold(self.min_mass) for p in prompts]

    def _compute(self, prompts: list[str]) -> list[JudgeResult]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def make_judge(
    spec: str | LoadedModel | Judge,
    cache_dir: str | os.PathLike[str] | bool | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    concurrency: int = 8,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int = 4,
    **kwargs: Any,
) -> Judge:
    """Build a judge from ``openai:MODEL``, ``local`` / ``local:MODEL_SPEC``, or a LoadedModel.

    ``cache_dir``: directory of the on-disk answer cache (default ``<steerlab cache>/judge``;
    ``False`` disables it). A LoadedModel passed directly is not cached on disk unless
    ``cache_dir`` is given (its name need not identify its weights). A :class:`Judge` is returned
    as is. Extra keyword arguments go to :class:`~steerlab.judge.openai_compat.OpenAIJudge`
    (``max_retries``, ``retry_base_delay``, ``timeout``) or :class:`~steerlab.judge.local.LocalJudge`.
    Raises SteerlabError naming ``--judge`` for an unknown or incomplete spec.
    """
    if not isinstance(spec, str):
        from ..model.loading import LoadedModel

        if isinstance(spec, LoadedModel):
            from .local import LocalJudge

            return LocalJudge(
                spec, batch_size=batch_size, cache_dir=False if cache_dir is None else cache_dir, **kwargs
            )
        if isinstance(spec, Judge):
            return spec
        raise SteerlabError(f"--judge {spec!r}: expected a spec string such as openai:MODEL or local")
    kind, sep, rest = spec.strip().partition(":")
    if kind == "openai":
        if not rest.strip():
            raise SteerlabError(f"--judge {spec!r}: expected openai:MODEL with a model name")
        from .openai_compat import OpenAIJudge

        return OpenAIJudge(
            rest.strip(), base_url=base_url, api_key=api_key, concurrency=concurrency, cache_dir=cache_dir, **kwargs
        )
    if kind == "local":
        model_spec = rest.strip() if sep else LOCAL_DEFAULT_MODEL
        if not model_spec:
            raise SteerlabError(f"--judge {spec!r}: expected local or local:MODEL_SPEC")
        from ..model.loading import load_model
        from .local import LocalJudge

        lm = load_model(model_spec, device=device, dtype=dtype)
        return LocalJudge(lm, batch_size=batch_size, cache_dir=cache_dir, name=f"local:{model_spec}", **kwargs)
    raise SteerlabError(
        f"--judge {spec!r}: expected openai:MODEL (an OpenAI-compatible endpoint), local (the "
        "embedded smollm2) or local:MODEL_SPEC (any model steerlab can load)"
    )


def fill_prompts(template: str, questions: Sequence[str], answers: Sequence[str], what: str) -> list[str]:
    """``template`` filled with each (question, answer) pair, one prompt per pair.

    ``what`` names the template in errors. Raises SteerlabError when the template lacks
    ``{question}``/``{answer}`` or the two lists differ in length.
    """
    check_judge_prompt(template, what)
    if len(questions) != len(answers):
        raise SteerlabError(
            f"{what}: {len(questions)} questions but {len(answers)} answers (expected one answer per question)"
        )
    return [fill_judge_prompt(template, q, a) for q, a in zip(questions, answers, strict=True)]


def evaluate_prompts(judge: Judge, prompts: list[str]) -> list[JudgeResult]:
    """Full results (score and probability mass on numbers) for filled prompts.

    Uses ``judge.evaluate`` where the judge has it (every :class:`BaseJudge`); for any other
    :class:`Judge` the mass is unknown (None) and ``expected`` is the score.
    """
    evaluate = getattr(judge, "evaluate", None)
    if callable(evaluate):
        return list(evaluate(prompts))
    return [JudgeResult(s, None, s) for s in judge.score(prompts)]


def judge_trait(judge: Judge, eval_prompt: str, questions: Sequence[str], answers: Sequence[str]) -> list[float | None]:
    """Trait scores 0-100 (None where the judge gave no number) for (question, answer) pairs."""
    return judge.score(fill_prompts(eval_prompt, questions, answers, "eval_prompt"))


def judge_coherence(
    judge: Judge, questions: Sequence[str], answers: Sequence[str], prompt: str | None = None
) -> list[float | None]:
    """Coherence scores 0-100 with the built-in coherence prompt (or ``prompt``)."""
    return judge.score(_coherence_prompts(questions, answers, prompt))


def evaluate_trait(
    judge: Judge, eval_prompt: str, questions: Sequence[str], answers: Sequence[str]
) -> list[JudgeResult]:
    """Like :func:`judge_trait`, with each answer's probability mass on numbers (:func:`evaluate_prompts`)."""
    return evaluate_prompts(judge, fill_prompts(eval_prompt, questions, answers, "eval_prompt"))


def evaluate_coherence(
    judge: Judge, questions: Sequence[str], answers: Sequence[str], prompt: str | None = None
) -> list[JudgeResult]:
    """Like :func:`judge_coherence`, with each answer's probability mass on numbers."""
    return evaluate_prompts(judge, _coherence_prompts(questions, answers, prompt))


def _coherence_prompts(questions: Sequence[str], answers: Sequence[str], prompt: str | None) -> list[str]:
    template = coherence_prompt() if prompt is None else prompt
    return fill_prompts(template, questions, answers, "coherence prompt")
