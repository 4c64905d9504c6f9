"""The ops of conv layers: records and cost functions, in step order (docs/ops.md)."""

from __future__ import annotations

from math import prod

from costmodel.model.costs import (_BIAS_GRAD, _DS, _UPDATE, Array, OpCost, OpSpec, _cost, _product, _T,
                                   activation, activation_grad, batch_norm, batch_norm_grad, bias, bias_grad,
                                   conv_arrays, dropout, dropout_grad, matmul_flops, output_kept, residual_add_grad,
                                   update)
from costmodel.model.records import (ELEMENTWISE, INDEX, MATMUL, UPDATE, forks, has_activation, has_batch_norm,
                                     has_dropout, has_input_gradient, has_padding, has_padding_gradient, has_pooling,
                                     op)
from costmodel.model.layers.notation import (BATCH_NORM, BATCH_NORM_GRAD, DROPOUT, DROPOUT_GRAD,
                                             RESIDUAL_ADD_GRAD)


def _grouped_flops(x, c) -> object:
    """FLOPs of a grouped product: g products of (d'/g, h h d/g) x (h h d/g, N), i.e.
    2 d' (h h d/g) N (torch.utils.flop_counter's count of a grouped convolution)."""
    return matmul_flops(c.W[0], c.W[1], c.phi[1])


# -- conv layers: forward, in step order -------------------------------------------------------

@op("conv", "pad", "forward", INDEX, runs=has_padding, text="pad(Z$m)", mathtext=r"\mathrm{pad}(Z$m)",
    latex=r"\mathsf{pad}(Z^{m,i})",
    how={"index": "a new zero-filled array, then a strided copy of Z", "strided": "a strided copy into a kept array"})
def pad(x, spec: OpSpec) -> OpCost:
    """Zero padding (p_top/p_bottom rows, p_left/p_right columns, equal for a symmetric p^m);
    index writes a new zero-filled Zpad, strided only the interior of a preallocated one.
    Keeps nothing (phi(pad(Z)) is kept instead)."""
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
    """S = W phi: (d',K) x (K,N), or with g groups one (d'/g, K/g) x (K/g, N) product per
    group. Keeps S when sigma' reads it (any activation, no batch norm in between)."""
    c = conv_arrays(x, spec)
    flops = _grouped_flops(x, c) if spec.grouped else _product(c.W, c.phi, c.S)
    return _cost(x, flops, [Array("W", c.W), Array("phi", c.phi)],
                 [Array("S", c.S, kept=not spec.batch_norm and output_kept(spec))])


op("conv", "bias", "forward", ELEMENTWISE, text="S$m + b$m 1^T", mathtext=r"S$m + b$m 1^T",
   latex=r"+\, \boldsymbol{b}^{m} \mathbf{1}^T", cost=bias)
op("conv", "batch_norm", "forward", ELEMENTWISE, runs=has_batch_norm, cost=batch_norm, **BATCH_NORM)
op("conv", "activation", "forward", ELEMENTWISE, runs=has_activation, text="sigma(S$m)", mathtext=r"\sigma(S$m)",
   latex=r"\sigma(S^{m,i})", cost=activation)

def _pool_matrix(spec: OpSpec, transpose: bool = False) -> str:
    """P_pool of the course (max pooling over non-overlapping windows), or P with the pooling's
    type and stride s_pool (the window h_pool x h_pool: the legend) for average pooling,
    overlapping windows and ceil mode."""
    m = "mT" if transpose else "m,i"
    if spec.pool_type == "max" and not spec.pool_overlap and not spec.pool_partial:
        return rf"P^{{{m}}}_{{\mathrm{{pool}}}}"
    return rf"P^{{{m}}}_{{\mathrm{{{spec.pool_type}}},\,s^{{m}}_{{\mathrm{{pool}}}}}}"


def _pool_latex(spec: OpSpec) -> str:
    return rf"\mathsf{{mat}}({_pool_matrix(spec)} \mathsf{{vec}}(\sigma(S^{{m,i}})))"


def _pool_grad_latex(spec: OpSpec) -> str:
    return rf"{_pool_matrix(spec, True)} \mathsf{{vec}}\bigl(\frac{{\partial f}}{{\partial Z^{{m+1}}}}\bigr)"


_POOL_HOW = {
    "max": {"index": "a gather of the windows through idx_pool, then argmax", "strided": "a running maximum over the "
            "window's offsets"},
    "avg": {"index": "a gather of the windows through idx_pool, then a weighted sum",
            "strided": "a running sum over the window's offsets, then a multiply"}}
_POOL_GRAD_HOW = {
    "max": {"index": "a scatter into a new zero array through the positions of the maxima",
            "strided": "a masked product per window offset"},
    "overlap": {"index": "a scatter-add (np.add.at) into a new zero array through the positions of the maxima",
                "strided": "a masked product and an add per window offset"},
    "avg": {"index": "a scatter-add (np.add.at) of the weighted gradients through idx_pool",
            "strided": "a multiply, then a copy (an add where windows overlap) per window offset"}}


def _pool_extras(x, spec: OpSpec) -> list[Array]:
    """The arrays average pooling and its gradient read besides A or dZ^{m+1}: index the window
    indices idx_pool and the weights pool_weight (1 over each window's real elements, 0 past
    the border); strided, only in ceil mode with windows that hang over the border, 1 over
    each window's count (inv_count)."""
    windows = (x.h_pool * x.h_pool, x.d_next * x.I * x.a_next * x.b_next)
    if spec.impl == "index":
        return [Array("idx_pool", windows, "index"), Array("pool_weight", (x.h_pool * x.h_pool, x.a_next * x.b_next))]
    return [Array("inv_count", (x.a_next, x.b_next))] if spec.pool_partial else []


@op("conv", "pool", "forward", INDEX, runs=has_pooling, text="P_pool$m vec(sigma(S$m))",
    mathtext=r"P_{\mathrm{pool}}$m\mathrm{vec}(\sigma(S$m))", latex=_pool_latex,
    how=lambda spec: _POOL_HOW[spec.pool_type])
def pool(x, spec: OpSpec) -> OpCost:
    """Pooling of A over h_pool x h_pool windows with stride s_pool (floor mode crops the last
    rows/columns; ceil mode's last windows cover only the real elements).
    Max: h_pool^2 - 1 comparisons per output (ceil mode's partial windows counted as full,
    as the index kernel compares them); index gathers the windows through idx_pool. Keeps pos,
    which pool_grad reads.
    Average: h_pool^2 - 1 adds and a multiply by 1/count per output (h_pool^2); keeps nothing."""
    c = conv_arrays(x)
    out = prod(c.Z_next)
    if spec.pool_type == "avg":
        return _cost(x, x.h_pool * x.h_pool * out, [Array("A", c.A)] + _pool_extras(x, spec), [Array("Z_next", c.Z_next)])
    reads = [Array("A", c.A)]
    if spec.impl == "index":
        reads.append(Array("idx_pool", (x.h_pool * x.h_pool, x.d_next * x.I * x.a_next * x.b_next), "index"))
    return _cost(x, (x.h_pool * x.h_pool - 1) * out, reads,
                 [Array("Z_next", c.Z_next), Array("pos", c.Z_next, "index", kept=True)])


op("conv", "dropout", "forward", ELEMENTWISE, runs=has_dropout, cost=dropout, **DROPOUT)


# -- conv layers: backward, in step order ------------------------------------------------------

op("conv", "residual_add_grad", "backward", ELEMENTWISE, runs=forks, cost=residual_add_grad, **RESIDUAL_ADD_GRAD)
op("conv", "dropout_grad", "backward", ELEMENTWISE, runs=has_dropout, twin="dropout", cost=dropout_grad,
   **DROPOUT_GRAD)


@op("conv", "pool_grad", "backward", INDEX, runs=has_pooling, twin="pool", text="(P_pool$m)^T dZ$n",
    mathtext=r"(P_{\mathrm{pool}}$m)^T dZ$n", latex=_pool_grad_latex,
    how=lambda spec: _POOL_GRAD_HOW["avg" if spec.pool_type == "avg" else "overlap" if spec.pool_overlap else "max"])
def pool_grad(x, spec: OpSpec) -> OpCost:
    """Max: scatters dZ^{m+1} into the positions of the maxima of a zero dA; where windows
    overlap (stride < window) the gradients of windows that share a maximum add: one add per
    output. Average: dZ^{m+1}/count per window (a multiply per output), spread over its
    h_pool^2 elements, which add where windows overlap (h_pool^2 adds per output)."""
    c = conv_arrays(x)
    out = prod(c.Z_next)
    if spec.pool_type == "avg":
        flops = out + (x.h_pool * x.h_pool * out if spec.pool_overlap else 0)
        return _cost(x, flops, [Array("dZ_next", c.Z_next)] + _pool_extras(x, spec), [Array("dA", c.A)])
    return _cost(x, out if spec.pool_overlap else 0, [Array("dZ_next", c.Z_next), Array("pos", c.Z_next, "index")],
                 [Array("dA", c.A)])


op("conv", "activation_grad", "backward", ELEMENTWISE, runs=has_activation, twin="activation",
   text="sigma'(S$m)", mathtext=r"\sigma'(S$m)",
   latex=r"\frac{\partial f}{\partial \sigma(S^{m})} \odot \sigma'(S^{m})", cost=activation_grad)
op("conv", "batch_norm_grad", "backward", ELEMENTWISE, runs=has_batch_norm, twin="batch_norm", cost=batch_norm_grad,
   **BATCH_NORM_GRAD)


@op("conv", "conv_grad_W", "backward", MATMUL, twin="conv_matmul", text="dS$m phi(pad(Z$m))^T",
    mathtext=r"dS$m\phi(\mathrm{pad}(Z$m))^T", latex=_DS + r" \phi(\mathsf{pad}(Z^{m}))^T")
def conv_grad_W(x, spec: OpSpec) -> OpCost:
    """dW = dS phi^T: (d',N) x (N,K), the forward's phi transposed (per group when g > 1)."""
    c = conv_arrays(x, spec)
    flops = _grouped_flops(x, c) if spec.grouped else _product(c.S, _T(c.phi), c.W)
    return _cost(x, flops, [Array("dS", c.S), Array("phi", c.phi)], [Array("dW", c.W)])


op("conv", "bias_grad", "backward", ELEMENTWISE, twin="bias", text="dS$m 1", mathtext=r"dS$m 1",
   latex=_BIAS_GRAD, cost=bias_grad)


@op("conv", "conv_grad_input", "backward", MATMUL, runs=has_input_gradient, twin="conv_matmul",
    text="(W$m)^T dS$m", mathtext=r"(W$m)^T dS$m", latex=r"W^{mT} " + _DS)
def conv_grad_input(x, spec: OpSpec) -> OpCost:
    """dphi = W^T dS: (K,d') x (d',N), the forward's W transposed (per group when g > 1)."""
    c = conv_arrays(x, spec)
    flops = _grouped_flops(x, c) if spec.grouped else _product(_T(c.W), c.S, c.phi)
    return _cost(x, flops, [Array("W", c.W), Array("dS", c.S)], [Array("dphi", c.phi)])


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
