"""The cost of every op of the contract: one pure function per op, registered with its record
(costmodel.model.ops.op) and its notation (docs/ops.md).

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
from costmodel.model.ops import (ELEMENTWISE, INDEX, LOSS, MATMUL, UPDATE, flattens, flattens_gradient,
                                 has_activation, has_input_gradient, has_padding, has_padding_gradient,
                                 has_pooling, op)

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


# -- ops shared by conv and full layers (registered in each layer kind's order below) ---------

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


# -- conv layers: forward, in step order -------------------------------------------------------

@op("conv", "pad", "forward", INDEX, runs=has_padding, text="pad(Z$m)", mathtext=r"\mathrm{pad}(Z$m)",
    latex=r"\mathsf{pad}(Z^{m,i})")
def pad(x, spec: OpSpec) -> OpCost:
    """Zero padding; index writes a new zero-filled Zpad, strided only the interior of a
    preallocated one. Keeps nothing (phi(pad(Z)) is kept instead)."""
    c = conv_arrays(x)
    if spec.impl == "index":
        return _cost(x, 0, [Array("Z", c.Z)], [Array("Zpad", c.Zpad)])
    return _cost(x, 0, [Array("Z", c.Z)], [Array("Zpad interior", c.Z)])


@op("conv", "phi", "forward", INDEX, text="phi(pad(Z$m))", mathtext=r"\phi(\mathrm{pad}(Z$m))",
    latex=r"\phi(\mathsf{pad}(Z^{m,i}))")
def phi(x, spec: OpSpec) -> OpCost:
    """im2col: gathers Zpad into phi(pad(Z)) (K,N) (through idx_phi in index).
    Keeps phi, which conv_grad_W reads. With p^m = 0, a^m_pad = a^m: it reads Z."""
    c = conv_arrays(x)
    reads = [Array("Zpad", c.Zpad)]
    if spec.impl == "index":
        reads.append(Array("idx_phi", c.phi, "index"))
    return _cost(x, 0, reads, [Array("phi", c.phi, kept=True)])


@op("conv", "conv_matmul", "forward", MATMUL, text="W$m phi(pad(Z$m))", mathtext=r"W$m\phi(\mathrm{pad}(Z$m))",
    latex=r"W^{m} \phi(\mathsf{pad}(Z^{m,i}))")
def conv_matmul(x, spec: OpSpec) -> OpCost:
    """S = W phi: (d',K) x (K,N). Keeps S when ReLU follows (activation_grad reads it)."""
    c = conv_arrays(x)
    return _cost(x, _product(c.W, c.phi, c.S), [Array("W", c.W), Array("phi", c.phi)],
                 [Array("S", c.S, kept=spec.activation == "relu")])


op("conv", "bias", "forward", ELEMENTWISE, text="S$m + b$m 1^T", mathtext=r"S$m + b$m 1^T",
   latex=r"+\, \boldsymbol{b}^{m} \mathbf{1}^T", cost=bias)
op("conv", "activation", "forward", ELEMENTWISE, runs=has_activation, text="sigma(S$m)", mathtext=r"\sigma(S$m)",
   latex=r"\sigma(S^{m,i})", cost=activation)


@op("conv", "pool", "forward", INDEX, runs=has_pooling, text="P_pool$m vec(sigma(S$m))",
    mathtext=r"P_{\mathrm{pool}}$m\mathrm{vec}(\sigma(S$m))",
    latex=r"\mathsf{mat}(P^{m,i}_{\mathrm{pool}} \mathsf{vec}(\sigma(S^{m,i})))")
def pool(x, spec: OpSpec) -> OpCost:
    """Max-pooling of A over non-overlapping windows (the last rows/columns cropped):
    h_pool^2 - 1 comparisons per output; index gathers the windows through idx_pool.
    Keeps pos, which pool_grad reads."""
    c = conv_arrays(x)
    reads = [Array("A", c.A)]
    if spec.impl == "index":
        reads.append(Array("idx_pool", (x.h_pool * x.h_pool, x.d_next * x.I * x.a_next * x.b_next), "index"))
    return _cost(x, (x.h_pool * x.h_pool - 1) * prod(c.Z_next), reads,
                 [Array("Z_next", c.Z_next), Array("pos", c.Z_next, "index", kept=True)])


# -- conv layers: backward, in step order ------------------------------------------------------

@op("conv", "pool_grad", "backward", INDEX, runs=has_pooling, twin="pool", text="(P_pool$m)^T dZ$n",
    mathtext=r"(P_{\mathrm{pool}}$m)^T dZ$n",
    latex=r"P^{mT}_{\mathrm{pool}} \mathsf{vec}\bigl(\frac{\partial f}{\partial Z^{m+1}}\bigr)")
def pool_grad(x, spec: OpSpec) -> OpCost:
    """Scatters dZ^{m+1} into the positions of the maxima of a zero dA."""
    c = conv_arrays(x)
    return _cost(x, 0, [Array("dZ_next", c.Z_next), Array("pos", c.Z_next, "index")], [Array("dA", c.A)])


op("conv", "activation_grad", "backward", ELEMENTWISE, runs=has_activation, twin="activation",
   text="sigma'(S$m)", mathtext=r"\sigma'(S$m)",
   latex=r"\frac{\partial f}{\partial \sigma(S^{m})} \odot \sigma'(S^{m})", cost=activation_grad)


@op("conv", "conv_grad_W", "backward", MATMUL, twin="conv_matmul", text="dS$m phi(pad(Z$m))^T",
    mathtext=r"dS$m\phi(\mathrm{pad}(Z$m))^T", latex=_DS + r" \phi(\mathsf{pad}(Z^{m}))^T")
def conv_grad_W(x, spec: OpSpec) -> OpCost:
    """dW = dS phi^T: (d',N) x (N,K), the forward's phi transposed."""
    c = conv_arrays(x)
    return _cost(x, _product(c.S, _T(c.phi), c.W), [Array("dS", c.S), Array("phi", c.phi)], [Array("dW", c.W)])


op("conv", "bias_grad", "backward", ELEMENTWISE, twin="bias", text="dS$m 1", mathtext=r"dS$m 1",
   latex=_BIAS_GRAD, cost=bias_grad)


@op("conv", "conv_grad_input", "backward", MATMUL, runs=has_input_gradient, twin="conv_matmul",
    text="(W$m)^T dS$m", mathtext=r"(W$m)^T dS$m", latex=r"W^{mT} " + _DS)
def conv_grad_input(x, spec: OpSpec) -> OpCost:
    """dphi = W^T dS: (K,d') x (d',N), the forward's W transposed."""
    c = conv_arrays(x)
    return _cost(x, _product(_T(c.W), c.S, c.phi), [Array("W", c.W), Array("dS", c.S)], [Array("dphi", c.phi)])


@op("conv", "phi_grad", "backward", INDEX, runs=has_input_gradient, twin="phi", text="(P_phi$m)^T (col2im)",
    mathtext=r"(P_{\phi}$m)^T\,(\mathrm{col2im})", latex=r"P^{mT}_{\phi} \mathsf{vec}(\cdot)")
def phi_grad(x, spec: OpSpec) -> OpCost:
    """col2im: scatter-adds dphi (K,N) into dZpad, one add per element of dphi."""
    c = conv_arrays(x)
    reads = [Array("dphi", c.phi)]
    if spec.impl == "index":
        reads.append(Array("idx_phi", c.phi, "index"))
    return _cost(x, prod(c.phi), reads, [Array("dZpad", c.Zpad)])


@op("conv", "pad_grad", "backward", INDEX, runs=has_padding_gradient, twin="pad", text="(P_pad$m)^T",
    mathtext=r"(P_{\mathrm{pad}}$m)^T", latex=r"P^{mT}_{\mathrm{pad}} \mathsf{vec}(\cdot)")
def pad_grad(x, spec: OpSpec) -> OpCost:
    """Removes the padding: copies the interior of dZpad into dZ."""
    c = conv_arrays(x)
    return _cost(x, 0, [Array("dZpad interior", c.Z)], [Array("dZ", c.Z)])


op("conv", "update", "update", UPDATE, text="W$m, b$m update", mathtext=r"W$m, b$m\ \mathrm{update}",
   latex=_UPDATE, cost=update)


# -- full layers: input Z (n^m, I), W (n^{m+1}, n^m), S (n^{m+1}, I) ----------------------------

@op("full", "flatten", "forward", INDEX, runs=flattens, text="vec(Z$m)", mathtext=r"\mathrm{vec}(Z$m)",
    latex=r"\mathsf{vec}(Z^{m,i})")
def flatten(x, spec: OpSpec) -> OpCost:
    """Copies Z (d,I,a,b) into X (d a b, I). Keeps X, which full_grad_W reads."""
    return _cost(x, 0, [Array("Z", (x.d, x.I, x.a, x.b))], [Array("X", (x.d * x.a * x.b, x.I), kept=True)])


@op("full", "full_matmul", "forward", MATMUL, text="W$m Z$m", mathtext=r"W$m Z$m", latex=r"W^{m} Z^{m,i}")
def full_matmul(x, spec: OpSpec) -> OpCost:
    """S = W Z: (n^{m+1},n^m) x (n^m,I). Keeps S when backward reads it: for the ReLU
    derivative, as the next full layer's input (full_grad_W), or as the loss's input of mse."""
    f = full_arrays(x)
    kept = spec.activation == "relu" or not spec.last or spec.loss == "mse"
    return _cost(x, _product(f.W, f.Z, f.S), [Array("W", f.W), Array("Z", f.Z)], [Array("S", f.S, kept=kept)])


op("full", "bias", "forward", ELEMENTWISE, text="S$m + b$m 1^T", mathtext=r"S$m + b$m 1^T",
   latex=r"+\, \boldsymbol{b}^{m}", cost=bias)
op("full", "activation", "forward", ELEMENTWISE, runs=has_activation, text="sigma(S$m)", mathtext=r"\sigma(S$m)",
   latex=r"\sigma(S^{m,i})", cost=activation)
op("full", "activation_grad", "backward", ELEMENTWISE, runs=has_activation, twin="activation",
   text="sigma'(S$m)", mathtext=r"\sigma'(S$m)",
   latex=r"\frac{\partial f}{\partial Z^{m+1}} \odot \sigma'(S^{m})", cost=activation_grad)


@op("full", "full_grad_W", "backward", MATMUL, twin="full_matmul", text="dS$m (Z$m)^T", mathtext=r"dS$m (Z$m)^T",
    latex=_DS + r" Z^{mT}")
def full_grad_W(x, spec: OpSpec) -> OpCost:
    """dW = dS Z^T: (n^{m+1},I) x (I,n^m), the forward's Z transposed."""
    f = full_arrays(x)
    return _cost(x, _product(f.S, _T(f.Z), f.W), [Array("dS", f.S), Array("Z", f.Z)], [Array("dW", f.W)])


op("full", "bias_grad", "backward", ELEMENTWISE, twin="bias", text="dS$m 1", mathtext=r"dS$m 1",
   latex=_BIAS_GRAD, cost=bias_grad)


@op("full", "full_grad_input", "backward", MATMUL, runs=has_input_gradient, twin="full_matmul",
    text="(W$m)^T dS$m", mathtext=r"(W$m)^T dS$m", latex=r"W^{mT} " + _DS)
def full_grad_input(x, spec: OpSpec) -> OpCost:
    """dZ = W^T dS: (n^m,n^{m+1}) x (n^{m+1},I), the forward's W transposed."""
    f = full_arrays(x)
    return _cost(x, _product(_T(f.W), f.S, f.Z), [Array("W", f.W), Array("dS", f.S)], [Array("dZ", f.Z)])


@op("full", "flatten_grad", "backward", INDEX, runs=flattens_gradient, twin="flatten", text="mat(dZ$m)",
    mathtext=r"\mathrm{mat}(dZ$m)",
    latex=r"\mathsf{mat}\bigl(\frac{\partial f}{\partial \mathsf{vec}(Z^{m})}\bigr)")
def flatten_grad(x, spec: OpSpec) -> OpCost:
    """Copies dX (d a b, I) back into dZ (d,I,a,b)."""
    return _cost(x, 0, [Array("dX", (x.d * x.a * x.b, x.I))], [Array("dZ", (x.d, x.I, x.a, x.b))])


op("full", "update", "update", UPDATE, text="W$m, b$m update", mathtext=r"W$m, b$m\ \mathrm{update}",
   latex=_UPDATE, cost=update)


# -- loss: input Z^{L+1} (n^{L+1}, I), one-hot Y (n^{L+1}, I) ---------------------------------

@op("loss", "loss", "forward", LOSS, text="loss(Z$m)", mathtext=r"\mathrm{loss}(Z$m)",
    latex={"mse": r"\sum_{i} \lVert Z^{L+1,i} - \boldsymbol{y}^{i} \rVert^2",
           "softmax_ce": r"-\sum_{i} \log \mathrm{softmax}(Z^{L+1,i})_{y^{i}}"})
def loss(x, spec: OpSpec) -> OpCost:
    """mse: sum of (z - y)^2, a subtract, a multiply and an add per element.
    softmax_ce: P = exp(z - max z) / sum exp(z - max z) (a max, a subtract, an exp, an add and
    a divide per element) and -sum Y log P (a log, a multiply and an add): keeps P."""
    Z, Y = Array("Z", (x.n_loss, x.I)), Array("Y", (x.n_loss, x.I))
    value = Array("loss", ())
    if spec.loss == "mse":
        return _cost(x, 3 * x.n_loss * x.I, [Z, Y], [value])
    return _cost(x, 8 * x.n_loss * x.I, [Z, Y], [Array("P", (x.n_loss, x.I), kept=True), value])


@op("loss", "loss_grad", "backward", LOSS, twin="loss", text="dloss/dZ$m", mathtext=r"\partial\mathrm{loss}/\partial Z$m",
    latex={"mse": r"2 (Z^{L+1} - Y)", "softmax_ce": r"\mathrm{softmax}(Z^{L+1}) - Y"})
def loss_grad(x, spec: OpSpec) -> OpCost:
    """mse: dZ = 2 (z - y), a subtract and a multiply per element; softmax_ce: dZ = P - Y."""
    Y, dZ = Array("Y", (x.n_loss, x.I)), Array("dZ", (x.n_loss, x.I))
    if spec.loss == "mse":
        return _cost(x, 2 * x.n_loss * x.I, [Array("Z", (x.n_loss, x.I)), Y], [dZ])
    return _cost(x, x.n_loss * x.I, [Array("P", (x.n_loss, x.I)), Y], [dZ])
