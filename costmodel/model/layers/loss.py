"""The ops of the loss: records and cost functions, in step order (docs/ops.md)."""

from __future__ import annotations


from costmodel.model.costs import (Array, OpCost, OpSpec, _cost)
from costmodel.model.records import (LOSS, op)


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
