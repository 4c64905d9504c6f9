"""The ops of conv layers: records and cost functions, in step order (docs/ops.md)."""

from __future__ import annotations

from math import prod

from costmodel.model.costs import (_BIAS_GRAD, _DS, _UPDATE, Array, OpCost, OpSpec, _cost, _product, _T,
                                   activation, activation_grad, bias, bias_grad, conv_arrays, update)
from costmodel.model.records import (ELEMENTWISE, INDEX, MATMUL, UPDATE, has_activation, has_input_gradient, has_padding, has_padding_gradient,
                                 has_pooling, op)


# -- conv layers: forward, in step order -------------------------------------------------------

@op("conv", "pad", "forward", INDEX, runs=has_padding, text="pad(Z$m)", mathtext=r"\mathrm{pad}(Z$m)",
    latex=r"\mathsf{pad}(Z^{m,i})",
    how={"index": "a new zero-filled array, then a strided copy of Z", "strided": "a strided copy into a kept array"})
def pad(x, spec: OpSpec) -> OpCost:
    """Zero padding; index writes a new zero-filled Zpad, strided only the interior of a
    preallocated one. Keeps nothing (phi(pad(Z)) is kept instead)."""
    c = conv_arrays(x)
    if spec.impl == "index":
        return _cost(x, 0, [Array("Z", c.Z)], [Array("Zpad", c.Zpad)])
    return _cost(x, 0, [Array("Z", c.Z)], [Array("Zpad interior", c.Z)])


@op("conv", "phi", "forward", INDEX, text="phi(pad(Z$m))", mathtext=r"\phi(\mathrm{pad}(Z$m))",
    latex=r"\phi(\mathsf{pad}(Z^{m,i}))",
    how={"index": "a gather (np.take) through the index array idx_phi",
         "strided": "h^m h^m copies of strided windows"})
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
    latex=r"\mathsf{mat}(P^{m,i}_{\mathrm{pool}} \mathsf{vec}(\sigma(S^{m,i})))",
    how={"index": "a gather of the windows through idx_pool, then argmax", "strided": "a running maximum over the "
         "window's offsets"})
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
    latex=r"P^{mT}_{\mathrm{pool}} \mathsf{vec}\bigl(\frac{\partial f}{\partial Z^{m+1}}\bigr)",
    how={"index": "a scatter into a new zero array through the positions of the maxima",
         "strided": "a masked product per window offset"})
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
    mathtext=r"(P_{\phi}$m)^T\,(\mathrm{col2im})", latex=r"P^{mT}_{\phi} \mathsf{vec}(\cdot)",
    how={"index": "a scatter-add (np.add.at) through idx_phi", "strided": "h^m h^m shifted adds"})
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


