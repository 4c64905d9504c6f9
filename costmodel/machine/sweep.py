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
_SYMBOLS = {"input.height": "a^1", "input.width": "b^1", "input.channels": "d^1", "batch": "I", "workers": "P"}
#: the name that sweeps the number of data-parallel workers P (not a field of the architecture)
WORKERS = "workers"


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
          threads: int | None = None, backend: str = "numpy", data_parallel=None) -> list[tuple[object, Prediction]]:
    """The predicted step for each value of `name`: (value, Prediction) pairs. Every value is
    checked before anything is predicted.

    `data_parallel` (costmodel.machine.backends.parallel.Setting): every step is predicted on its
    P workers; `name` "workers" sweeps P itself (it needs a setting, whose own P is then
    replaced), and every P must divide the mini-batch I (a UsageError names those that do not)."""
    if not values:
        raise UsageError(f"{name}: no values to sweep")
    if name == WORKERS:
        return _sweep_workers(arch, profile, values, impl=impl, threads=threads, backend=backend,
                              setting=data_parallel)
    archs = [vary(arch, name, value) for value in values]
    if data_parallel is None:
        return [(value, predict(varied, profile, impl=impl, threads=threads, backend=backend))
                for value, varied in zip(values, archs)]
    from costmodel.machine.backends.parallel import predict_data_parallel, worker_batch

    for value, varied in zip(values, archs):
        try:
            worker_batch(varied.batch, data_parallel.workers)
        except UsageError as exc:
            raise UsageError(f"--vary {name}={value}: {exc}") from None
    return [(value, predict_data_parallel(varied, profile, data_parallel, impl=impl, threads=threads,
                                          backend=backend)) for value, varied in zip(values, archs)]


def check_workers_values(I: int, values: Sequence) -> None:
    """Every value of --vary workers=... is a number of workers that divides the mini-batch I; a
    UsageError names those that are not."""
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad:
        raise UsageError(f"--vary workers: {bad[0]!r} is not a number of workers (a whole number, at least 1)")
    bad = [P for P in values if I % P]
    if bad:
        some = ", ".join(map(str, bad))
        raise UsageError(f"--vary workers: {some} do{'es' if len(bad) == 1 else ''} not divide the mini-batch "
                         f"I={I}: every worker takes I/P instances; choose a --batch they all divide "
                         f"(e.g. {_multiple(I, values)})")


def _sweep_workers(arch: Architecture, profile: Profile, values: Sequence, *, impl: str, threads: int | None,
                   backend: str, setting) -> list[tuple[object, Prediction]]:
    """The step on each number of workers P of `values` (sweep)."""
    from dataclasses import replace

    from costmodel.machine.backends.parallel import predict_data_parallel

    if setting is None:
        raise UsageError("--vary workers: a data-parallel sweep needs a link: give --link (or --latency and "
                         "--bandwidth), or run `costmodel calibrate --network`")
    check_workers_values(arch.batch, values)
    one_worker = predict(arch, profile, impl=impl, threads=threads, backend=backend)
    return [(P, predict_data_parallel(arch, profile, replace(setting, workers=P), impl=impl,
                                      threads=one_worker.threads, backend=backend, one_worker=one_worker))
            for P in values]


def _multiple(I: int, values: Sequence[int]) -> int:
    """The smallest mini-batch of at least I that every value divides."""
    import math

    lcm = math.lcm(*values)
    return -(-I // lcm) * lcm
