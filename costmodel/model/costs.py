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

    kind is "float" (the network's dtype, `w` bytes), "index" (intp, `w_idx` bytes) or
    "bool" (a mask, one byte per element: dropout's); kept marks a written array that the
    step holds until backward.
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
        widths = {"float": w, "index": w_idx, "bool": 1}
        return sum((x.size * widths[x.kind] for x in arrays), 0)

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
    """Everything an op's cost depends on besides the sizes: its context (what its layer has,
    never a size: the same spec serves symbols and numbers)."""

    layer_type: str  # conv | full | global_avg_pool | residual_add | loss
    impl: str = "index"  # index | strided
    loss: str = "mse"  # mse | softmax_ce
    activation: str = "relu"  # the layer's activation: relu | tanh | sigmoid | none
    last: bool = False  # the layer is layer L, whose output is the loss's input
    # extended vocabulary (ARCH_FORMAT.md)
    grouped: bool = False  # a conv layer with g > 1 groups: W^m is (d', h h d/g), a product per group
    pool_type: str = "max"  # max | avg
    pool_overlap: bool = False  # the pooling windows overlap (stride < window)
    pool_partial: bool = False  # ceil mode leaves windows with fewer than h_pool^2 real elements
    batch_norm: bool = False
    dropout: bool = False
    #: the layer's output is read by a backward op of another layer: the input of a full layer
    #: that does not flatten it (its full_grad_W reads it), or Z^{L+1} for mse's gradient
    output_read: bool = False


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
    W: tuple  # (d', K), or (d', h h d/g) with g groups
    S: tuple  # (d', N), also A = sigma(S) as (d', I, a_conv, b_conv)
    A: tuple  # (d', I, a_conv, b_conv)
    Z_next: tuple  # (d', I, a^{m+1}, b^{m+1}), after pooling


def conv_arrays(x, spec: "OpSpec | None" = None) -> ConvArrays:
    """The shapes of conv layer m's arrays; with a grouped `spec` each filter sees d^m/g^m
    channels (its own symbol, so that the costs stay polynomials in the sizes)."""
    K = x.h * x.h * x.d
    N = x.I * x.a_conv * x.b_conv
    W = (x.d_next, x.h * x.h * x.d_g) if spec is not None and spec.grouped else (x.d_next, K)
    return ConvArrays(Z=(x.d, x.I, x.a, x.b), Zpad=(x.d, x.I, x.a_pad, x.b_pad), phi=(K, N), W=W,
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
    """Shape of the layer's S^m (= A after the in-place bias and activation); for a residual
    addition its sum S (d, I, a, b)."""
    if spec.layer_type == "residual_add":
        return (x.d, x.I, x.a, x.b)
    return conv_arrays(x).S if spec.layer_type == "conv" else full_arrays(x).S


def output_shape(x, spec: OpSpec) -> tuple:
    """The shape of the layer's output Z^{m+1} before dropout: (d', I, a^{m+1}, b^{m+1}) for
    conv (after pooling), (n^{m+1}, I) for full, (d, I, 1, 1) for global average pooling,
    (d, I, a, b) for a residual addition."""
    if spec.layer_type == "full":
        return full_arrays(x).S
    if spec.layer_type == "global_avg_pool":
        return (x.d, x.I, 1, 1)
    if spec.layer_type == "residual_add":
        return (x.d, x.I, x.a, x.b)
    return conv_arrays(x).Z_next


def output_kept(spec: OpSpec) -> bool:
    """Whether the array the layer's last forward op before dropout writes is held for
    backward: read by sigma'(S) (any activation), or, without dropout after it, by the
    backward of the layer that reads the output (OpSpec.output_read)."""
    return spec.activation != "none" or (not spec.dropout and spec.output_read)


_DS = r"\frac{\partial f}{\partial S^{m}}"
_BIAS_GRAD = _DS + r" \mathbf{1}"
_UPDATE = r"v \leftarrow \alpha v - \eta\, g^{m},\allowbreak\; W^{m} \leftarrow W^{m} + v"


# -- ops shared by conv and full layers (registered in each layer kind's module) -----------

def bias(x, spec: OpSpec) -> OpCost:
    """S += b 1^T in place: one add per element of S. Keeps nothing new."""
    S = _S(x, spec)
    return _cost(x, prod(S), [Array("S", S), Array("b", S[:1])], [Array("S", S)])


#: FLOPs per element of each activation, forward and backward: ReLU max(s, 0) a max; tanh
#: one function evaluation (as an exp); sigmoid 1/(1 + exp(-s)) an exp, an add and a divide.
#: Backward: ReLU dZ (S > 0) a comparison and a select; tanh dZ (1 - A^2) and sigmoid
#: dZ A (1 - A) two multiplies and a subtract, from A = sigma(S)
ACTIVATION_FLOPS = {"relu": (1, 2), "tanh": (1, 3), "sigmoid": (3, 3)}


def activation(x, spec: OpSpec) -> OpCost:
    """sigma(S) in place (ReLU, tanh or sigmoid), ACTIVATION_FLOPS per element. Keeps nothing
    new (S is kept by the op that writes it)."""
    S = _S(x, spec)
    return _cost(x, ACTIVATION_FLOPS[spec.activation][0] * prod(S), [Array("S", S)], [Array("S", S)])


def activation_grad(x, spec: OpSpec) -> OpCost:
    """dS = dZ * sigma'(S) from A = sigma(S), in place into dZ: dZ (S > 0) for ReLU (a
    comparison and a select per element), dZ (1 - A^2) for tanh, dZ A (1 - A) for sigmoid."""
    S = _S(x, spec)
    A = "S" if spec.activation == "relu" else "A"
    return _cost(x, ACTIVATION_FLOPS[spec.activation][1] * prod(S), [Array("dZ", S), Array(A, S)],
                 [Array("dS", S)])


def batch_norm(x, spec: OpSpec) -> OpCost:
    """Batch normalization in training mode of every row of S (d', N) over its N columns
    (Ioffe and Szegedy 2015; docs/ops.md): per element an add for the mean, a subtract, a
    multiply and an add for the variance, a multiply by 1/sqrt(sigma^2 + eps), a multiply by
    gamma and an add of beta (7); per channel two divides, an add of eps, a square root, a
    reciprocal and the two running averages' 3 FLOPs each (11). Writes Y (index: a new array;
    strided: S in place), keeps Xhat and inv_std for backward, and Y when sigma' or the next
    layer reads it."""
    d, N = _S(x, spec)
    S, row = (d, N), (d,)
    reads = [Array("S", S), Array("gamma", row), Array("beta", row), Array("running_mean", row),
             Array("running_var", row)]
    writes = [Array("Y", S, kept=output_kept(spec)), Array("Xhat", S, kept=True), Array("inv_std", row, kept=True),
              Array("running_mean", row), Array("running_var", row)]
    return _cost(x, 7 * d * N + 11 * d, reads, writes)


def batch_norm_grad(x, spec: OpSpec) -> OpCost:
    """dbeta = dY 1, dgamma = (dY * Xhat) 1 and dS = gamma inv_std / N (N dY - dbeta 1^T -
    Xhat * dgamma 1^T): per element an add, a multiply and an add, then 5 (two multiplies, two
    subtracts, the scale) (8); per channel the scale gamma inv_std / N (2)."""
    d, N = _S(x, spec)
    S, row = (d, N), (d,)
    return _cost(x, 8 * d * N + 2 * d,
                 [Array("dY", S), Array("Xhat", S), Array("gamma", row), Array("inv_std", row)],
                 [Array("dS", S), Array("dgamma", row), Array("dbeta", row)])


def dropout(x, spec: OpSpec) -> OpCost:
    """Inverted dropout of the layer's output Z: keep = (u >= r) for uniform draws u (a
    comparison), Z_out = Z keep / (1 - r) (two multiplies): 3 per element; the draws are
    the kernel's temporary. Keeps the mask, and Z_out when the next layer's backward reads it."""
    out = output_shape(x, spec)
    return _cost(x, 3 * prod(out), [Array("Z", out)],
                 [Array("keep", out, "bool", kept=True), Array("Z_out", out, kept=spec.output_read)])


def dropout_grad(x, spec: OpSpec) -> OpCost:
    """dZ = dZ_out keep / (1 - r), in place: two multiplies per element."""
    out = output_shape(x, spec)
    return _cost(x, 2 * prod(out), [Array("dZ_out", out), Array("keep", out, "bool")], [Array("dZ", out)])


def residual_add_grad(x, spec: OpSpec) -> OpCost:
    """The two gradients that reach the output of a layer that is a residual block's input
    X, F's and the shortcut's, summed: one add per element (index: a new array; strided: in
    place into F's)."""
    out = output_shape(x, spec)
    return _cost(x, prod(out), [Array("dX from F", out), Array("dX from the shortcut", out)], [Array("dX", out)])


def bias_grad(x, spec: OpSpec) -> OpCost:
    """db = row sums of dS: one add per element of dS."""
    dS = _S(x, spec)
    return _cost(x, prod(dS), [Array("dS", dS)], [Array("db", dS[:1])])


def update(x, spec: OpSpec) -> OpCost:
    """Grad = dW/I + W/C (2 divides, an add), v = momentum v - lr Grad (2 multiplies, a
    subtract), W = W + v (an add): 7 FLOPs per parameter; for W^m, b^m and, with batch
    normalization, gamma^m and beta^m. Reads dW, W, v, writes W, v, and, as implemented
    (calib.kernels.sgd_momentum, simpleNN's ``v -= (lr/I) dW; v -= (lr/C) W``), writes the
    scaled terms (lr/I) dW and (lr/C) W to W-sized arrays and reads them back: 9 arrays of W's
    size per parameter, not the 5 of a fused update."""
    W = conv_arrays(x, spec).W if spec.layer_type == "conv" else full_arrays(x).W
    bias_ = W[:1]
    params = [(W, "W"), (bias_, "b")] + ([(bias_, "gamma"), (bias_, "beta")] if spec.batch_norm else [])
    reads, writes = [], []
    for shape, name in params:
        scaled = [Array(f"(lr/I)d{name}", shape), Array(f"(lr/C){name}", shape)]
        reads += [Array(f"d{name}", shape), Array(name, shape), Array(f"v_{name}", shape), *scaled]
        writes += [Array(name, shape), Array(f"v_{name}", shape), *scaled]
    return _cost(x, 7 * sum(prod(shape) for shape, _ in params), reads, writes)


