"""Golden vectors of the four extraction paths on a tiny model: a refactor must keep them, to float32 rounding.

``extraction_paths_before_merge.safetensors`` was saved before the package was split into subpackages
(issue 10); the move kept every vector bit-identical. Merging the four mean-difference implementations
into one aggregator (float64 signed sums, one rounding to float32) changed the contrastive vectors by
float32 rounding only (max 3e-9 on values ~2e-2), which the second test bounds; persona and model-diff
stayed bit-identical, and the diff study's vectors now equal the standalone extractors'.
Capturing the last prompt token and response from shared prompts (each distinct prompt run once, as a
KV cache; issue 12) changed the contrastive vectors and the diff study's two vectors by float32
rounding only (max 1.5e-8 on values up to 0.3); persona and standalone model-diff vectors stayed
bit-identical. ``extraction_paths.safetensors`` is the current golden. Regenerate it only on purpose, after a change
meant to alter the numbers: ``STEERLAB_UPDATE_GOLDEN=1 pytest tests/extract/test_extract_golden.py``.

The goldens are compared within float32 rounding (:func:`assert_float32_close`), not bit for bit: they
were stored on one machine, and torch does not promise identical sums on another CPU (another BLAS
kernel, another summation order; one such machine differs from the golden by 5.6e-9). A change of
method moves these vectors by far more than the tolerance (~1e-6 on values up to 0.3). Bit-identity
between two paths computed in the same run stays exact.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from floats import assert_float32_close
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from tiny import make_tiny

from steerlab import Pair, SteeringVector, extract_contrastive, extract_model_diff

GOLDEN = Path(__file__).parents[1] / "golden" / "extraction_paths.safetensors"  # tests/golden/
BEFORE_MERGE = GOLDEN.with_name("extraction_paths_before_merge.safetensors")
PAIRS = [
    Pair(question="how should I store bread", positive="in the fridge always", negative="in a dry box"),
    Pair(question="is the fox quick", positive="no never", negative="yes always", system="be brief"),
    Pair(question="what do I do with a fever", positive="ignore it", negative="drink water and rest"),
]
PERSONA_PAIRS = [
    {
        "question": p.question,
        "positive": p.positive,
        "negative": p.negative,
        "pos_system": "you are evil",
        "neg_system": "you are kind",
    }
    for p in PAIRS
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
    config = DiffStudyConfig(
        batch_size=4, n_splits=2, study=StudyConfig(layers=[1], coeffs=[1.0], n_samples=1, max_new_tokens=1)
    )
    result = run_diff_study(lm, PAIRS, PAIRS[:2], tmp_path / "run", config, adapter_dir=adapter)
    for name, path in result.vectors.items():
        out[f"diff_study_{name}"] = SteeringVector.load(path).data
    return {k: v.contiguous() for k, v in out.items()}


@pytest.fixture(scope="module")
def vectors(tmp_path_factory) -> dict[str, torch.Tensor]:
    """Every extraction path's vectors, computed once for the tests below."""
    return _all_paths(tmp_path_factory.mktemp("paths"))


def test_four_extraction_paths_match_the_golden_vectors(vectors):
    if os.environ.get("STEERLAB_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        save_file(vectors, str(GOLDEN))
    golden = load_file(str(GOLDEN))
    assert sorted(vectors) == sorted(golden)
    for name, tensor in vectors.items():
        assert_float32_close(tensor, golden[name], msg=name)


def test_paths_agree_with_the_vectors_from_before_the_refactor(vectors):
    before = load_file(str(BEFORE_MERGE))
    for name, tensor in vectors.items():
        assert_float32_close(tensor, before[name], msg=name)
    # one base pass in the diff study gives exactly the standalone contrastive vector (same run, same machine)
    assert torch.equal(vectors["diff_study_contrastive"], vectors["contrastive"])


def test_every_extraction_path_goes_through_the_one_aggregator(vectors, tmp_path, monkeypatch):
    from steerlab.extract.mean_difference import MeanDifference

    original = MeanDifference.means
    monkeypatch.setattr(MeanDifference, "means", lambda self, n: {k: 2 * v + 1 for k, v in original(self, n).items()})
    patched = _all_paths(tmp_path)
    for name, tensor in vectors.items():
        torch.testing.assert_close(patched[name], 2 * tensor + 1, msg=name)
