"""The ops of full (fully-connected) layers: records and cost functions, in step order (docs/ops.md)."""

from __future__ import annotations


from costmodel.model.costs import (_BIAS_GRAD, _DS, _UPDATE, Array, OpCost, OpSpec, _cost, _product, _T,
                                   activation, activation_grad, batch_norm, batch_norm_grad, bias, bias_grad,
                                   dropout, dropout_grad, full_arrays, output_kept, update)
from costmodel.model.layers.notation import BATCH_NORM, BATCH_NORM_GRAD, DROPOUT, DROPOUT_GRAD
from costmodel.model.records import (ELEMENTWISE, INDEX, MATMUL, UPDATE, flattens, flattens_gradient,
                                     has_activation, has_batch_norm, has_dropout, has_input_gradient, op)


# -- full layers: input Z (n^m, I), W (n^{m+1}, n^m), S (n^{m+1}, I) ----------------------------

@op("full", "flatten", "forward", INDEX, runs=flattens, text="vec(Z$m)", mathtext=r"\mathrm{vec}(Z$m)",
    latex=r"\mathsf{vec}(Z^{m,i})")
def flatten(x, spec: OpSpec) -> OpCost:
    """Copies Z (d,I,a,b) into X (d a b, I). Keeps X, which full_grad_W reads."""
    return _cost(x, 0, [Array("Z", (x.d, x.I, x.a, x.b))], [Array("X", (x.d * x.a * x.b, x.I), kept=True)])


@op("full", "full_matmul", "forward", MATMUL, text="W$m Z$m", mathtext=r"W$m Z$m", latex=r"W^{m} Z^{m,i}")
def full_matmul(x, spec: OpSpec) -> OpCost:
    """S = W Z: (n^{m+1},n^m) x (n^m,I). Keeps S when backward reads it (without batch norm
    in between): for sigma', or, without dropout after it, as the next full layer's input
    (full_grad_W) or as the loss's input of mse (OpSpec.output_read)."""
    f = full_arrays(x)
    kept = not spec.batch_norm and output_kept(spec)
    return _cost(x, _product(f.W, f.Z, f.S), [Array("W", f.W), Array("Z", f.Z)], [Array("S", f.S, kept=kept)])


op("full", "bias", "forward", ELEMENTWISE, text="S$m + b$m 1^T", mathtext=r"S$m + b$m 1^T",
   latex=r"+\, \boldsymbol{b}^{m}", cost=bias)
op("full", "batch_norm", "forward", ELEMENTWISE, runs=has_batch_norm, cost=batch_norm, **BATCH_NORM)
op("full", "activation", "forward", ELEMENTWISE, runs=has_activation, text="sigma(S$m)", mathtext=r"\sigma(S$m)",
   latex=r"\sigma(S^{m,i})", cost=activation)
op("full", "dropout", "forward", ELEMENTWISE, runs=has_dropout, cost=dropout, **DROPOUT)
op("full", "dropout_grad", "backward", ELEMENTWISE, runs=has_dropout, twin="dropout", cost=dropout_grad,
   **DROPOUT_GRAD)
op("full", "activation_grad", "backward", ELEMENTWISE, runs=has_activation, twin="activation",
   text="sigma'(S$m)", mathtext=r"\sigma'(S$m)",
   latex=r"\frac{\partial f}{\partial Z^{m+1}} \odot \sigma'(S^{m})", cost=activation_grad)
op("full", "batch_norm_grad", "backward", ELEMENTWISE, runs=has_batch_norm, twin="batch_norm", cost=batch_norm_grad,
   **BATCH_NORM_GRAD)


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


