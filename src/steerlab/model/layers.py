"""The layer grammar: one way to name decoder-block layers, for every ``--layer``/``--layers`` flag,
the Python API and the server.

Convention (docs/design.md §2): layer ``L`` is 0-based and means the output of decoder block ``L``, i.e.
``hidden_states[L + 1]`` of ``output_hidden_states``.

Grammar (whitespace around items is ignored)::

    spec  := "all" | item ("," item)*
    item  := index | index "-" index        (a range, both ends included)
    index := ["-"] digits                  (negative: counted from the end, -1 = the last layer)

Examples with 30 layers: ``12`` → [12]; ``10,12`` → [10, 12]; ``10-15`` → [10..15];
``-1`` → [29]; ``-3--1`` → [27, 28, 29]; ``20--1`` → [20..29]; ``all`` → [0..29].

Checking is in two steps so that command lines fail before any model loads:
:func:`parse_layer_spec` checks the grammar (no model needed); :func:`resolve_layers` checks the
range once the number of layers is known. Both raise :class:`~steerlab.errors.SteerlabError`
naming the flag. :func:`parse_layers` does both. The result keeps the order given, without repeats.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import SteerlabError

LayerSpec = int | str | Sequence[int] | range
"""Anything that names layers: an index, a grammar string, a list of indices or a range."""

GRAMMAR_HINT = "expected 'all', a layer index '12', a list '10,12', a range '10-15' (negatives count from the end)"
_ITEM = re.compile(r"(-?\d+)(?:\s*-\s*(-?\d+))?")


@dataclass(frozen=True)
class LayerSelection:
    """A parsed layer spec, not yet resolved against a model.

    ``items`` holds ``(first, last)`` index pairs (equal for a single index; possibly negative);
    ``None`` means all layers.
    """

    items: tuple[tuple[int, int], ...] | None
    text: str

    @property
    def is_all(self) -> bool:
        """Whether the spec is ``all``."""
        return self.items is None

    def resolve(self, n_layers: int, flag: str = "--layer", owner: str = "the model") -> list[int]:
        """Layer indices in ``0..n_layers-1``, in the order given, without repeats.

        Raises SteerlabError naming ``flag`` when an index is out of range or a range is empty
        (``15-10``); ``owner`` names what has the layers in that message.
        """
        if self.items is None:
            return list(range(n_layers))
        out: list[int] = []
        for first, last in self.items:
            lo = check_layer_index(first, n_layers, flag, owner)
            hi = check_layer_index(last, n_layers, flag, owner)
            if lo > hi:
                raise SteerlabError(
                    f"{flag} {self.text!r}: the range {first}-{last} is empty (layers {lo} to {hi}); "
                    "write ranges from the lower to the higher layer"
                )
            out.extend(range(lo, hi + 1))
        return list(dict.fromkeys(out))


def parse_layer_spec(spec: LayerSpec, flag: str = "--layer") -> LayerSelection:
    """Check the grammar of ``spec`` (see the module docstring) without knowing the model.

    Accepts a grammar string, an int, a sequence of ints or a range. Raises SteerlabError naming
    ``flag`` for text that is not in the grammar or for an empty selection.
    """
    if isinstance(spec, LayerSelection):
        return spec
    if isinstance(spec, bool):
        raise SteerlabError(f"{flag} {spec!r}: {GRAMMAR_HINT}")
    if isinstance(spec, int):
        return LayerSelection(((spec, spec),), str(spec))
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() == "all":
            return LayerSelection(None, "all")
        items = []
        for part in text.split(","):
            match = _ITEM.fullmatch(part.strip())
            if match is None:
                if not text:
                    raise SteerlabError(f"{flag}: no layers given; {GRAMMAR_HINT}")
                raise SteerlabError(f"{flag} {spec!r}: {GRAMMAR_HINT}")
            first = int(match.group(1))
            last = int(match.group(2)) if match.group(2) is not None else first
            items.append((first, last))
        return LayerSelection(tuple(items), text)
    try:
        values = [_as_index(x, flag) for x in spec]
    except TypeError:
        raise SteerlabError(f"{flag} {spec!r}: {GRAMMAR_HINT}") from None
    if not values:
        raise SteerlabError(f"{flag}: no layers given; {GRAMMAR_HINT}")
    return LayerSelection(tuple((v, v) for v in values), ",".join(map(str, values)))


def _as_index(value: object, flag: str) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise SteerlabError(f"{flag}: layer {value!r} is not an integer; {GRAMMAR_HINT}")
    return int(value)  # type: ignore[call-overload]


def check_layer_index(layer: int, n_layers: int, flag: str = "--layer", owner: str = "the model") -> int:
    """One layer index checked against ``n_layers`` (negative counts from the end); returns it in
    ``0..n_layers-1``. Raises SteerlabError naming ``flag`` and ``owner`` when out of range."""
    if not -n_layers <= layer < n_layers:
        raise SteerlabError(
            f"{flag} {layer} is out of range: {owner} has {n_layers} layers (0..{n_layers - 1}; "
            "layer L is the output of block L)"
        )
    return layer % n_layers


def resolve_layers(spec: LayerSpec, n_layers: int, flag: str = "--layer", owner: str = "the model") -> list[int]:
    """Grammar and range check in one: layer indices in ``0..n_layers-1``, in the order given,
    without repeats. Raises SteerlabError naming ``flag`` (see :class:`LayerSelection`)."""
    return parse_layer_spec(spec, flag).resolve(n_layers, flag, owner)


def parse_layers(layers: LayerSpec, n_layers: int, flag: str = "--layer") -> list[int]:
    """``all``, an int, ``"10,12"``, ``"10-15"`` (inclusive), a list or a range → layer indices.

    The name the steering API has always exported; same as :func:`resolve_layers`.
    """
    return resolve_layers(layers, n_layers, flag)


def resolve_one_layer(spec: LayerSpec, n_layers: int, flag: str = "--layer", owner: str = "the model") -> int:
    """A spec that must name exactly one layer (e.g. where a single layer is drawn); returns it.

    Raises SteerlabError naming ``flag`` when the spec selects several layers (``all``, ``10-12``).
    """
    layers = resolve_layers(spec, n_layers, flag, owner)
    if len(layers) != 1:
        text = parse_layer_spec(spec, flag).text
        raise SteerlabError(f"{flag} {text!r}: this flag takes one layer, got {len(layers)}")
    return layers[0]


__all__ = [
    "GRAMMAR_HINT",
    "LayerSelection",
    "LayerSpec",
    "check_layer_index",
    "parse_layer_spec",
    "parse_layers",
    "resolve_layers",
    "resolve_one_layer",
]
