"""Shape propagation: the ops of an architecture's step, each with its context and the values
of its layer's symbols (I, a^m, d^m, h^m, a^m_conv, ... from `Architecture.sizes()`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from costmodel.model import symbols as sym
from costmodel.model.arch import Architecture, LayerSizes
from costmodel.model.costs import OpSpec, check_impl, op_cost
from costmodel.model.ops import OpRef, op_list

#: bytes per element of the index arrays (intp), docs/ops.md
INDEX_BYTES = np.dtype(np.intp).itemsize


@dataclass(frozen=True)
class BoundOp:
    """One op of the step: its place in the op list, its cost context and its layer's values."""

    ref: OpRef
    spec: OpSpec
    values: dict  # CourseSymbol -> int


def layer_values(arch: Architecture, sizes: LayerSizes | None) -> dict:
    """The values of the symbols of one layer (sizes None: the loss layer L+1)."""
    values = {sym.I: arch.batch, sym.w: arch.itemsize, sym.w_idx: INDEX_BYTES}
    if sizes is None:
        values[sym.n_loss] = arch.n_classes
    else:
        values.update({s: getattr(sizes, field) for s, field in sym.SIZE_FIELDS.items()})
    return values


def bound_ops(arch: Architecture, impl: str = "index") -> list[BoundOp]:
    """`costmodel.model.ops.op_list(arch)` with, per op, its OpSpec and its layer's symbol values."""
    check_impl(impl)
    per_layer = [layer_values(arch, sz) for sz in arch.sizes()] + [layer_values(arch, None)]
    return [
        BoundOp(ref,
                OpSpec(ref.op, ref.layer_type, impl, arch.loss, ref.activation, ref.layer == arch.L),
                per_layer[ref.layer - 1])
        for ref in op_list(arch)
    ]


def array_shapes(op: BoundOp) -> dict[str, list[tuple[tuple[int, ...], str]]]:
    """The numeric shapes and kinds ("float" | "index") of the arrays the op reads and writes."""
    cost = op_cost(op.spec)

    def numeric(arrays):
        return [(tuple(int(dim.xreplace(op.values)) for dim in x.shape), x.kind) for x in arrays]

    return {"reads": numeric(cost.reads), "writes": numeric(cost.writes)}
