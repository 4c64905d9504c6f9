"""The op list of one SG step: the contract shared by the cost functions, the reference CNN's
timers, the microbenchmarks and every output (DESIGN.md, "The op list is a contract"), read
from the op records (costmodel.model.records, registered by costmodel.model.layers).

Layers are numbered m = 1..L as in simpleNN; the loss and its gradient sit at layer L+1 with
layer kind "loss". The list is derived from the architecture alone; the reference CNN records
the ops it really runs, and a test checks the two lists agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import costmodel.model.layers  # noqa: F401  (registers the records)
from costmodel.model.arch import Architecture, LayerSizes
from costmodel.model.records import (ELEMENTWISE, INDEX, LOSS, MATMUL, OP_KINDS, PHASES, RECORDS, UPDATE,  # noqa: F401
                                     LayerContext, OpKey, OpRecord, needs_flatten, op)


def records() -> dict[tuple[str, str], OpRecord]:
    """Every op record, (layer kind, name) -> record, in registration order."""
    return RECORDS


def record(layer_kind: str, name: str) -> OpRecord:
    """The record of op `name` of `layer_kind` layers; UnknownOpError if there is none."""
    try:
        return records()[(layer_kind, name)]
    except KeyError:
        from costmodel.model.costs import UnknownOpError

        known = ", ".join(sorted({n for _, n in RECORDS}))
        raise UnknownOpError(f"no op {name!r} for {layer_kind} layers; known ops: {known}") from None


def op_names() -> frozenset[str]:
    """Every op name of the contract."""
    return frozenset(name for _, name in records())


def contract() -> dict[tuple[str, str], tuple[str, ...]]:
    """(phase, layer kind) -> the op names in step order (DESIGN.md's table)."""
    out: dict[tuple[str, str], tuple[str, ...]] = {}
    for rec in records().values():
        out[(rec.phase, rec.layer_kind)] = out.get((rec.phase, rec.layer_kind), ()) + (rec.name,)
    return out


def op_kind(layer_kind: str, name: str) -> str:
    return record(layer_kind, name).kind


@dataclass(frozen=True)
class OpRef:
    """One op of the step with its record and the sizes of the layer it belongs to; `last`:
    the layer is layer L; `output_read`: a backward op of a later layer reads the layer's
    output (the input of a full layer that does not flatten it, or Z^{L+1} for mse)."""

    key: OpKey
    sizes: LayerSizes | None  # None for the loss ops
    activation: str
    record: OpRecord
    last: bool = False
    output_read: bool = False

    @property
    def layer(self) -> int:
        return self.key.layer

    @property
    def op(self) -> str:
        return self.key.op

    @property
    def phase(self) -> str:
        return self.key.phase

    @property
    def layer_type(self) -> str:
        return self.key.layer_type

    @property
    def kind(self) -> str:
        return self.record.kind


def op_list(arch: Architecture) -> list[OpRef]:
    """The ordered ops of one SG step of `arch`: every layer's forward ops, the loss and its
    gradient, every layer's backward ops from layer L down to 1, every layer's update; within
    a layer and phase in the records' order, each op only where its record's rule says the
    layer runs it (no `pad` when p^m = 0, no `pool` when the pool width is 1, no activation
    ops for a linear layer, no input gradient for a layer that reads the network's input).
    The layers are the flat list of Architecture.sizes() (a residual block's conv layers, its
    projection and its addition are layers of their own); the backward visits them in
    reverse order."""
    table = records()
    by_kind: dict[tuple[str, str], list[OpRecord]] = {}
    for rec in table.values():
        by_kind.setdefault((rec.phase, rec.layer_kind), []).append(rec)
    sizes = arch.sizes()
    L = len(sizes)
    read = output_read(arch, sizes)
    layers = [LayerContext(arch, m, sz) for m, sz in enumerate(sizes, start=1)]
    loss = LayerContext(arch, L + 1, None)
    ops: list[OpRef] = []

    def add(ctx: LayerContext, phase: str) -> None:
        kind = "loss" if ctx.sizes is None else ctx.sizes.kind
        act = ctx.activation
        last, out_read = ctx.m == L, ctx.m in read
        for rec in by_kind.get((phase, kind), ()):
            if rec.runs(ctx):
                ops.append(OpRef(OpKey(ctx.m, kind, rec.name, phase), ctx.sizes, act, rec, last, out_read))

    for ctx in layers:
        add(ctx, "forward")
    add(loss, "forward")
    add(loss, "backward")
    for ctx in reversed(layers):
        add(ctx, "backward")
    for ctx in layers:
        add(ctx, "update")
    return ops


def output_read(arch: Architecture, sizes: list[LayerSizes]) -> set[int]:
    """The layers m whose output a backward op of another layer reads: the input of a full
    layer that does not flatten it (its full_grad_W reads it) and, for mse, layer L's output
    (the loss's gradient reads it)."""
    read = {i for sz in sizes if sz.kind == "full" and not sz.flatten for i in sz.inputs if i > 0}
    if arch.loss == "mse":
        read.add(len(sizes))
    return read


def op_keys(arch: Architecture) -> list[OpKey]:
    return [ref.key for ref in op_list(arch)]


