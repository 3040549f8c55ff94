"""Golden vectors of the four extraction paths on a tiny model: a refactor must keep them bit-identical.

The vectors were saved before the package was split into subpackages (issue 10). Regenerate only on
purpose, after a change that is meant to alter the numbers: ``STEERLAB_UPDATE_GOLDEN=1 pytest
tests/test_extract_golden.py``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from tiny import make_tiny

from steerlab import Pair, SteeringVector, extract_contrastive, extract_model_diff

GOLDEN = Path(__file__).parent / "golden" / "extraction_paths.safetensors"
PAIRS = [
    Pair(question="how should I store bread", positive="in the fridge always", negative="in a dry box"),
    Pair(question="is the fox quick", positive="no never", negative="yes always", system="be brief"),
    Pair(question="what do I do with a fever", positive="ignore it", negative="drink water and rest"),
]
PERSONA_PAIRS = [
    {"question": p.question, "positive": p.positive, "negative": p.negative,
     "pos_system": "you are evil", "neg_system": "you are kind"} for p in PAIRS
]


def _adapter(lm, path: Path) -> Path:
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(copy.deepcopy(lm.model), config).save_pretrained(str(path))
    return path


def _all_paths(tmp_path: Path) -> dict[str, torch.Tensor]:
    from steerlab.extract.model_diff import pair_diff_samples
    from steerlab.extract.persona import persona_vectors
    from steerlab.pipelines.diff_study import DiffStudyConfig, run_diff_study
    from steerlab.pipelines.study import StudyConfig

    lm = make_tiny("llama")
    adapter = _adapter(lm, tmp_path / "adapter")
    out = {"contrastive": extract_contrastive(lm, PAIRS).data}
    for reduction, vec in persona_vectors(lm, PERSONA_PAIRS, batch_size=2).items():
        out[f"persona_{reduction}"] = vec.data
    out["model_diff"] = extract_model_diff(lm, adapter, pair_diff_samples(PAIRS), batch_size=2).data
    config = DiffStudyConfig(batch_size=4, n_splits=2,
                             study=StudyConfig(layers=[1], coeffs=[1.0], n_samples=1, max_new_tokens=1))
    result = run_diff_study(lm, PAIRS, PAIRS[:2], tmp_path / "run", config, adapter_dir=adapter)
    for name, path in result.vectors.items():
        out[f"diff_study_{name}"] = SteeringVector.load(path).data
    return {k: v.contiguous() for k, v in out.items()}


def test_four_extraction_paths_match_the_golden_vectors(tmp_path):
    vectors = _all_paths(tmp_path)
    if os.environ.get("STEERLAB_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        save_file(vectors, str(GOLDEN))
    golden = load_file(str(GOLDEN))
    assert sorted(vectors) == sorted(golden)
    for name, tensor in vectors.items():
        assert torch.equal(tensor, golden[name]), f"{name} changed (max |diff| {(tensor - golden[name]).abs().max()})"
