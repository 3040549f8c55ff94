"""Base-model fingerprints: equal across dtypes, different for other weights or shapes."""

import pytest
import torch
from tiny import make_tiny

from steerlab.errors import SteerlabError
from steerlab.finetune.fingerprint import fingerprint_mismatch, model_fingerprint, read_finetune_info
from steerlab.model.loading import wrap_model


def test_fingerprint_matches_itself_in_another_dtype_only():
    lm = make_tiny("llama")
    fp = model_fingerprint(lm)
    assert fp["n_layers"] == lm.n_layers and fp["d_model"] == lm.d_model and len(fp["embedding_probe"]) == 8
    assert fingerprint_mismatch(fp, fp) is None
    bf16 = wrap_model(make_tiny("llama").model.to(torch.bfloat16), lm.tokenizer, name="bf16")
    assert fingerprint_mismatch(fp, model_fingerprint(bf16)) is None
    assert fingerprint_mismatch(fp, model_fingerprint(make_tiny("llama", seed=1))) == (
        "different weights (embedding values differ)"
    )
    assert fingerprint_mismatch(fp, model_fingerprint(make_tiny("qwen2"))).startswith("model_type llama vs qwen2")


def test_read_finetune_info(tmp_path):
    assert read_finetune_info(tmp_path) is None
    (tmp_path / "steerlab_finetune.json").write_text("{torn")
    with pytest.raises(SteerlabError, match=r"steerlab_finetune.json: not valid JSON"):
        read_finetune_info(tmp_path)
    (tmp_path / "steerlab_finetune.json").write_text('{"config": {"rank": 2}}')
    assert read_finetune_info(tmp_path) == {"config": {"rank": 2}}
