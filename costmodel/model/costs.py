"""The symbolic cost registry: one pure function per op of the contract (docs/ops.md).

Each function returns the op's `OpCost`: its FLOPs and the arrays it reads and writes, as
SymPy shapes in simpleNN's symbols; the bytes are derived from those shapes (so shapes and
bytes cannot disagree), the memory kept from the written arrays the step keeps for backward.
A matrix product's FLOPs come from its (M,K)x(K,N) operand shapes through `matmul_cost`; a
backward op sits next to its forward twin and reuses its shapes, transposed
(as torch/utils/flop_counter.py). An op without a function is an error, never a silent 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, NamedTuple

import sympy as sp

from costmodel.errors import CostModelError, UsageError
from costmodel.model.ops import OP_NAMES
from costmodel.model.symbols import (I, a, a_conv, a_next, a_pad, b, b_conv, b_next, b_pad, d, d_next, h,
                      h_pool, n, n_loss, n_next, w, w_idx)

FLOP_CONVENTION = (
    "FLOPs: one multiply-add is 2 FLOPs (torch.utils.flop_counter's convention); an add, a "
    "multiply, a comparison, a max, a select, an exp or a log is 1; a sum of k elements counts "
    "k adds; pure data movement (pad, phi, pool_grad, flatten, ...) is 0."
)
BYTE_CONVENTION = (
    "Bytes: the compulsory traffic of the op as implemented (docs/ops.md): every element of "
    "every array it reads, once, plus every element of every array it writes, once, at the "
    "dtype's width (float32: 4, float64: 8); index arrays at their own width (intp, 8 bytes); "
    "temporaries inside a kernel are not counted."
)
MEMORY_CONVENTION = (
    "Memory kept: the arrays a forward op creates that a backward op reads, i.e. what the step "
    "holds between forward and backward (phi(pad(Z)) of every conv layer, S where the ReLU "
    "derivative reads it, the pooling positions, the inputs of the full layers, the output for "
    "mse or the softmax for softmax_ce), counted at the op that creates them; 0 for an op that "
    "keeps nothing."
)

IMPLS = ("index", "strided")


class UnknownOpError(CostModelError, KeyError):
    """An op name with no cost function."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Array:
    """One array an op reads or writes: its name, symbolic shape and element kind.

    kind is "float" (the network's dtype, `w` bytes) or "index" (intp, `w_idx` bytes);
    kept marks a written array that the step holds until backward.
    """

    name: str
    shape: tuple[sp.Expr, ...]
    kind: str = "float"
    kept: bool = False

    @property
    def size(self) -> sp.Expr:
        return sp.Mul(*self.shape)

    @property
    def nbytes(self) -> sp.Expr:
        return self.size * (w if self.kind == "float" else w_idx)


@dataclass(frozen=True)
class OpCost:
    """What one op costs, as SymPy expressions of simpleNN's symbols."""

    flops: sp.Expr
    bytes_read: sp.Expr
    bytes_written: sp.Expr
    memory_kept: sp.Expr
    reads: tuple[Array, ...]
    writes: tuple[Array, ...]

    @property
    def bytes(self) -> sp.Expr:
        return self.bytes_read + self.bytes_written


class OpSpec(NamedTuple):
    """Everything an op's cost depends on besides the sizes: its name and its context."""

    op: str
    layer_type: str  # conv | full | loss
    impl: str = "index"  # index | strided
    loss: str = "mse"  # mse | softmax_ce
    activation: str = "relu"  # the layer's activation: relu | none
    last: bool = False  # the layer is layer L, whose output is the loss's input


def _cost(flops, reads: list[Array], writes: list[Array]) -> OpCost:
    return OpCost(
        flops=sp.sympify(flops),
        bytes_read=sp.Add(*(x.nbytes for x in reads)),
        bytes_written=sp.Add(*(x.nbytes for x in writes)),
        memory_kept=sp.Add(*(x.nbytes for x in writes if x.kept)),
        reads=tuple(reads),
        writes=tuple(writes),
    )


def matmul_cost(M: sp.Expr, K: sp.Expr, N: sp.Expr) -> sp.Expr:
    """FLOPs of an (M,K) x (K,N) matrix product: M N dot products of length K."""
    return 2 * M * K * N


def _T(shape: tuple) -> tuple:
    return tuple(reversed(shape))


def _product(x: tuple, y: tuple, out: tuple) -> sp.Expr:
    """FLOPs of out = x y from the operand shapes (x: (M,K), y: (K,N), out: (M,N))."""
    (M, K), (K2, N) = x, y
    if K != K2 or tuple(out) != (M, N):
        raise ValueError(f"shapes {x} x {y} -> {out} do not make a matrix product")
    return matmul_cost(M, K, N)


# -- the registry ----------------------------------------------------------------------------

CostFunction = Callable[[OpSpec], OpCost]
REGISTRY: dict[str, CostFunction] = {}


def register(name: str) -> Callable[[CostFunction], CostFunction]:
    """Register the cost function of op `name` (a name of the contract, exactly once)."""
    if name not in OP_NAMES:
        raise ValueError(f"{name!r} is not an op of the contract (costmodel.model.ops.OP_NAMES)")

    def decorate(fn: CostFunction) -> CostFunction:
        if name in REGISTRY:
            raise ValueError(f"op {name!r} already has a cost function: {REGISTRY[name].__name__}")
        REGISTRY[name] = fn
        return fn

    return decorate


def cost_function(name: str) -> CostFunction:
    """The registered cost function of op `name`; UnknownOpError if there is none."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownOpError(f"no cost function for op {name!r}; known ops: "
                             f"{', '.join(sorted(REGISTRY))}") from None


def check_impl(impl: str) -> None:
    """UsageError unless `impl` is an implementation of docs/ops.md."""
    if impl not in IMPLS:
        raise UsageError(f"impl: {impl!r} is not one of {', '.join(IMPLS)}")


@lru_cache(maxsize=None)
def op_cost(spec: OpSpec) -> OpCost:
    """The symbolic cost of one op in its context (pure, so cached)."""
    check_impl(spec.impl)
    return cost_function(spec.op)(spec)


def op_arrays(spec: OpSpec) -> dict[str, list[tuple[tuple[sp.Expr, ...], str]]]:
    """The symbolic shapes and element kinds of the arrays the op reads and writes."""
    cost = op_cost(spec)
    return {"reads": [(x.shape, x.kind) for x in cost.reads],
            "writes": [(x.shape, x.kind) for x in cost.writes]}


# -- conv layer m: input Z (d,I,a,b), phi (K,N), W (d',K), S (d',N) ---------------------------

K = h * h * d  # rows of phi(pad(Z)): (channel, kernel row, kernel column)
N = I * a_conv * b_conv  # columns: (instance, output row, output column)


def _S(spec: OpSpec) -> tuple:
    """Shape of the layer's S^m (= A after the in-place bias and activation)."""
    return (d_next, N) if spec.layer_type == "conv" else (n_next, I)


@register("pad")
def pad(spec: OpSpec) -> OpCost:
    """Zero padding; index writes a new zero-filled Zpad, strided only the interior of a
    preallocated one. Keeps nothing (phi(pad(Z)) is kept instead)."""
    Z = Array("Z", (d, I, a, b))
    if spec.impl == "index":
        return _cost(0, [Z], [Array("Zpad", (d, I, a_pad, b_pad))])
    return _cost(0, [Z], [Array("Zpad interior", (d, I, a, b))])


@register("pad_grad")
def pad_grad(spec: OpSpec) -> OpCost:
    """Removes the padding: copies the interior of dZpad into dZ."""
    return _cost(0, [Array("dZpad interior", (d, I, a, b))], [Array("dZ", (d, I, a, b))])


@register("phi")
def phi(spec: OpSpec) -> OpCost:
    """im2col: gathers Zpad into phi(pad(Z)) (K,N) (through idx_phi in index).
    Keeps phi, which conv_grad_W reads. With p^m = 0, a^m_pad = a^m: it reads Z."""
    reads = [Array("Zpad", (d, I, a_pad, b_pad))]
    if spec.impl == "index":
        reads.append(Array("idx_phi", (K, N), "index"))
    return _cost(0, reads, [Array("phi", (K, N), kept=True)])


@register("phi_grad")
def phi_grad(spec: OpSpec) -> OpCost:
    """col2im: scatter-adds dphi (K,N) into dZpad, one add per element of dphi."""
    reads = [Array("dphi", (K, N))]
    if spec.impl == "index":
        reads.append(Array("idx_phi", (K, N), "index"))
    return _cost(K * N, reads, [Array("dZpad", (d, I, a_pad, b_pad))])


@register("conv_matmul")
def conv_matmul(spec: OpSpec) -> OpCost:
    """S = W phi: (d',K) x (K,N). Keeps S when ReLU follows (activation_grad reads it)."""
    W, phi_, S = (d_next, K), (K, N), _S(spec)
    return _cost(_product(W, phi_, S), [Array("W", W), Array("phi", phi_)],
                 [Array("S", S, kept=spec.activation == "relu")])


@register("conv_grad_W")
def conv_grad_W(spec: OpSpec) -> OpCost:
    """dW = dS phi^T: (d',N) x (N,K), the forward's phi transposed."""
    dS, phi_, dW = _S(spec), (K, N), (d_next, K)
    return _cost(_product(dS, _T(phi_), dW), [Array("dS", dS), Array("phi", phi_)],
                 [Array("dW", dW)])


@register("conv_grad_input")
def conv_grad_input(spec: OpSpec) -> OpCost:
    """dphi = W^T dS: (K,d') x (d',N), the forward's W transposed."""
    W, dS, dphi = (d_next, K), _S(spec), (K, N)
    return _cost(_product(_T(W), dS, dphi), [Array("W", W), Array("dS", dS)],
                 [Array("dphi", dphi)])


@register("bias")
def bias(spec: OpSpec) -> OpCost:
    """S += b 1^T in place: one add per element of S. Keeps nothing new."""
    S = _S(spec)
    return _cost(sp.Mul(*S), [Array("S", S), Array("b", S[:1])], [Array("S", S)])


@register("bias_grad")
def bias_grad(spec: OpSpec) -> OpCost:
    """db = row sums of dS: one add per element of dS."""
    dS = _S(spec)
    return _cost(sp.Mul(*dS), [Array("dS", dS)], [Array("db", dS[:1])])


@register("activation")
def activation(spec: OpSpec) -> OpCost:
    """ReLU in place, max(S, 0): one max per element. Keeps nothing new (S is kept by the
    matrix product that writes it)."""
    S = _S(spec)
    return _cost(sp.Mul(*S), [Array("S", S)], [Array("S", S)])


@register("activation_grad")
def activation_grad(spec: OpSpec) -> OpCost:
    """dS = dZ * (S > 0), in place into dZ: a comparison and a select per element."""
    S = _S(spec)
    return _cost(2 * sp.Mul(*S), [Array("dZ", S), Array("S", S)], [Array("dS", S)])


@register("pool")
def pool(spec: OpSpec) -> OpCost:
    """Max-pooling of A over non-overlapping windows (the last rows/columns cropped):
    h_pool^2 - 1 comparisons per output; index gathers the windows through idx_pool.
    Keeps pos, which pool_grad reads."""
    A = Array("A", (d_next, I, a_conv, b_conv))
    out = (d_next, I, a_next, b_next)
    reads = [A]
    if spec.impl == "index":
        reads.append(Array("idx_pool", (h_pool * h_pool, d_next * I * a_next * b_next), "index"))
    return _cost((h_pool * h_pool - 1) * sp.Mul(*out), reads,
                 [Array("Z_next", out), Array("pos", out, "index", kept=True)])


@register("pool_grad")
def pool_grad(spec: OpSpec) -> OpCost:
    """Scatters dZ^{m+1} into the positions of the maxima of a zero dA."""
    out = (d_next, I, a_next, b_next)
    return _cost(0, [Array("dZ_next", out), Array("pos", out, "index")],
                 [Array("dA", (d_next, I, a_conv, b_conv))])


# -- full layer m: input Z (n^m, I), W (n^{m+1}, n^m), S (n^{m+1}, I) --------------------------

@register("flatten")
def flatten(spec: OpSpec) -> OpCost:
    """Copies Z (d,I,a,b) into X (d a b, I). Keeps X, which full_grad_W reads."""
    return _cost(0, [Array("Z", (d, I, a, b))], [Array("X", (d * a * b, I), kept=True)])


@register("flatten_grad")
def flatten_grad(spec: OpSpec) -> OpCost:
    """Copies dX (d a b, I) back into dZ (d,I,a,b)."""
    return _cost(0, [Array("dX", (d * a * b, I))], [Array("dZ", (d, I, a, b))])


@register("full_matmul")
def full_matmul(spec: OpSpec) -> OpCost:
    """S = W Z: (n^{m+1},n^m) x (n^m,I). Keeps S when backward reads it: for the ReLU
    derivative, as the next full layer's input (full_grad_W), or as the loss's input of mse."""
    W, Z, S = (n_next, n), (n, I), _S(spec)
    kept = spec.activation == "relu" or not spec.last or spec.loss == "mse"
    return _cost(_product(W, Z, S), [Array("W", W), Array("Z", Z)], [Array("S", S, kept=kept)])


@register("full_grad_W")
def full_grad_W(spec: OpSpec) -> OpCost:
    """dW = dS Z^T: (n^{m+1},I) x (I,n^m), the forward's Z transposed."""
    dS, Z, dW = _S(spec), (n, I), (n_next, n)
    return _cost(_product(dS, _T(Z), dW), [Array("dS", dS), Array("Z", Z)], [Array("dW", dW)])


@register("full_grad_input")
def full_grad_input(spec: OpSpec) -> OpCost:
    """dZ = W^T dS: (n^m,n^{m+1}) x (n^{m+1},I), the forward's W transposed."""
    W, dS, dZ = (n_next, n), _S(spec), (n, I)
    return _cost(_product(_T(W), dS, dZ), [Array("W", W), Array("dS", dS)], [Array("dZ", dZ)])


# -- loss: input Z^{L+1} (n^{L+1}, I), one-hot Y (n^{L+1}, I) ---------------------------------

@register("loss")
def loss(spec: OpSpec) -> OpCost:
    """mse: sum of (z - y)^2, a subtract, a multiply and an add per element.
    softmax_ce: P = exp(z - max z) / sum exp(z - max z) (a max, a subtract, an exp, an add and
    a divide per element) and -sum Y log P (a log, a multiply and an add): keeps P."""
    Z, Y = Array("Z", (n_loss, I)), Array("Y", (n_loss, I))
    value = Array("loss", ())
    if spec.loss == "mse":
        return _cost(3 * n_loss * I, [Z, Y], [value])
    return _cost(8 * n_loss * I, [Z, Y], [Array("P", (n_loss, I), kept=True), value])


@register("loss_grad")
def loss_grad(spec: OpSpec) -> OpCost:
    """mse: dZ = 2 (z - y), a subtract and a multiply per element; softmax_ce: dZ = P - Y."""
    Y, dZ = Array("Y", (n_loss, I)), Array("dZ", (n_loss, I))
    if spec.loss == "mse":
        return _cost(2 * n_loss * I, [Array("Z", (n_loss, I)), Y], [dZ])
    return _cost(n_loss * I, [Array("P", (n_loss, I)), Y], [dZ])


# -- update: simpleNN's SG with momentum, for W^m and b^m alike --------------------------------

@register("update")
def update(spec: OpSpec) -> OpCost:
    """Grad = dW/I + W/C (2 divides, an add), v = momentum v - lr Grad (2 multiplies, a
    subtract), W = W + v (an add): 7 FLOPs per parameter; reads dW, W, v, writes W, v."""
    W = (d_next, K) if spec.layer_type == "conv" else (n_next, n)
    bias_ = W[:1]
    reads, writes = [], []
    for shape, name in ((W, "W"), (bias_, "b")):
        reads += [Array(f"d{name}", shape), Array(name, shape), Array(f"v_{name}", shape)]
        writes += [Array(name, shape), Array(f"v_{name}", shape)]
    return _cost(7 * (sp.Mul(*W) + sp.Mul(*bias_)), reads, writes)
