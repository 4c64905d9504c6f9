"""The op records and the op list of one SG step: the contract shared by the cost functions,
the reference CNN's timers, the microbenchmarks and every output (DESIGN.md, "The op list is
a contract").

Every op is one `OpRecord`, registered next to its cost function in costmodel.model.costs
with the `op` decorator: its name, phase, layer kind, op kind, notation (plain text, matplotlib
mathtext and the slides' LaTeX), cost function, and the rule that says whether a layer runs
it. Op order, explanations, LaTeX, plots and PyTorch's fused groups all read the records; no
other table lists ops. The order of a layer's ops within a phase is the order in which their
records are registered (costs.py registers them in step order, layer kind by layer kind).

Layers are numbered m = 1..L as in simpleNN; the loss and its gradient sit at layer L+1 with
layer kind "loss". The list is derived from the architecture alone; the reference CNN records
the ops it really runs, and a test checks the two lists agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, NamedTuple

from costmodel.model.arch import Architecture, LayerSizes

if TYPE_CHECKING:
    from costmodel.model.costs import CostFunction

PHASES = ("forward", "backward", "update")
LAYER_KINDS = ("conv", "full", "loss")

#: op kinds, for grouping (--by kind) and explanations: the slides' "matrix products" against
#: the "index manipulation" of phi(pad(Z)), pooling and their backward twins
MATMUL = "matrix product"
INDEX = "index manipulation"
ELEMENTWISE = "elementwise"
LOSS = "loss"
UPDATE = "update"
OP_KINDS = (MATMUL, INDEX, ELEMENTWISE, LOSS, UPDATE)


class OpKey(NamedTuple):
    """One op of a step: its layer m, the layer's kind, the op's name and its phase."""

    layer: int
    layer_type: str  # conv | full | loss
    op: str
    phase: str  # forward | backward | update


@dataclass(frozen=True)
class LayerContext:
    """What decides whether a layer runs an op: the architecture and layer m (m = L+1 is the loss)."""

    arch: Architecture
    m: int
    sizes: LayerSizes | None  # None for the loss

    @property
    def activation(self) -> str:
        return "none" if self.sizes is None else self.arch.activation_of(self.m)

    @property
    def flattens(self) -> bool:
        """Layer m is the first full layer after a conv layer: its input changes layout (a copy)."""
        return needs_flatten(self.arch, self.m)


def _always(ctx: LayerContext) -> bool:
    return True


@dataclass(frozen=True, eq=False)
class OpRecord:
    """Everything costmodel knows about one op of one layer kind.

    Notation templates hold ``$m`` for layer m's superscript and ``$n`` for layer m+1's.
    `latex` is the slides' LaTeX of the op (for the loss ops a mapping loss -> LaTeX).
    `runs` says whether a layer runs the op (an op a layer does not run is absent from the
    op list, never listed as zero). `twin` names the forward op whose shapes a backward op
    reuses. Records compare and hash by identity: each is registered once.
    """

    name: str
    phase: str
    layer_kind: str
    kind: str
    text: str
    mathtext: str
    latex: str | Mapping[str, str]
    cost: "CostFunction"
    runs: Callable[[LayerContext], bool] = _always
    twin: str | None = None

    def latex_for(self, loss: str) -> str:
        return self.latex[loss] if isinstance(self.latex, Mapping) else self.latex


#: (layer kind, op name) -> record, in registration order
RECORDS: dict[tuple[str, str], OpRecord] = {}


def op(layer_kind: str, name: str, phase: str, kind: str, *, text: str, mathtext: str,
       latex: str | Mapping[str, str], runs: Callable[[LayerContext], bool] = _always,
       twin: str | None = None, cost: "CostFunction | None" = None):
    """Register the record of op `name` of `layer_kind` layers, with the decorated function
    (or `cost`) as its cost function. A second registration of the same op is an error
    (as torch/utils/flop_counter.py's register)."""
    if phase not in PHASES or layer_kind not in LAYER_KINDS or kind not in OP_KINDS:
        raise ValueError(f"op {name!r}: phase {phase!r}, layer kind {layer_kind!r} or kind {kind!r} is unknown")

    def register(fn: "CostFunction") -> "CostFunction":
        if (layer_kind, name) in RECORDS:
            raise ValueError(f"op {name!r} of {layer_kind} layers is registered twice")
        RECORDS[(layer_kind, name)] = OpRecord(name, phase, layer_kind, kind, text, mathtext, latex, fn, runs, twin)
        return fn

    return register(cost) if cost is not None else register


def records() -> dict[tuple[str, str], OpRecord]:
    """Every op record (importing costmodel.model.costs registers them)."""
    import costmodel.model.costs  # noqa: F401  (registers the records)

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
    """One op of the step with its record and the sizes of the layer it belongs to."""

    key: OpKey
    sizes: LayerSizes | None  # None for the loss ops
    activation: str
    record: OpRecord

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


def needs_flatten(arch: Architecture, m: int) -> bool:
    """Layer m is the first full layer after a conv layer: its input changes layout (a copy)."""
    return 2 <= m <= arch.L and arch.layers[m - 1].type == "full" and arch.layers[m - 2].type == "conv"


def op_list(arch: Architecture) -> list[OpRef]:
    """The ordered ops of one SG step of `arch`: every layer's forward ops, the loss and its
    gradient, every layer's backward ops from layer L down to 1, every layer's update; within
    a layer and phase in the records' order, each op only where its record's rule says the
    layer runs it (no `pad` when p^m = 0, no `pool` when the pool width is 1, no activation
    ops for a linear layer, no input gradient for layer 1)."""
    table = records()
    by_kind: dict[tuple[str, str], list[OpRecord]] = {}
    for rec in table.values():
        by_kind.setdefault((rec.phase, rec.layer_kind), []).append(rec)
    sizes = arch.sizes()
    L = arch.L
    layers = [LayerContext(arch, m, sz) for m, sz in enumerate(sizes, start=1)]
    loss = LayerContext(arch, L + 1, None)
    ops: list[OpRef] = []

    def add(ctx: LayerContext, phase: str) -> None:
        kind = "loss" if ctx.sizes is None else ctx.sizes.kind
        act = ctx.activation
        for rec in by_kind.get((phase, kind), ()):
            if rec.runs(ctx):
                ops.append(OpRef(OpKey(ctx.m, kind, rec.name, phase), ctx.sizes, act, rec))

    for ctx in layers:
        add(ctx, "forward")
    add(loss, "forward")
    add(loss, "backward")
    for ctx in reversed(layers):
        add(ctx, "backward")
    for ctx in layers:
        add(ctx, "update")
    return ops


def op_keys(arch: Architecture) -> list[OpKey]:
    return [ref.key for ref in op_list(arch)]


# -- rules of whether a layer runs an op (used by the registrations in costs.py) ---------------

def has_padding(ctx: LayerContext) -> bool:
    return ctx.sizes.p > 0


def has_pooling(ctx: LayerContext) -> bool:
    return ctx.sizes.pool > 1


def has_activation(ctx: LayerContext) -> bool:
    return ctx.activation != "none"


def has_input_gradient(ctx: LayerContext) -> bool:
    """Layer 1's input is the data: it needs no input gradient."""
    return ctx.m > 1


def has_padding_gradient(ctx: LayerContext) -> bool:
    return ctx.m > 1 and ctx.sizes.p > 0


def flattens(ctx: LayerContext) -> bool:
    return ctx.flattens


def flattens_gradient(ctx: LayerContext) -> bool:
    return ctx.m > 1 and ctx.flattens
