"""LoRA targets: default linear layers per architecture, explicit names checked, block selection."""

import pytest
from tiny import make_tiny

from steerlab.errors import SteerlabError
from steerlab.finetune.config import FinetuneConfig
from steerlab.finetune.targets import default_target_modules, lora_config, resolve_layers, resolve_target_modules


def test_default_target_modules():
    assert default_target_modules(make_tiny("llama")) == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]
    assert default_target_modules(make_tiny("gpt2")) == ["c_attn", "c_fc", "c_proj"]


def test_resolve_target_modules(tiny_llama):
    assert resolve_target_modules(tiny_llama, None) == default_target_modules(tiny_llama)
    assert resolve_target_modules(tiny_llama, " all-linear ") == "all-linear"
    assert resolve_target_modules(tiny_llama, "q_proj, v_proj") == ["q_proj", "v_proj"]
    assert resolve_target_modules(tiny_llama, ["o_proj"]) == ["o_proj"]
    with pytest.raises(SteerlabError, match="--target-modules: nope not found in tiny-llama; linear layers"):
        resolve_target_modules(tiny_llama, "q_proj,nope")
    with pytest.raises(SteerlabError, match="--target-modules: empty"):
        resolve_target_modules(tiny_llama, " , ")


def test_resolve_layers(tiny_llama):
    assert resolve_layers(tiny_llama, None) is None
    assert resolve_layers(tiny_llama, [3, -1, 1]) == [1, 3]
    with pytest.raises(SteerlabError, match="--layers 9 is out of range"):
        resolve_layers(tiny_llama, [9])


def test_lora_config(tiny_llama):
    gpt2 = make_tiny("gpt2")
    cfg = lora_config(gpt2, FinetuneConfig(rank=4, alpha=8, dropout=0.1), ["c_attn"], [1])
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (4, 8, 0.1)
    assert cfg.fan_in_fan_out and cfg.layers_to_transform == [1] and cfg.layers_pattern == "h"
    plain = lora_config(tiny_llama, FinetuneConfig(), "all-linear", None)
    assert not plain.fan_in_fan_out and plain.layers_to_transform is None and plain.layers_pattern is None
