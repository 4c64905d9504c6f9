"""The costs of one SG step, computed once: `StepCosts`.

`step_costs(arch, impl)` binds every op of the op list to its layer's sizes and context and
evaluates its record's cost function on integers: one call per (op, context) with the sizes of
all the ops that share it side by side (NumPy arrays of Python integers, so the arithmetic is
exact), FLOPs, bytes read and written and memory kept per op. A quantity beyond the int64 range
is refused here, naming the op, so that no later sum wraps around. Everything downstream
(predict, the backends' rows, explain, LaTeX, the tables) reads a StepCosts instead of
recomputing it. No SymPy: costmodel.model.symbolic evaluates the same functions on symbols.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from costmodel.units import INT64_MAX
from costmodel.errors import ArchError
from costmodel.model.arch import Architecture, LayerSizes
from costmodel.model.costs import OpCost, OpSpec, check_impl
from costmodel.model.ops import OpRecord, OpRef, op_list

#: bytes per element of the index arrays (intp), docs/ops.md
INDEX_BYTES = np.dtype(np.intp).itemsize
#: the largest value a quantity of a step may take: it must fit int64 exactly
QUANTITIES = ("flops", "bytes_read", "bytes_written", "memory_kept")

#: the sizes the cost functions read (costmodel.model.symbols.SIZES) -> the LayerSizes field
#: that holds each one's value
SIZE_FIELDS = {"a": "a", "b": "b", "d": "d", "h": "h", "s": "s", "h_pool": "pool", "d_next": "d_next",
               "a_pad": "a_pad", "b_pad": "b_pad", "a_conv": "a_conv", "b_conv": "b_conv", "a_next": "a_next",
               "b_next": "b_next", "n": "n_in", "n_next": "n_out", "p_top": "p_top", "p_bottom": "p_bottom",
               "p_left": "p_left", "p_right": "p_right", "g": "g", "s_pool": "pool_stride", "c_pool": "pool_ceil"}
#: the p^m of a symmetric padding (None for a `same` padding that differs between borders:
#: then p_top, p_bottom, p_left, p_right hold it), and derived sizes that are no LayerSizes field
_DERIVED = {"p": lambda sz: sz.p_top, "d_g": lambda sz: sz.d // sz.g}


def layer_values(arch: Architecture, sizes: LayerSizes | None) -> dict[str, int]:
    """The values of the sizes of one layer (None: the loss layer L+1), by attribute name
    (Python integers; ceil mode as 1 or 0)."""
    values = {"I": arch.batch, "w": arch.itemsize, "w_idx": INDEX_BYTES, "n_loss": arch.n_classes}
    if sizes is not None:
        values.update({name: int(getattr(sizes, field)) for name, field in SIZE_FIELDS.items()})
        values.update({name: get(sizes) for name, get in _DERIVED.items()})
    return values


def op_spec(arch: Architecture, ref: OpRef, impl: str) -> OpSpec:
    """The context of one op of `arch`'s step: its layer's kind, activation, groups, pooling,
    batch norm and dropout, and whether another layer's backward reads its output."""
    sz = ref.sizes
    if sz is None:
        return OpSpec(ref.layer_type, impl, arch.loss, ref.activation, ref.last)
    partial = sz.pooled and sz.pool_ceil and ((sz.a_next - 1) * sz.pool_stride + sz.pool > sz.a_conv
                                              or (sz.b_next - 1) * sz.pool_stride + sz.pool > sz.b_conv)
    return OpSpec(ref.layer_type, impl, arch.loss, ref.activation, ref.last, grouped=sz.g > 1,
                  pool_type=sz.pool_type if sz.pooled else "max", pool_overlap=sz.pooled and sz.pool_stride < sz.pool,
                  pool_partial=bool(partial), batch_norm=sz.batch_norm, dropout=sz.dropout > 0,
                  output_read=ref.output_read)


def evaluate(groups: dict[tuple[OpRecord, OpSpec], list[dict]], shape: tuple[int, ...] = (),
             dtype=object) -> dict:
    """Each quantity of every op of `groups` ((record, spec) -> the size values of its ops):
    {(record, spec): {quantity: array of `dtype`, one element per op (times `shape`)}}.
    The values of a group's ops are stacked into arrays so that one call of the cost function
    evaluates all of them; a value may itself be an array of `shape` (the mini-batch sizes of
    costs_many), which broadcasts against the ops' axis. dtype object computes in Python
    integers (exact); int64 and float64 are faster, and exact only below 2**63 (int64) or
    2**53 (float64)."""
    out = {}
    for (rec, spec), values in groups.items():
        stacked = {}
        for name in values[0]:
            column = [v[name] for v in values]
            if isinstance(column[0], np.ndarray):
                stacked[name] = np.stack(column).astype(dtype)
            else:
                stacked[name] = np.array(column, dtype=dtype).reshape((len(column),) + (1,) * len(shape))
        cost = rec.cost(SimpleNamespace(**stacked), spec)
        full = (len(values),) + shape
        out[(rec, spec)] = {q: np.broadcast_to(np.asarray(getattr(cost, q), dtype=dtype), full) for q in QUANTITIES}
    return out


def _to_int64(values: np.ndarray, where, total: bool = True) -> np.ndarray:
    """`values` (Python ints) as int64; an ArchError naming the op (or, with `total`, the
    step, for their sum) when one value, or their sum, does not fit."""
    if values.size and int(values.max()) > INT64_MAX:
        raise ArchError(where(int(np.argmax(values > INT64_MAX))))
    if total and int(values.sum()) > INT64_MAX:
        raise ArchError(where(None))
    return values.astype(np.int64)


@dataclass(frozen=True, eq=False)
class StepCosts:
    """The costs of every op of one step of `arch` with implementation `impl` (op list order):
    int64 arrays of FLOPs, bytes read, bytes written and memory kept, one element per op."""

    arch: Architecture
    impl: str
    ops: tuple[OpRef, ...]
    specs: tuple[OpSpec, ...]
    flops: np.ndarray
    bytes_read: np.ndarray
    bytes_written: np.ndarray
    memory_kept: np.ndarray

    @property
    def bytes(self) -> np.ndarray:
        return self.bytes_read + self.bytes_written

    def __len__(self) -> int:
        return len(self.ops)

    def cost(self, i: int) -> OpCost:
        """Op i's cost with integer shapes (the arrays it reads and writes)."""
        ref = self.ops[i]
        values = layer_values(self.arch, ref.sizes)
        return ref.record.cost(SimpleNamespace(**values), self.specs[i])

    def sums(self, mask: np.ndarray | None = None) -> dict[str, int]:
        """Totals of the ops selected by `mask` (all when None): flops, bytes_read,
        bytes_written, bytes, intensity (FLOP/byte) and memory_kept_bytes."""
        sel = slice(None) if mask is None else mask
        out = {"flops": int(self.flops[sel].sum()), "bytes_read": int(self.bytes_read[sel].sum()),
               "bytes_written": int(self.bytes_written[sel].sum())}
        out["bytes"] = out["bytes_read"] + out["bytes_written"]
        out["intensity"] = out["flops"] / out["bytes"] if out["bytes"] else 0.0
        out["memory_kept_bytes"] = int(self.memory_kept[sel].sum())
        return out


def step_costs(arch: Architecture, impl: str = "index", batch: int | None = None) -> StepCosts:
    """The costs of one SG step of `arch` (at mini-batch `batch`, default the file's)."""
    check_impl(impl)
    arch = arch.with_batch(batch)
    ops = tuple(op_list(arch))
    specs = tuple(op_spec(arch, ref, impl) for ref in ops)
    per_layer = [layer_values(arch, sz) for sz in arch.sizes()] + [layer_values(arch, None)]
    groups: dict[tuple[OpRecord, OpSpec], list[dict]] = {}
    rows: dict[tuple[OpRecord, OpSpec], list[int]] = {}
    for i, (ref, spec) in enumerate(zip(ops, specs)):
        groups.setdefault((ref.record, spec), []).append(per_layer[ref.layer - 1])
        rows.setdefault((ref.record, spec), []).append(i)
    exact = {q: np.zeros(len(ops), dtype=object) for q in QUANTITIES}
    for key, quantities in evaluate(groups).items():
        for q, values in quantities.items():
            exact[q][rows[key]] = values

    def place(q: str):
        def where(i: int | None) -> str:
            what = q.replace("_", " ")
            if i is None:
                return (f"{arch.name}: the step's {what} ({float(exact[q].sum()):.3g}) exceed the 64-bit range "
                        "costmodel computes in; the sizes are too large")
            ref = ops[i]
            return (f"{arch.name}: layer {ref.layer} ({ref.layer_type}), op {ref.op}: its {what} "
                    f"({float(exact[q][i]):.3g}) exceed the 64-bit range costmodel computes in; the sizes are too large")
        return where

    return StepCosts(arch, impl, ops, specs, *(_to_int64(exact[q], place(q)) for q in QUANTITIES))


def conventions() -> dict[str, str]:
    """The FLOP, byte and memory conventions that every output states."""
    from costmodel.model.costs import BYTE_CONVENTION, FLOP_CONVENTION, MEMORY_CONVENTION

    return {"flop_convention": FLOP_CONVENTION, "byte_convention": BYTE_CONVENTION,
            "memory_convention": MEMORY_CONVENTION}
