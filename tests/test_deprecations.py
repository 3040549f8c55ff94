"""The suite's deprecation policy (pyproject.toml ``filterwarnings`` and tests/conftest.py): a deprecated
dependency API reached from steerlab or a test fails that test, whichever way the dependency announces
the deprecation (``warnings`` or its logger)."""

import pytest
from transformers import AutoModelForCausalLM


def test_deprecated_keyword_fails(tiny_dir):
    # transformers 5.19 announces this one with warnings.warn(FutureWarning)
    with pytest.raises(FutureWarning, match="tp_plan"):
        AutoModelForCausalLM.from_pretrained(tiny_dir, tp_plan="auto")


def test_deprecated_attribute_announced_on_the_logger_fails(tiny_llama):
    # ... and this one on its logger (logger.warning_once), which tests/conftest.py turns into a FutureWarning
    with pytest.raises(FutureWarning, match="use_return_dict"):
        _ = tiny_llama.model.config.use_return_dict
    assert tiny_llama.model.config.return_dict is not None  # the current name
