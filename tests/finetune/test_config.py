"""FinetuneConfig: the one source of defaults (the CLI reads them) and range checks naming flags."""

import dataclasses
import inspect

import pytest

from steerlab.cli.diff import finetune_cmd
from steerlab.errors import SteerlabError
from steerlab.finetune.config import FinetuneConfig


def test_cli_defaults_are_the_dataclass_defaults():
    params = inspect.signature(finetune_cmd).parameters
    for f in dataclasses.fields(FinetuneConfig):
        if f.name == "layers":  # the CLI takes a layer spec string; both default to all blocks
            assert f.default is None and params["layers"].default.default is None
            continue
        assert params[f.name].default.default == f.default, f.name


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("beta", 0.0, "--beta 0.0"),
        ("beta", float("inf"), "--beta inf"),
        ("rank", 0, "--rank 0"),
        ("alpha", 0.0, "--alpha 0.0"),
        ("dropout", 1.0, "--dropout 1.0"),
        ("epochs", 0, "--epochs 0"),
        ("lr", float("nan"), "--lr nan"),
        ("batch_size", 0, "--batch-size 0"),
        ("max_length", 1, "--max-length 1"),
        ("weight_decay", -1.0, "--weight-decay -1.0"),
        ("max_grad_norm", -0.5, "--max-grad-norm -0.5"),
    ],
)
def test_out_of_range_settings_name_their_flag(field, value, flag):
    with pytest.raises(SteerlabError, match=f"^{flag}: out of range$"):
        FinetuneConfig(**{field: value})
    config = FinetuneConfig()
    setattr(config, field, value)  # changed after construction: caught again when a run starts
    with pytest.raises(SteerlabError, match=f"^{flag}: out of range$"):
        config.validate()


def test_objective_is_sft_or_dpo():
    assert (FinetuneConfig().objective, FinetuneConfig().beta) == ("sft", 0.1)
    assert FinetuneConfig(objective="dpo", beta=0.5).objective == "dpo"
    with pytest.raises(SteerlabError, match=r"^--objective 'ppo': expected one of sft, dpo$"):
        FinetuneConfig(objective="ppo")
