"""The ops of global average pooling layers (d x a x b -> d x 1 x 1): records and cost functions,
in step order (docs/ops.md)."""

from __future__ import annotations

from costmodel.model.costs import Array, OpCost, OpSpec, _cost, residual_add_grad
from costmodel.model.layers.notation import RESIDUAL_ADD_GRAD
from costmodel.model.records import ELEMENTWISE, forks, has_input_gradient, op


@op("global_avg_pool", "global_avg_pool", "forward", ELEMENTWISE, text="(1/(a$m b$m)) Z$m 1",
    mathtext=r"\frac{1}{a$m b$m} Z$m \mathbf{1}", latex=r"\frac{1}{a^{m} b^{m}} Z^{m,i} \mathbf{1}",
    how={"index": "a mean over the positions (a new array)", "strided": "a sum over the positions into a kept "
         "array, then a multiply"})
def global_avg_pool(x, spec: OpSpec) -> OpCost:
    """G (d,I,1,1): the mean of every channel of every instance over its a b positions, a b - 1
    adds and a multiply by 1/(a b) per (channel, instance). Keeps G when the next layer is a
    full layer, whose full_grad_W reads it as its input (no flatten: G already is d x I)."""
    return _cost(x, x.d * x.I * x.a * x.b, [Array("Z", (x.d, x.I, x.a, x.b))],
                 [Array("G", (x.d, x.I, 1, 1), kept=spec.output_read)])


op("global_avg_pool", "residual_add_grad", "backward", ELEMENTWISE, runs=forks, cost=residual_add_grad,
   **RESIDUAL_ADD_GRAD)


@op("global_avg_pool", "global_avg_pool_grad", "backward", ELEMENTWISE, runs=has_input_gradient,
    twin="global_avg_pool", text="(1/(a$m b$m)) dZ$n 1^T", mathtext=r"\frac{1}{a$m b$m} dZ$n \mathbf{1}^T",
    latex=r"\frac{1}{a^{m} b^{m}} \frac{\partial f}{\partial Z^{m+1}} \mathbf{1}^T")
def global_avg_pool_grad(x, spec: OpSpec) -> OpCost:
    """dZ (d,I,a,b): every position gets its channel's dG / (a b): a multiply per (channel,
    instance), then copies."""
    return _cost(x, x.d * x.I, [Array("dG", (x.d, x.I, 1, 1))], [Array("dZ", (x.d, x.I, x.a, x.b))])
