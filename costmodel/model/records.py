"""The op records: one `OpRecord` per op of the contract, registered next to its cost function
in costmodel.model.layers with the `op` decorator: its name, phase, layer kind, op kind,
notation (plain text, matplotlib mathtext and the slides' LaTeX), cost function, and the rule
that says whether a layer runs it. Op order (costmodel.model.ops), explanations, LaTeX, plots
and PyTorch's fused groups all read the records; no other table lists ops. The order of a
layer's ops within a phase is the order in which their records are registered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    reuses; `how` says, per implementation, how its kernel does the op (explain cites it).
    Records compare and hash by identity: each is registered once.
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
    how: Mapping[str, str] = field(default_factory=dict)  # implementation -> how its kernel does it

    def latex_for(self, loss: str) -> str:
        return self.latex[loss] if isinstance(self.latex, Mapping) else self.latex


#: (layer kind, op name) -> record, in registration order
RECORDS: dict[tuple[str, str], OpRecord] = {}


def op(layer_kind: str, name: str, phase: str, kind: str, *, text: str, mathtext: str,
       latex: str | Mapping[str, str], runs: Callable[[LayerContext], bool] = _always,
       twin: str | None = None, how: Mapping[str, str] | None = None, cost: "CostFunction | None" = None):
    """Register the record of op `name` of `layer_kind` layers, with the decorated function
    (or `cost`) as its cost function. A second registration of the same op is an error
    (as torch/utils/flop_counter.py's register)."""
    if phase not in PHASES or layer_kind not in LAYER_KINDS or kind not in OP_KINDS:
        raise ValueError(f"op {name!r}: phase {phase!r}, layer kind {layer_kind!r} or kind {kind!r} is unknown")

    def register(fn: "CostFunction") -> "CostFunction":
        if (layer_kind, name) in RECORDS:
            raise ValueError(f"op {name!r} of {layer_kind} layers is registered twice")
        RECORDS[(layer_kind, name)] = OpRecord(name, phase, layer_kind, kind, text, mathtext, latex, fn, runs, twin,
                                               dict(how or {}))
        return fn

    return register(cost) if cost is not None else register


def needs_flatten(arch: Architecture, m: int) -> bool:
    """Layer m is the first full layer after a conv layer: its input changes layout (a copy)."""
    return 2 <= m <= arch.L and arch.layers[m - 1].type == "full" and arch.layers[m - 2].type == "conv"


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
