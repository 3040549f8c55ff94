"""The built-in condition examples (CAST): cooking vs other everyday topics, with a fixed split."""

from __future__ import annotations

import pytest

from steerlab.errors import SteerlabError
from steerlab.formats.condition_examples import condition_examples, list_condition_examples


def test_builtin_cooking_examples():
    assert "cooking" in list_condition_examples()
    pos, neg = condition_examples("cooking")
    train, held = condition_examples("cooking", "train"), condition_examples("cooking", "heldout")
    assert len(pos) == len(neg) == 40 and len(train[0]) == len(train[1]) == 30 and len(held[0]) == 10
    assert set(train[0]) | set(held[0]) == set(pos) and not set(train[0]) & set(held[0])
    assert not set(pos) & set(neg)
    with pytest.raises(SteerlabError, match="no built-in condition examples named 'baking'"):
        condition_examples("baking")
    with pytest.raises(SteerlabError, match="split 'test'"):
        condition_examples("cooking", "test")
