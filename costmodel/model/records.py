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
    from costmodel.model.costs import CostFunction, OpSpec

PHASES = ("forward", "backward", "update")
LAYER_KINDS = ("conv", "full", "global_avg_pool", "residual_add", "loss")

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
    layer_type: str  # conv | full | global_avg_pool | residual_add | loss
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
        """The layer's activation (Architecture.activation_of: the last full layer is linear)."""
        return "none" if self.sizes is None else self.sizes.activation

    @property
    def flattens(self) -> bool:
        """Layer m is a full layer whose input is an image (from a conv layer or a residual
        addition): its input changes layout (a copy)."""
        return self.sizes is not None and self.sizes.flatten


def _always(ctx: LayerContext) -> bool:
    return True


@dataclass(frozen=True, eq=False)
class OpRecord:
    """Everything costmodel knows about one op of one layer kind.

    Notation templates hold ``$m`` for layer m's superscript and ``$n`` for layer m+1's.
    `latex` is the slides' LaTeX of the op (for the loss ops a mapping loss -> LaTeX; a
    function of the op's OpSpec where the notation depends on it, as pooling's window).
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
    latex: str | Mapping[str, str] | Callable[["OpSpec"], str]
    cost: "CostFunction"
    runs: Callable[[LayerContext], bool] = _always
    twin: str | None = None
    #: implementation -> how its kernel does it (or a function of the OpSpec giving that mapping)
    how: Mapping[str, str] | Callable[["OpSpec"], Mapping[str, str]] = field(default_factory=dict)

    def latex_for(self, loss: str, spec: "OpSpec | None" = None) -> str:
        """The op's LaTeX for this loss (and this context, where the notation depends on it;
        without `spec` the default context of the layer kind)."""
        if callable(self.latex):
            from costmodel.model.costs import OpSpec

            return self.latex(spec if spec is not None else OpSpec(self.layer_kind, loss=loss))
        return self.latex[loss] if isinstance(self.latex, Mapping) else self.latex

    def how_for(self, spec: "OpSpec") -> Mapping[str, str]:
        """Implementation -> how its kernel does the op in this context."""
        return self.how(spec) if callable(self.how) else self.how


#: (layer kind, op name) -> record, in registration order
RECORDS: dict[tuple[str, str], OpRecord] = {}


def op(layer_kind: str, name: str, phase: str, kind: str, *, text: str, mathtext: str,
       latex: str | Mapping[str, str] | Callable, runs: Callable[[LayerContext], bool] = _always,
       twin: str | None = None, how: Mapping[str, str] | Callable | None = None,
       cost: "CostFunction | None" = None):
    """Register the record of op `name` of `layer_kind` layers, with the decorated function
    (or `cost`) as its cost function. A second registration of the same op is an error
    (as torch/utils/flop_counter.py's register)."""
    if phase not in PHASES or layer_kind not in LAYER_KINDS or kind not in OP_KINDS:
        raise ValueError(f"op {name!r}: phase {phase!r}, layer kind {layer_kind!r} or kind {kind!r} is unknown")

    def register(fn: "CostFunction") -> "CostFunction":
        if (layer_kind, name) in RECORDS:
            raise ValueError(f"op {name!r} of {layer_kind} layers is registered twice")
        RECORDS[(layer_kind, name)] = OpRecord(name, phase, layer_kind, kind, text, mathtext, latex, fn, runs, twin,
                                               how if callable(how) else dict(how or {}))
        return fn

    return register(cost) if cost is not None else register


def needs_flatten(arch: Architecture, m: int) -> bool:
    """Layer m of the flat list is a full layer whose input is an image from a conv layer or a
    residual addition: its input changes layout (a copy; LayerSizes.flatten). After global
    average pooling the d x I output already is the matrix a full layer reads."""
    return 1 <= m <= arch.L and arch.sizes()[m - 1].flatten


# -- rules of whether a layer runs an op (used by the registrations in costmodel.model.layers) --

def has_padding(ctx: LayerContext) -> bool:
    """The layer pads its input on some border (p^m > 0, or a `same` padding)."""
    return ctx.sizes.padded


def has_pooling(ctx: LayerContext) -> bool:
    return ctx.sizes.pooled


def has_activation(ctx: LayerContext) -> bool:
    return ctx.activation != "none"


def has_batch_norm(ctx: LayerContext) -> bool:
    return ctx.sizes.batch_norm


def has_dropout(ctx: LayerContext) -> bool:
    return ctx.sizes.dropout > 0


def has_input_gradient(ctx: LayerContext) -> bool:
    """A layer that reads the network's input (layer 1; a projection shortcut or the first
    layer of a residual block on it) needs no input gradient."""
    return 0 not in ctx.sizes.inputs


def has_padding_gradient(ctx: LayerContext) -> bool:
    return has_input_gradient(ctx) and ctx.sizes.padded


def flattens(ctx: LayerContext) -> bool:
    return ctx.flattens


def flattens_gradient(ctx: LayerContext) -> bool:
    return has_input_gradient(ctx) and ctx.flattens


def forks(ctx: LayerContext) -> bool:
    """The layer's output is a residual block's input X (LayerSizes.fork): two gradients come
    back to it, F's and the shortcut's, and its backward starts by summing them."""
    return ctx.sizes.fork
