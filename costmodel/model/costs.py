"""The cost of an op: what a cost function returns (`OpCost`: FLOPs and the arrays read and
written), its context (`OpSpec`), the shapes of a layer's arrays that forward and backward ops
share, and the conventions every output states. The cost functions themselves are registered
with their records (costmodel.model.ops.op) layer kind by layer kind in costmodel.model.layers
(conv.py, full.py, loss.py), in step order (docs/ops.md).

A cost function receives the layer's sizes `x` and the op's context `spec` and returns the
op's `OpCost`: its FLOPs and the arrays it reads and writes, with their shapes; bytes are
derived from those shapes (so shapes and bytes cannot disagree), the memory kept from the
written arrays the step keeps for backward. The same function serves two number systems:
with `x` holding simpleNN's SymPy symbols (costmodel.model.symbols.SIZES) it returns the
expressions of `costs --symbolic` and the LaTeX tables; with `x` holding integers (or NumPy
arrays of them, one per variant) it returns the numbers that predict uses, without SymPy. So a
cost function is plain arithmetic on the sizes: it may branch on `spec`, never on a size.

A matrix product's FLOPs come from its (M,K)x(K,N) operand shapes (`matmul_flops`); a backward
op reuses the shapes of its forward twin (`conv_arrays`, `full_arrays`), transposed where the
product transposes them, as torch/utils/flop_counter.py's formulas do. An op without a record is
an error, never a silent 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any, Callable, NamedTuple

from costmodel.errors import CostModelError, UsageError

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
    """An op name with no record."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Array:
    """One array an op reads or writes: its name, shape and element kind.

    kind is "float" (the network's dtype, `w` bytes) or "index" (intp, `w_idx` bytes);
    kept marks a written array that the step holds until backward.
    """

    name: str
    shape: tuple
    kind: str = "float"
    kept: bool = False

    @property
    def size(self):
        return prod(self.shape)


@dataclass(frozen=True)
class OpCost:
    """What one op costs: FLOPs and the arrays it reads and writes, in the sizes' number
    system (SymPy expressions, integers or integer arrays); `width` maps an array's kind to
    its bytes per element (the sizes' w and w_idx)."""

    flops: Any
    reads: tuple[Array, ...]
    writes: tuple[Array, ...]
    width: tuple  # (bytes per float, bytes per index)

    def _bytes(self, arrays) -> Any:
        w, w_idx = self.width
        return sum((x.size * (w if x.kind == "float" else w_idx) for x in arrays), 0)

    @property
    def bytes_read(self):
        return self._bytes(self.reads)

    @property
    def bytes_written(self):
        return self._bytes(self.writes)

    @property
    def bytes(self):
        return self.bytes_read + self.bytes_written

    @property
    def memory_kept(self):
        return self._bytes(x for x in self.writes if x.kept)


class OpSpec(NamedTuple):
    """Everything an op's cost depends on besides the sizes: its context."""

    layer_type: str  # conv | full | loss
    impl: str = "index"  # index | strided
    loss: str = "mse"  # mse | softmax_ce
    activation: str = "relu"  # the layer's activation: relu | none
    last: bool = False  # the layer is layer L, whose output is the loss's input


CostFunction = Callable[[Any, OpSpec], OpCost]


def check_impl(impl: str) -> None:
    """UsageError unless `impl` is an implementation of docs/ops.md."""
    if impl not in IMPLS:
        raise UsageError(f"impl: {impl!r} is not one of {', '.join(IMPLS)}")


def _cost(x, flops, reads: list[Array], writes: list[Array]) -> OpCost:
    return OpCost(flops, tuple(reads), tuple(writes), (x.w, x.w_idx))


def matmul_flops(M, K, N):
    """FLOPs of an (M,K) x (K,N) matrix product: M N dot products of length K."""
    return 2 * M * K * N


def _T(shape: tuple) -> tuple:
    return tuple(reversed(shape))


def _product(x: tuple, y: tuple, out: tuple):
    """FLOPs of out = x y from the operand shapes (x: (M,K), y: (K,N), out: (M,N))."""
    (M, K), (K2, N) = x, y
    if K is not K2 or out[0] is not M or out[1] is not N:
        raise ValueError(f"shapes {x} x {y} -> {out} do not make a matrix product")
    return matmul_flops(M, K, N)


# -- conv layer m: input Z (d,I,a,b), phi (K,N), W (d',K), S (d',N) ---------------------------

class ConvArrays(NamedTuple):
    """The shapes of conv layer m's arrays (docs/ops.md), shared by its forward and backward ops."""

    Z: tuple  # (d, I, a, b)
    Zpad: tuple  # (d, I, a_pad, b_pad)
    phi: tuple  # (K, N): K = h h d rows (channel, kernel row, kernel column), N = I a_conv b_conv columns
    W: tuple  # (d', K)
    S: tuple  # (d', N), also A = sigma(S) as (d', I, a_conv, b_conv)
    A: tuple  # (d', I, a_conv, b_conv)
    Z_next: tuple  # (d', I, a^{m+1}, b^{m+1}), after pooling


def conv_arrays(x) -> ConvArrays:
    K = x.h * x.h * x.d
    N = x.I * x.a_conv * x.b_conv
    return ConvArrays(Z=(x.d, x.I, x.a, x.b), Zpad=(x.d, x.I, x.a_pad, x.b_pad), phi=(K, N), W=(x.d_next, K),
                      S=(x.d_next, N), A=(x.d_next, x.I, x.a_conv, x.b_conv),
                      Z_next=(x.d_next, x.I, x.a_next, x.b_next))


class FullArrays(NamedTuple):
    """The shapes of full layer m's arrays: input Z (n^m, I), W (n^{m+1}, n^m), S (n^{m+1}, I)."""

    Z: tuple
    W: tuple
    S: tuple


def full_arrays(x) -> FullArrays:
    return FullArrays(Z=(x.n, x.I), W=(x.n_next, x.n), S=(x.n_next, x.I))


def _S(x, spec: OpSpec) -> tuple:
    """Shape of the layer's S^m (= A after the in-place bias and activation)."""
    return conv_arrays(x).S if spec.layer_type == "conv" else full_arrays(x).S


_DS = r"\frac{\partial f}{\partial S^{m}}"
_BIAS_GRAD = _DS + r" \mathbf{1}"
_UPDATE = r"v \leftarrow \alpha v - \eta\, g^{m},\allowbreak\; W^{m} \leftarrow W^{m} + v"


# -- ops shared by conv and full layers (registered in each layer kind's module) -----------

def bias(x, spec: OpSpec) -> OpCost:
    """S += b 1^T in place: one add per element of S. Keeps nothing new."""
    S = _S(x, spec)
    return _cost(x, prod(S), [Array("S", S), Array("b", S[:1])], [Array("S", S)])


def activation(x, spec: OpSpec) -> OpCost:
    """ReLU in place, max(S, 0): one max per element. Keeps nothing new (S is kept by the
    matrix product that writes it)."""
    S = _S(x, spec)
    return _cost(x, prod(S), [Array("S", S)], [Array("S", S)])


def activation_grad(x, spec: OpSpec) -> OpCost:
    """dS = dZ * (S > 0), in place into dZ: a comparison and a select per element."""
    S = _S(x, spec)
    return _cost(x, 2 * prod(S), [Array("dZ", S), Array("S", S)], [Array("dS", S)])


def bias_grad(x, spec: OpSpec) -> OpCost:
    """db = row sums of dS: one add per element of dS."""
    dS = _S(x, spec)
    return _cost(x, prod(dS), [Array("dS", dS)], [Array("db", dS[:1])])


def update(x, spec: OpSpec) -> OpCost:
    """Grad = dW/I + W/C (2 divides, an add), v = momentum v - lr Grad (2 multiplies, a
    subtract), W = W + v (an add): 7 FLOPs per parameter; reads dW, W, v, writes W, v."""
    W = conv_arrays(x).W if spec.layer_type == "conv" else full_arrays(x).W
    bias_ = W[:1]
    reads, writes = [], []
    for shape, name in ((W, "W"), (bias_, "b")):
        reads += [Array(f"d{name}", shape), Array(name, shape), Array(f"v_{name}", shape)]
        writes += [Array(name, shape), Array(f"v_{name}", shape)]
    return _cost(x, 7 * (prod(W) + prod(bias_)), reads, writes)


