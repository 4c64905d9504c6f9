"""Many variants of an architecture at once: a field set by its path ("layers[0].filters"),
and the costs of every combination of values of several fields and mini-batch sizes.

`with_value` is how `sweep --vary` and `costs_frame(vary=...)` change one field: the file's
data with the field replaced, validated again as an architecture file is. `costs_many`
evaluates every variant's ops in one call per (op, context), with the mini-batch sizes as a
second axis, exactly (Python integers) and refused beyond int64 as a single step is.
"""

from __future__ import annotations

import itertools
import re
from typing import Iterable

import numpy as np

from costmodel.errors import ArchError, UsageError
from costmodel.model.arch import Architecture, parse_arch
from costmodel.model.costs import check_impl
from costmodel.model.ops import op_list
from costmodel.model.step import QUANTITIES, _to_int64, evaluate, layer_values, op_spec

_PATH = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


def with_value(arch: Architecture, path: str, value) -> Architecture:
    """`arch` with the field at `path` ("layers[0].filters", "input.height", "batch", ...) set
    to `value` and validated as an architecture file is (a one-line error names the place)."""
    data = arch.model_dump()
    keys = [int(i) if i else k for i, k in _PATH.findall(path)]
    if not keys:
        raise UsageError(f"{path!r} is not a path into the architecture")
    node = data
    try:
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value.item() if isinstance(value, np.generic) else value
    except (KeyError, IndexError, TypeError):
        raise UsageError(f"{path}: no such place in architecture {arch.name!r}") from None
    return parse_arch(data, f"{path}={value}")


def batches(values: Iterable) -> np.ndarray:
    """Mini-batch sizes as an int64 array; ArchError unless they are positive integers."""
    batch = np.asarray(values).ravel()
    if batch.size == 0 or batch.dtype.kind not in "iu" or (batch < 1).any():
        raise ArchError("batch: the mini-batch sizes must be positive integers")
    return batch.astype(np.int64)


def costs_many(arch: Architecture, impl: str = "index", **variants) -> dict[str, np.ndarray]:
    """The costs of many variants of `arch` in one call: columns of one long table.

    Each keyword names what varies and lists its values: ``batch`` (I), or a path into the
    architecture file such as ``"layers[0].filters"`` (pass it as
    ``**{"layers[0].filters": [16, 32]}``). Several keywords make the grid of all combinations,
    batch varying fastest. Columns: ``variant`` (0, 1, ...), one column per keyword with its
    value, then layer, layer_type, op, phase and the quantities flops, bytes_read,
    bytes_written, memory_kept (int64).
    """
    check_impl(impl)
    if not variants:
        raise UsageError("costs_many: give the values of at least one size, e.g. batch=[1, 2]")
    batch_varies = "batch" in variants
    batch = batches(variants.pop("batch") if batch_varies else [arch.batch])
    paths = list(variants)
    grid = list(itertools.product(*(list(variants[p]) for p in paths)))
    archs = []
    for combo in grid:
        varied = arch
        for path, value in zip(paths, combo):
            varied = with_value(varied, path, value)
        archs.append(varied)

    refs, groups, rows, row, col, structure = [], {}, {}, [], [], []
    for j, varied in enumerate(archs):
        per_layer = [layer_values(varied, sz) for sz in varied.sizes()] + [layer_values(varied, None)]
        first = len(refs)
        for ref in op_list(varied):
            key = (ref.record, op_spec(varied, ref, impl))
            groups.setdefault(key, []).append(dict(per_layer[ref.layer - 1], I=batch))
            rows.setdefault(key, []).append(len(refs))
            refs.append(ref)
        n = len(refs) - first
        row.append(np.tile(np.arange(first, first + n), len(batch)))
        col.append(np.repeat(np.arange(len(batch)), n))
        structure.append(np.full(n * len(batch), j))
    row, col, structure = np.concatenate(row), np.concatenate(col), np.concatenate(structure)
    # float64 first: if every quantity is far below 2**63, int64 is exact and fast; else
    # Python integers decide exactly which variant leaves the range
    dtype = np.int64
    for quantities in evaluate(groups, (len(batch),), np.float64).values():
        if any(float(values.max(initial=0.0)) >= 2.0 ** 62 for values in quantities.values()):
            dtype = object
            break
    exact = {q: np.zeros((len(refs), len(batch)), dtype=dtype) for q in QUANTITIES}
    for key, quantities in evaluate(groups, (len(batch),), dtype).items():
        for q, values in quantities.items():
            exact[q][rows[key]] = values

    def where(q):
        return lambda i: (f"{arch.name}: a variant's {q.replace('_', ' ')} exceeds the 64-bit range costmodel "
                          "computes in; the sizes are too large")

    out: dict[str, np.ndarray] = {"variant": structure * len(batch) + col}
    for i, path in enumerate(paths):
        out[path] = np.array([combo[i] for combo in grid])[structure]
    if batch_varies:
        out["batch"] = batch[col]
    out["layer"] = np.array([r.layer for r in refs], dtype=np.int64)[row]
    for label in ("layer_type", "op", "phase"):
        out[label] = np.array([getattr(r, label) for r in refs], dtype=object)[row]
    for q in QUANTITIES:
        values = exact[q][row, col]
        out[q] = values if dtype is np.int64 else _to_int64(values, where(q), total=False)
    return out
