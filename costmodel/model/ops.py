"""The op list of one SG step: the contract shared by the cost registry, the reference CNN's
timers, the microbenchmarks and every output (DESIGN.md, "The op list is a contract").

Layers are numbered m = 1..L as in simpleNN; the loss and its gradient sit at layer L+1 with
layer_type "loss". The list is derived from the architecture alone; the reference CNN records
the ops it really runs, and a test checks the two lists agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from costmodel.errors import CostModelError
from costmodel.model.arch import Architecture, LayerSizes

PHASES = ("forward", "backward", "update")

#: every op name of the contract, by phase and layer kind (DESIGN.md)
CONTRACT: dict[tuple[str, str], tuple[str, ...]] = {
    ("forward", "conv"): ("pad", "phi", "conv_matmul", "bias", "activation", "pool"),
    ("forward", "full"): ("flatten", "full_matmul", "bias", "activation"),
    ("forward", "loss"): ("loss",),
    ("backward", "loss"): ("loss_grad",),
    ("backward", "full"): ("activation_grad", "full_grad_W", "bias_grad", "full_grad_input", "flatten_grad"),
    ("backward", "conv"): ("pool_grad", "activation_grad", "conv_grad_W", "bias_grad",
                           "conv_grad_input", "phi_grad", "pad_grad"),
    ("update", "conv"): ("update",),
    ("update", "full"): ("update",),
}

OP_NAMES: frozenset[str] = frozenset(op for ops in CONTRACT.values() for op in ops)

#: matrix products: the ops that BLAS runs
MATMUL_OPS = frozenset({"conv_matmul", "conv_grad_W", "conv_grad_input",
                        "full_matmul", "full_grad_W", "full_grad_input"})


#: op kinds, for grouping (--by kind) and explanations: the slides' "matrix products" against
#: the "index manipulation" of phi(pad(Z)), pooling and their backward twins
OP_KIND: dict[str, str] = {
    **{op: "matrix product" for op in MATMUL_OPS},
    **{op: "index manipulation" for op in ("pad", "phi", "pool", "flatten", "pool_grad", "phi_grad",
                                           "pad_grad", "flatten_grad")},
    **{op: "elementwise" for op in ("bias", "activation", "activation_grad", "bias_grad")},
    "loss": "loss", "loss_grad": "loss",
    "update": "update",
}


class OpKey(NamedTuple):
    layer: int
    layer_type: str  # conv | full | loss
    op: str
    phase: str  # forward | backward | update


@dataclass(frozen=True)
class OpRef:
    """One op of the step with the sizes of the layer it belongs to."""

    key: OpKey
    sizes: LayerSizes | None  # None for the loss ops
    activation: str = "none"

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


def needs_flatten(arch: Architecture, m: int) -> bool:
    """Layer m is the first full layer after a conv layer: its input changes layout (a copy)."""
    return m >= 2 and arch.layers[m - 1].type == "full" and arch.layers[m - 2].type == "conv"


def threaded_step(arch: Architecture, impl: str, threads: int) -> bool:
    """Whether `impl` runs the step of `arch` on threads of its own: the strided implementation
    does with more than one thread, sharing every large op among them while BLAS runs
    single-threaded (calib.kernels.Workers). One way for every network: switching BLAS's
    thread count between networks made op times depend on what ran before (measured: up to
    +45 % in calibration against a training loop)."""
    return impl == "strided" and threads >= 2


#: in a threaded step, an op moving at least SPLIT_BYTES, or a product of at least SPLIT_FLOPS,
#: is shared among the threads; a smaller one runs in the calling thread (a product with
#: single-threaded BLAS): handing work to a sleeping thread costs more than it saves
SPLIT_BYTES = 1 << 22
SPLIT_FLOPS = 1 << 24


def op_regime(op: str, flops: float, nbytes: float, threaded: bool) -> str:
    """How an op runs: "" as in the index implementation (one thread; products with BLAS's own
    threads), "threaded" (shared among the strided implementation's threads) or "serial" (a
    product of a threaded step too small to share: single-threaded BLAS)."""
    if not threaded:
        return ""
    if op in MATMUL_OPS:
        return "threaded" if flops >= SPLIT_FLOPS else "serial"
    return "threaded" if nbytes >= SPLIT_BYTES else ""


def op_list(arch: Architecture) -> list[OpRef]:
    """The ordered ops of one SG step (forward, backward, update) of `arch`.

    An op the implementation does not run is absent, never listed as zero: no `pad`/`pad_grad`
    when p^m = 0, no `pool`/`pool_grad` when the pool width is 1, no activation ops for a linear
    layer, no input gradient (and so no phi_grad, pad_grad, flatten_grad) for layer 1.
    """
    extended = arch.extended_vocabulary()  # until the op records of issue 14 exist
    if extended is not None:
        raise CostModelError(f"{arch.name}: {extended}: the costs of the extended vocabulary "
                             "are not modelled yet (issue 14)")
    sizes = arch.sizes()
    L = arch.L
    ops: list[OpRef] = []

    def add(m: int, kind: str, op: str, phase: str) -> None:
        sz = sizes[m - 1] if kind != "loss" else None
        act = arch.activation_of(m) if kind != "loss" else "none"
        ops.append(OpRef(OpKey(m, kind, op, phase), sz, act))

    for m, sz in enumerate(sizes, start=1):
        act = arch.activation_of(m)
        if sz.kind == "conv":
            if sz.p > 0:
                add(m, "conv", "pad", "forward")
            add(m, "conv", "phi", "forward")
            add(m, "conv", "conv_matmul", "forward")
            add(m, "conv", "bias", "forward")
            if act == "relu":
                add(m, "conv", "activation", "forward")
            if sz.pool > 1:
                add(m, "conv", "pool", "forward")
        else:
            if needs_flatten(arch, m):
                add(m, "full", "flatten", "forward")
            add(m, "full", "full_matmul", "forward")
            add(m, "full", "bias", "forward")
            if act == "relu":
                add(m, "full", "activation", "forward")
    add(L + 1, "loss", "loss", "forward")
    add(L + 1, "loss", "loss_grad", "backward")
    for m in range(L, 0, -1):
        sz = sizes[m - 1]
        act = arch.activation_of(m)
        if sz.kind == "conv":
            if sz.pool > 1:
                add(m, "conv", "pool_grad", "backward")
            if act == "relu":
                add(m, "conv", "activation_grad", "backward")
            add(m, "conv", "conv_grad_W", "backward")
            add(m, "conv", "bias_grad", "backward")
            if m > 1:
                add(m, "conv", "conv_grad_input", "backward")
                add(m, "conv", "phi_grad", "backward")
                if sz.p > 0:
                    add(m, "conv", "pad_grad", "backward")
        else:
            if act == "relu":
                add(m, "full", "activation_grad", "backward")
            add(m, "full", "full_grad_W", "backward")
            add(m, "full", "bias_grad", "backward")
            if m > 1:
                add(m, "full", "full_grad_input", "backward")
                if needs_flatten(arch, m):
                    add(m, "full", "flatten_grad", "backward")
    for m, sz in enumerate(sizes, start=1):
        add(m, sz.kind, "update", "update")
    return ops


def op_keys(arch: Architecture) -> list[OpKey]:
    return [ref.key for ref in op_list(arch)]
