"""Does the fine-tuning method change the direction? The reading of a diff study run with several
objectives (``objectives`` sft,dpo: :mod:`steerlab.pipelines.diff_study`): per layer the cosine between
the SFT and the DPO model-diff vectors and of each with the contrastive vector (the random band,
resampling intervals and split-half reliabilities of ``directions.json``), and each fine-tune's own
steering study (its gap, best layer and best coherent steering rows, with their evidence).

The reading is pure: derived from ``directions.json`` and each objective's ``study*.json`` (nothing is
recomputed). Also here: the objectives' fine-tunes (:func:`objective_finetunes`, each its own resumable
stage) and their check (:func:`check_objectives`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SteerlabError
from ..evaluate.controls import cosine_verdict
from ..finetune.config import OBJECTIVES, FinetuneConfig
from ..finetune.training import run_finetune, run_finetune_pairs
from ..formats.conversations import pairs_to_chat
from ..formats.pairs import Pair
from ..io.files import read_json
from ..model.loading import LoadedModel
from .records import DirectionsDoc
from .runs import RunDir
from .study import StudyResult
from .study_records import ObjectiveDoc, ObjectivesDoc
from .study_samples import best_coherent

if TYPE_CHECKING:
    from .diff_study import DiffStudyConfig

# Per objective: the adapter directory, the model-diff vector's name and the artifacts' suffix.
NAMES = {"sft": ("adapter", "model_diff", ""), "dpo": ("adapter_dpo", "model_diff_dpo", "_dpo")}
LABELS = {"sft": "SFT", "dpo": "DPO"}


def check_objectives(objectives: Sequence[str]) -> list[str]:
    """The objectives as a list: ``sft`` first, each known and given once.

    Raises:
        SteerlabError: naming ``--objectives``, for an unknown or repeated objective or one without
            ``sft`` first (the study's reference fine-tune; a DPO adapter alone is studied with
            ``diff finetune --objective dpo`` and ``diff study -f``).
    """
    given = list(objectives)
    text = ",".join(given)
    unknown = [o for o in given if o not in OBJECTIVES]
    if unknown or len(set(given)) < len(given):
        raise SteerlabError(f"--objectives {text}: expected distinct objectives among {', '.join(OBJECTIVES)}")
    if not given or given[0] != "sft":
        raise SteerlabError(
            f"--objectives {text}: expected sft first (e.g. sft,dpo): the SFT fine-tune is the study's reference; "
            "to study a DPO adapter alone, train it with diff finetune --objective dpo and pass it with -f"
        )
    return given


def finetune_info(adapters: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Per objective, the last epoch's training record (``steerlab_finetune.json``), when there is one."""
    out = {}
    for objective, path in adapters.items():
        info = path / "steerlab_finetune.json"
        if info.is_file():
            epochs = read_json(info, "fine-tune record").get("epochs") or []
            out[objective] = epochs[-1] if epochs else {}
    return out


def objective_finetunes(
    base: LoadedModel,
    train: Sequence[Pair],
    run: RunDir,
    objectives: list[str],
    config: DiffStudyConfig,
    adapter_dir: str | Path | None,
) -> tuple[dict[str, Path], dict[str, str | None]]:
    """Each objective's adapter directory and fine-tune hash. Each fine-tune is its own stage
    (:mod:`steerlab.finetune.training`): kept when its config, data and base match. An adapter passed
    in replaces the SFT fine-tune and is identified by its path alone (hash None)."""
    ft_config = FinetuneConfig(
        rank=config.rank,
        alpha=config.alpha,
        epochs=config.epochs,
        lr=config.lr,
        batch_size=config.train_batch_size,
        seed=config.seed,
    )
    adapters: dict[str, Path] = {}
    hashes: dict[str, str | None] = {}
    for objective in objectives:
        directory = NAMES[objective][0]
        if objective == "sft" and adapter_dir is not None:
            adapters["sft"], hashes["sft"] = Path(adapter_dir), None
            continue
        started = time.perf_counter()
        if objective == "sft":
            result = run_finetune(base, pairs_to_chat(train, "positive"), run.path / directory, ft_config)
        else:
            dpo = replace(ft_config, objective=objective, beta=config.beta)
            result = run_finetune_pairs(base, train, run.path / directory, dpo)
        adapters[objective], hashes[objective] = run.path / directory, result.config_hash
        if not result.reused:  # a retrained adapter makes the vectors stale (its hash is their input)
            run.timings["finetune" if objective == "sft" else f"finetune_{objective}"] = round(
                time.perf_counter() - started, 3
            )
    return adapters, hashes


def steering_rows(study: StudyResult, vector: str, layers: Any) -> dict[str, Any]:
    """The best coherent raw-scale sweep row of ``vector`` subtracted from the fine-tuned model
    (``finetuned``, most undone) and added to the base (``base``, most induced) at ``layers``."""
    return {
        model: best_coherent(
            study.rows,
            key,
            study.max_fluency_drop,
            stage="sweep",
            vector=vector,
            model=model,
            scale="raw",
            layers=layers,
        )
        for model, key in (("finetuned", "undone"), ("base", "induced"))
    }


def objectives_summary(
    comparison: DirectionsDoc,
    studies: Mapping[str, StudyResult],
    beta: float,
    training: Mapping[str, dict[str, Any]],
) -> ObjectivesDoc | None:
    """The ``objectives`` document (:class:`~steerlab.pipelines.study_records.ObjectivesDoc`) of a
    study with several objectives; None with one. ``training``: each objective's last epoch record."""
    if len(studies) < 2:
        return None
    names = {o: NAMES[o][1] for o in studies}
    best = studies["sft"].best_layer
    vectors = ["contrastive", *names.values()]
    keys = [
        key
        for key in comparison["cosine"]
        if set(key.split("|")) <= set(vectors) and key.split("|")[0] != key.split("|")[1]
    ]
    cosine = {key: comparison["cosine"][key] for key in keys}
    ci = {key: comparison.get("cosine_ci95", {}).get(key) for key in keys}
    reliability = {name: comparison["reliability"][name]["mean"] for name in vectors}
    per: dict[str, ObjectiveDoc] = {}
    for objective, study in studies.items():
        ref = study.reference
        per[objective] = {
            "vector": names[objective],
            "adapter": NAMES[objective][0],
            "margins": {"base": ref["base"], "finetuned": ref["finetuned"], "gap": study.gap},
            "best_layer": study.best_layer,
            "training": dict(training.get(objective) or {}),
            "steering": steering_rows(study, names[objective], study.best_layer),
            "contrastive": steering_rows(study, "contrastive", study.best_layer),
            "prompting": study.prompting,
        }
    doc: ObjectivesDoc = {
        "objectives": list(studies),
        "beta": beta,
        "vectors": names,
        "random_band": comparison["baseline"]["band"],
        "cosine": cosine,
        "cosine_ci95": ci,  # type: ignore[typeddict-item]
        "reliability": reliability,
        "at_best_layer": {
            "layer": best,
            "cosine": {k: v[best] for k, v in cosine.items()},
            "cosine_ci95": {k: (v[best] if v else None) for k, v in ci.items()},
            "reliability": {k: v[best] for k, v in reliability.items()},
        },
        "per_objective": per,
        "reading": [],
    }
    doc["reading"] = _reading(doc)
    return doc


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def _ci(ci: Any, fmt: str = "{:+.3f}") -> str:
    if not ci or None in ci:
        return "95% CI unbounded" if ci else "no interval"
    return f"95% CI {fmt.format(ci[0])} to {fmt.format(ci[1])}"


def _reading(doc: ObjectivesDoc) -> list[str]:
    """Plain-language lines: the gaps, the cosines at the SFT study's best layer with their verdicts,
    and each fine-tune's steering with its evidence."""
    per, at = doc["per_objective"], doc["at_best_layer"]
    band, best = doc["random_band"], at["layer"]
    lines = [
        "Fine-tuning methods on the same pairs, held-out margin base → fine-tuned: "
        + "; ".join(
            f"{LABELS.get(o, o)} {p['margins']['base']:+.3f} → {p['margins']['finetuned']:+.3f} "
            f"(gap {p['margins']['gap']:+.3f})"
            for o, p in per.items()
        )
        + f" (DPO beta {doc['beta']:g})."
    ]
    sft, others = doc["vectors"]["sft"], [o for o in per if o != "sft"]
    for objective in others:
        name = doc["vectors"][objective]
        key = f"{sft}|{name}"
        if key in at["cosine"]:
            rel = at["reliability"]
            lines.append(
                f"At layer {best}, cosine(SFT model-diff, {LABELS.get(objective, objective)} model-diff) = "
                f"{at['cosine'][key]:+.3f} ({_ci(at['cosine_ci95'].get(key))}), "
                f"{cosine_verdict(at['cosine'][key], at['cosine_ci95'].get(key), band)} (±{band:.3f}); split-half "
                f"reliabilities {rel[sft]:.2f} and {rel[name]:.2f} bound how alike two noisy estimates of one "
                "direction can look."
            )
    with_contrastive = [
        f"{LABELS.get(o, o)} {at['cosine'][k]:+.3f} ({_ci(at['cosine_ci95'].get(k))})"
        for o in per
        if (k := f"contrastive|{doc['vectors'][o]}") in at["cosine"]
    ]
    if with_contrastive:
        lines.append(f"Cosine with the contrastive vector at layer {best}: " + "; ".join(with_contrastive) + ".")
    for objective, p in per.items():
        label = LABELS.get(objective, objective)
        for model, verb, key in (("finetuned", "Subtracting", "undone"), ("base", "Adding", "induced")):
            row = p["steering"].get(model)
            if not row:
                continue
            where = f"from the {label} fine-tuned model" if model == "finetuned" else "to the base"
            lines.append(
                f"{verb} the {label} model-diff vector {where} at its best layer {p['best_layer']} "
                f"(coefficient {row['coeff']:g}) {'undoes' if model == 'finetuned' else 'induces'} "
                f"{_pct(row[key])} of its gap ({_ci(row.get('ci95'), '{:.0%}')}); "
                f"{row.get('verdict') or 'no controls'}."
            )
    return lines
