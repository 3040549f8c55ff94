"""The one layer grammar (steerlab.model.layers): grammar, negatives, ranges, errors by message."""

import pytest

from steerlab.errors import SteerlabError
from steerlab.model.layers import (
    check_layer_index,
    parse_layer_spec,
    parse_layers,
    resolve_layers,
    resolve_one_layer,
)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("all", list(range(30))),
        ("ALL", list(range(30))),
        ("12", [12]),
        (" 10 , 12 ", [10, 12]),
        ("10-15", [10, 11, 12, 13, 14, 15]),
        ("10 - 12", [10, 11, 12]),
        ("-1", [29]),
        ("-3--1", [27, 28, 29]),
        ("27--1", [27, 28, 29]),
        ("3,1-2,3", [3, 1, 2]),  # order kept, repeats dropped
        (12, [12]),
        (-2, [28]),
        ([0, -1], [0, 29]),
        (range(2, 4), [2, 3]),
        ("0", [0]),
    ],
)
def test_grammar(spec, expected):
    assert resolve_layers(spec, 30) == expected
    assert parse_layers(spec, 30) == expected


@pytest.mark.parametrize("bad", ["ten", "1-", "-", "1,,2", "1.5", "1-2-3", "all,3", "a-b", "12 13", ""])
def test_grammar_errors_name_the_flag(bad):
    with pytest.raises(SteerlabError, match="--layers") as info:
        parse_layer_spec(bad, "--layers")
    assert "expected 'all'" in str(info.value)


@pytest.mark.parametrize("bad", [[], [1.5], [True], ["3"]])
def test_non_integer_lists_rejected(bad):
    with pytest.raises(SteerlabError, match="--layer"):
        parse_layer_spec(bad)


def test_grammar_needs_no_model_and_range_is_checked_later():
    selection = parse_layer_spec("10-40", "--layers")  # fine without knowing the model
    with pytest.raises(SteerlabError, match=r"--layers 40 is out of range: the model has 30 layers \(0\.\.29"):
        selection.resolve(30, "--layers")
    with pytest.raises(SteerlabError, match="--layer -31 is out of range"):
        resolve_layers("-31", 30)
    with pytest.raises(SteerlabError, match="range 15-10 is empty"):
        resolve_layers("15-10", 30)
    with pytest.raises(SteerlabError, match="tiny has 4 layers"):
        resolve_layers(4, 4, owner="tiny")
    assert parse_layer_spec("all").is_all and not parse_layer_spec("1").is_all


def test_check_layer_index_and_one_layer():
    assert check_layer_index(-1, 4) == 3
    with pytest.raises(SteerlabError, match="layer 4 is out of range: each vector has 4 layers"):
        check_layer_index(4, 4, "layer", "each vector")
    assert resolve_one_layer("-1", 4) == 3
    with pytest.raises(SteerlabError, match="--layer 'all': this flag takes one layer, got 4"):
        resolve_one_layer("all", 4)


def test_model_check_layer_uses_the_grammar_range_check(tiny_llama):
    assert tiny_llama.check_layer(-1) == tiny_llama.n_layers - 1
    with pytest.raises(SteerlabError, match=f"--layer 9 is out of range: {tiny_llama.name} has 4 layers"):
        tiny_llama.check_layer(9)
