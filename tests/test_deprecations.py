"""The suite's deprecation policy (pyproject.toml ``filterwarnings`` and tests/conftest.py): a deprecated
dependency API reached from steerlab or a test fails that test, whichever way the dependency announces
the deprecation (``warnings`` or its logger)."""

import pytest
import torch

IDS = torch.tensor([[5, 6, 7]])


def test_deprecated_keyword_fails(tiny_llama):
    cache = tiny_llama.model(input_ids=IDS, use_cache=True).cache
    with pytest.raises(FutureWarning, match="past_key_values"):
        tiny_llama.model(input_ids=IDS[:, -1:], past_key_values=cache, use_cache=True)


def test_deprecated_attribute_announced_on_the_logger_fails(tiny_llama):
    out = tiny_llama.model(input_ids=IDS, use_cache=True)
    with pytest.raises(FutureWarning, match="past_key_values"):
        _ = out.past_key_values
    assert out.cache is not None  # the current name
