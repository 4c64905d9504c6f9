"""The ops of a residual block's addition S = F(X) + shortcut(X) and its activation: records and
cost functions, in step order (docs/ops.md). The block's conv layers and its projection are
conv layers of their own (docs/arch-format.md, "The flat list of layers")."""

from __future__ import annotations

from costmodel.model.costs import (Array, OpCost, OpSpec, _cost, activation, activation_grad, output_kept,
                                   residual_add_grad)
from costmodel.model.layers.notation import RESIDUAL_ADD_GRAD
from costmodel.model.records import ELEMENTWISE, forks, has_activation, op


@op("residual_add", "residual_add", "forward", ELEMENTWISE, text="F(X) + shortcut(X)",
    mathtext=r"F(X) + \mathrm{shortcut}(X)", latex=r"S^{m,i} = F(X^{i}) + \mathrm{shortcut}(X^{i})")
def residual_add(x, spec: OpSpec) -> OpCost:
    """S = F(X) + shortcut(X) (d,I,a,b): one add per element (index: a new array; strided: a
    kept one). Keeps S when sigma' reads it."""
    S = (x.d, x.I, x.a, x.b)
    return _cost(x, x.d * x.I * x.a * x.b, [Array("F(X)", S), Array("shortcut(X)", S)],
                 [Array("S", S, kept=output_kept(spec))])


op("residual_add", "activation", "forward", ELEMENTWISE, runs=has_activation, text="sigma(S$m)",
   mathtext=r"\sigma(S$m)", latex=r"\sigma(S^{m,i})", cost=activation)
op("residual_add", "residual_add_grad", "backward", ELEMENTWISE, runs=forks, cost=residual_add_grad,
   **RESIDUAL_ADD_GRAD)
op("residual_add", "activation_grad", "backward", ELEMENTWISE, runs=has_activation, twin="activation",
   text="sigma'(S$m)", mathtext=r"\sigma'(S$m)",
   latex=r"\frac{\partial f}{\partial Z^{m+1}} \odot \sigma'(S^{m})", cost=activation_grad)
