"""Predict the step for each value of one size: the mini-batch I, or any field of the
architecture file (a layer's filters or units, its kernel, the input's height, ...).

`parse_vary` reads the command line's ``NAME=V1,V2,...``; `sweep` predicts the step once per
value (costmodel.machine.predict.predict) and groups its ops. Pure: no clock, no kernel.
"""

from __future__ import annotations

import re
from typing import Sequence

from costmodel.model.arch import Architecture
from costmodel.errors import UsageError
from costmodel.machine.predict import Prediction, predict
from costmodel.machine.profile import Profile

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")
_LAYER_FIELD = re.compile(r"layers\[(\d+)\]\.(\w+)")
#: a layer's field as a course symbol: (template, shift); layers[k] is layer m = k+1, and its
#: filters are d^{m+1}
_LAYER_SYMBOLS = {"filters": ("d{}", 1), "units": ("n{}", 1), "kernel": ("h{}", 0), "padding": ("p{}", 0),
                  "stride": ("s{}", 0), "pool": ("h{}_pool", 0)}
_SYMBOLS = {"input.height": "a^1", "input.width": "b^1", "input.channels": "d^1", "batch": "I"}


def _value(text: str) -> int | float | str:
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


def parse_vary(text: str) -> tuple[str, list]:
    """'batch=1,8,64' -> ('batch', [1, 8, 64]); 'layers[1].filters=16,32' likewise. Values are
    integers, numbers or words (float64, softmax_ce); a one-line UsageError names the bad part."""
    name, sep, values = (part.strip() for part in text.partition("="))
    if not sep:
        raise UsageError(f"--vary {text!r}: no '='; expected NAME=V1,V2,... such as batch=1,8,64,512")
    if not name:
        raise UsageError(f"--vary {text!r}: no name before '='")
    if not values:
        raise UsageError(f"--vary {text!r}: no values after '='")
    parsed: list = []
    for i, item in enumerate(values.split(","), start=1):
        item = item.strip()
        if not item:
            raise UsageError(f"--vary {text!r}: value {i} is empty")
        value = _value(item)
        if value in parsed:
            raise UsageError(f"--vary {text!r}: value {item} is listed twice")
        parsed.append(value)
    return name, parsed


def symbol(name: str) -> str:
    """The course's symbol of what varies: 'batch' -> 'I', 'layers[1].filters' -> 'd^3'
    (layer m = 2 has d^{m+1} filters); other names are returned as they are."""
    if name in _SYMBOLS:
        return _SYMBOLS[name]
    match = _LAYER_FIELD.fullmatch(name)
    if match and match[2] in _LAYER_SYMBOLS:
        template, shift = _LAYER_SYMBOLS[match[2]]
        m = int(match[1]) + 1 + shift
        return template.format(f"^{m}" if m < 10 else f"^{{{m}}}")
    return name


def vary(arch: Architecture, name: str, value) -> Architecture:
    """`arch` with `name` ('batch' or a path such as 'layers[1].filters') set to `value`,
    validated as an architecture file is (a one-line error names the place)."""
    from costmodel.model.variants import with_value

    return with_value(arch, name, value)


def sweep(arch: Architecture, profile: Profile, name: str, values: Sequence, *, impl: str = "index",
          threads: int | None = None, backend: str = "numpy") -> list[tuple[object, Prediction]]:
    """The predicted step for each value of `name`: (value, Prediction) pairs. Every value is
    checked before anything is predicted."""
    if not values:
        raise UsageError(f"{name}: no values to sweep")
    archs = [vary(arch, name, value) for value in values]
    return [(value, predict(varied, profile, impl=impl, threads=threads, backend=backend))
            for value, varied in zip(values, archs)]
