"""The symbolic costs evaluated for an architecture: tables, the JSON report, the symbolic form.

Each op's four expressions (FLOPs, bytes read, bytes written, memory kept) are lambdified
once per op context (`OpSpec`, which holds the op and the impl) and cached; an architecture's
ops with the same context are evaluated in one vectorised call, and so are many mini-batch
sizes at once. Every output states the conventions of costmodel.model.costs. SymPy and pandas are
imported on first use, so that importing this module stays cheap.
"""

from __future__ import annotations

import itertools
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Iterable

import numpy as np

from costmodel.model.arch import Architecture, parse_arch
from costmodel.errors import ArchError, UsageError

if TYPE_CHECKING:
    import pandas as pd

    from costmodel.model.costs import OpSpec
    from costmodel.model.shapes import BoundOp

QUANTITIES = ("flops", "bytes_read", "bytes_written", "memory_kept")
COLUMNS = ("layer", "layer_type", "op", "phase", "flops", "bytes_read", "bytes_written",
           "bytes", "intensity", "memory_kept_bytes")
_LABELS = ("layer", "layer_type", "op", "phase")


def conventions() -> dict[str, str]:
    """The FLOP, byte and memory conventions that every output states."""
    from costmodel.model.costs import BYTE_CONVENTION, FLOP_CONVENTION, MEMORY_CONVENTION

    return {"flop_convention": FLOP_CONVENTION, "byte_convention": BYTE_CONVENTION,
            "memory_convention": MEMORY_CONVENTION}


@lru_cache(maxsize=None)
def compiled(spec: "OpSpec"):
    """(symbols, f): f(*values of symbols) -> (flops, bytes_read, bytes_written, memory_kept)."""
    import sympy as sp

    from costmodel.model.costs import op_cost

    cost = op_cost(spec)
    exprs = tuple(getattr(cost, q) for q in QUANTITIES)
    args = tuple(sorted(set().union(*(e.free_symbols for e in exprs)), key=lambda s: s.name))
    return args, sp.lambdify(args, exprs, modules="numpy", docstring_limit=0)


def evaluate(ops: list["BoundOp"], batch: np.ndarray) -> dict[str, np.ndarray]:
    """Each quantity of each op for each mini-batch size: int64 arrays (len(ops), len(batch)).

    One call per op context: its ops' values are a column, the batch sizes a row.
    """
    from costmodel.model.symbols import I

    out = {q: np.empty((len(ops), len(batch)), dtype=np.int64) for q in QUANTITIES}
    groups: dict = {}
    for i, op in enumerate(ops):
        groups.setdefault(op.spec, []).append(i)
    for spec, rows in groups.items():
        args, f = compiled(spec)
        values = [batch[None, :] if s == I else
                  np.array([ops[r].values[s] for r in rows], dtype=np.int64)[:, None]
                  for s in args]
        for q, result in zip(QUANTITIES, f(*values)):
            out[q][rows] = result
    return out


def _table(labels: dict[str, np.ndarray], q: dict[str, np.ndarray]) -> "pd.DataFrame":
    import pandas as pd

    total = q["bytes_read"] + q["bytes_written"]
    frame = pd.DataFrame({**labels, "flops": q["flops"], "bytes_read": q["bytes_read"],
                          "bytes_written": q["bytes_written"], "bytes": total,
                          "intensity": q["flops"] / total,
                          "memory_kept_bytes": q["memory_kept"]})
    frame.attrs.update(conventions())
    return frame


def _labels(ops: list["BoundOp"]) -> dict[str, np.ndarray]:
    return {"layer": np.array([op.ref.layer for op in ops], dtype=np.int64),
            **{k: np.array([getattr(op.ref, k) for op in ops], dtype=object)
               for k in _LABELS[1:]}}


def _step(arch: Architecture, impl: str) -> tuple[list["BoundOp"], dict[str, np.ndarray]]:
    """The ops of one step of `arch` and each quantity of each op (1-D int64 arrays)."""
    from costmodel.model.shapes import bound_ops

    ops = bound_ops(arch, impl)
    q = evaluate(ops, np.array([arch.batch], dtype=np.int64))
    return ops, {k: v[:, 0] for k, v in q.items()}


def costs(arch: Architecture, impl: str = "index", batch: int | None = None) -> "pd.DataFrame":
    """One row per op of the step (op_list order) with columns `COLUMNS`."""
    ops, q = _step(arch.with_batch(batch), impl)
    return _table(_labels(ops), q)


# -- many variants ---------------------------------------------------------------------------

_PATH = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


def _with_value(arch: Architecture, path: str, value) -> Architecture:
    """`arch` with the field at `path` ("layers[0].filters", "input.height", ...) set, validated."""
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


def _batches(values: Iterable) -> np.ndarray:
    batch = np.asarray(values).ravel()
    if batch.size == 0 or batch.dtype.kind not in "iu" or (batch < 1).any():
        raise ArchError("batch: the mini-batch sizes must be positive integers")
    return batch.astype(np.int64)


def costs_many(arch: Architecture, impl: str = "index", **variants) -> "pd.DataFrame":
    """The costs of many variants of `arch` in one call: one long table.

    Each keyword names what varies and lists its values: ``batch`` (I), or a path into the
    architecture file such as ``"layers[0].filters"`` or ``"input.height"`` (pass it as
    ``**{"layers[0].filters": [16, 32]}``). Several keywords make the grid of all
    combinations, batch varying fastest. Columns: ``variant`` (0, 1, ...), one column per
    keyword with its value, then `COLUMNS`.
    """
    from costmodel.model.shapes import bound_ops

    if not variants:
        raise UsageError("costs_many: give the values of at least one size, e.g. batch=[1, 2]")
    batch_varies = "batch" in variants
    batch = _batches(variants.pop("batch") if batch_varies else [arch.batch])
    paths = list(variants)
    grid = list(itertools.product(*(list(variants[p]) for p in paths)))
    archs = []
    for combo in grid:
        varied = arch
        for path, value in zip(paths, combo):
            varied = _with_value(varied, path, value)
        archs.append(varied)

    ops: list["BoundOp"] = []
    row, col, structure = [], [], []
    for j, varied in enumerate(archs):
        first, ops_j = len(ops), bound_ops(varied, impl)
        ops += ops_j
        row.append(np.tile(np.arange(first, first + len(ops_j)), len(batch)))
        col.append(np.repeat(np.arange(len(batch)), len(ops_j)))
        structure.append(np.full(len(ops_j) * len(batch), j))
    row, col, structure = np.concatenate(row), np.concatenate(col), np.concatenate(structure)

    q = evaluate(ops, batch)
    labels = {"variant": structure * len(batch) + col}
    for i, path in enumerate(paths):
        labels[path] = np.array([combo[i] for combo in grid])[structure]
    if batch_varies:
        labels["batch"] = batch[col]
    labels.update({k: v[row] for k, v in _labels(ops).items()})
    return _table(labels, {k: v[row, col] for k, v in q.items()})


# -- the JSON report -------------------------------------------------------------------------

def _sums(q: dict[str, np.ndarray], rows: np.ndarray) -> dict:
    out = {"flops": int(q["flops"][rows].sum()), "bytes_read": int(q["bytes_read"][rows].sum()),
           "bytes_written": int(q["bytes_written"][rows].sum())}
    out["bytes"] = out["bytes_read"] + out["bytes_written"]
    out["intensity"] = out["flops"] / out["bytes"]
    out["memory_kept_bytes"] = int(q["memory_kept"][rows].sum())
    return out


def costs_report(arch: Architecture, impl: str = "index", batch: int | None = None) -> dict:
    """The per-op costs as DESIGN.md's JSON object, with totals by phase, by layer and all.

    Built from the evaluated arrays without pandas, so that ``--format json`` stays quick.
    """
    arch = arch.with_batch(batch)
    ops, q = _step(arch, impl)
    rows = []
    for i, op in enumerate(ops):
        row = {"layer": op.ref.layer, "layer_type": op.ref.layer_type, "op": op.ref.op,
               "phase": op.ref.phase, **_sums(q, np.array([i]))}
        rows.append({**row, "seconds": None, "fraction": None})
    layer = np.array([op.ref.layer for op in ops])
    phase = np.array([op.ref.phase for op in ops])
    totals = {
        "by_phase": {ph: _sums(q, phase == ph) for ph in dict.fromkeys(phase.tolist())},
        "by_layer": {str(m): _sums(q, layer == m) for m in sorted(set(layer.tolist()))},
        "total": _sums(q, np.ones(len(ops), dtype=bool)),
    }
    return {"arch": arch.name, "batch": arch.batch, "dtype": arch.dtype, "impl": impl,
            **conventions(), "ops": rows, "totals": totals}


# -- the symbolic form (--symbolic) ----------------------------------------------------------

@lru_cache(maxsize=None)
def _symbolic(spec: "OpSpec") -> dict[str, dict[str, str]]:
    from costmodel.model.costs import op_cost
    from costmodel.model.symbols import leading_term, order_latex, order_text, to_latex, to_text

    cost = op_cost(spec)
    out = {}
    for name in ("flops", "bytes_read", "bytes_written", "bytes", "memory_kept"):
        expr = getattr(cost, name)
        lead = leading_term(expr)
        out[name] = {"text": to_text(expr), "latex": to_latex(expr),
                     "leading_text": to_text(lead), "leading_latex": to_latex(lead),
                     "order_text": order_text(expr), "order_latex": order_latex(expr)}
    return out


def symbolic_report(arch: Architecture, impl: str = "index") -> dict:
    """Per op of the step, its exact FLOP, byte and memory expressions in the course's
    notation, their leading terms and orders, as plain text and as LaTeX."""
    from costmodel.model.shapes import bound_ops
    from costmodel.model.symbols import LATEX_NAMES

    ops = [{"layer": op.ref.layer, "layer_type": op.ref.layer_type, "op": op.ref.op,
            "phase": op.ref.phase, **_symbolic(op.spec)} for op in bound_ops(arch, impl)]
    return {"arch": arch.name, "dtype": arch.dtype, "impl": impl, **conventions(),
            "symbols": dict(LATEX_NAMES), "ops": ops}
