"""The reference CNN's layers without a convolution: a full layer, global average pooling and a
residual block's addition."""

from __future__ import annotations

import numpy as np

from costmodel.model.arch import LayerSizes

from calib import kernels, workers
from calib.layers.base import Trace, Layer, Weighted


class Full(Weighted):
    """S = W Z + b 1^T; batch normalization; Z^{m+1} = sigma(S) (linear on the output layer);
    dropout."""

    def __init__(self, sz: LayerSizes, impl: str, dtype: np.dtype, rng: np.random.Generator) -> None:
        super().__init__(sz, impl, sz.n_in, sz.n_out, dtype, rng)
        self.flatten = sz.flatten
        key = self.key
        self.k_flatten, self.k_full_matmul = key("flatten", "forward"), key("full_matmul", "forward")
        self.k_full_grad_W = key("full_grad_W", "backward")
        self.k_full_grad_input = key("full_grad_input", "backward")
        self.k_flatten_grad = key("flatten_grad", "backward")

    def build(self, I: int, workers: workers.Workers, dphi_scratch: np.ndarray | None) -> None:
        self.workers = workers
        sz, dt = self.sz, self.dtype
        self.S = np.empty((sz.n_out, I), dtype=dt)
        self.Zin = None  # the input (n_in, I) of the last forward, read by full_grad_W
        self.X = np.empty((sz.n_in, I), dtype=dt) if self.flatten else None
        self.dX = np.empty((sz.n_in, I), dtype=dt) if self.input_grad else None
        self.dZ = np.empty((sz.d, I, sz.a, sz.b), dtype=dt) if self.flatten and self.input_grad else None
        self.build_post(self.S.shape, self.S.shape)

    def forward(self, inputs: list, tm, trace: Trace | None, training: bool = True) -> np.ndarray:
        (Z,) = inputs
        if self.flatten:
            self.workers.run(kernels.flatten, self.sz.d, (Z, self.X))
            tm.lap(self.k_flatten)
            if trace is not None:
                trace(self.k_flatten, [Z], [self.X])
            Z = self.X
        elif Z.ndim == 4:  # after global average pooling: (d, I, 1, 1) is (d, I)
            Z = Z.reshape(Z.shape[0], Z.shape[1])
        self.Zin = Z

        self.workers.matmul(self.W, Z, self.S)
        tm.lap(self.k_full_matmul)
        if trace is not None:
            trace(self.k_full_matmul, [self.W, Z], [self.S])

        A = self.bias_bn_activation(self.S, tm, trace, training)
        return self.dropout(A, tm, trace, training)

    def backward(self, dZnext: np.ndarray, tm, trace: Trace | None) -> list:
        dZnext, owned = self.dropout_backward(dZnext, tm, trace)
        dS = self.activation_bn_backward(dZnext, owned, tm, trace)
        if not self.backward_product(dS, self.Zin, self.dX, self.k_full_grad_W,
                                     self.k_full_grad_input, tm, trace):
            return [None]

        if not self.flatten:
            return [self.dX]
        self.workers.run(kernels.flatten_grad, self.sz.d, (self.dX, self.dZ))
        tm.lap(self.k_flatten_grad)
        if trace is not None:
            trace(self.k_flatten_grad, [self.dX], [self.dZ])
        return [self.dZ]


class GlobalAvgPool(Layer):
    """Z^{m+1} (d, I, 1, 1): the mean of every channel over its a b positions."""

    def __init__(self, sz: LayerSizes, impl: str, dtype: np.dtype) -> None:
        super().__init__(sz, impl, dtype)
        self.k_forward = self.key("global_avg_pool", "forward")
        self.k_backward = self.key("global_avg_pool_grad", "backward")

    def build(self, I: int, workers: workers.Workers, scratch) -> None:
        self.workers = workers
        sz = self.sz
        self.G = np.empty((sz.d, I, 1, 1), dtype=self.dtype) if self.strided else None
        self.dZ = (np.empty((sz.d, I, sz.a, sz.b), dtype=self.dtype)
                   if self.strided and self.input_grad else None)

    def forward(self, inputs: list, tm, trace: Trace | None, training: bool = True) -> np.ndarray:
        (Z,) = inputs
        if self.strided:
            self.workers.run(kernels.global_avg_pool_strided, self.sz.d, (Z, self.G))
            G = self.G
        else:
            G = kernels.global_avg_pool_index(Z)
        tm.lap(self.k_forward)
        if trace is not None:
            trace(self.k_forward, [Z], [G])
        return G

    def backward(self, dG: np.ndarray, tm, trace: Trace | None) -> list:
        sz = self.sz
        dG = dG.reshape(sz.d, dG.shape[1], 1, 1) if dG.ndim == 2 else dG
        if self.strided:
            self.workers.run(kernels.global_avg_pool_grad_strided, sz.d, (dG, self.dZ))
            dZ = self.dZ
        else:
            dZ = kernels.global_avg_pool_grad_index(dG, sz.a, sz.b)
        tm.lap(self.k_backward)
        if trace is not None:
            trace(self.k_backward, [dG], [dZ])
        return [dZ]


class ResidualAdd(Layer):
    """The addition of a residual block: S = F(X) + shortcut(X), then sigma(S) in place.

    Backward: sigma'(S) (activation_grad), then the gradient goes unchanged to both branches;
    the layer whose output is the block's input X sums the two gradients that reach it
    (its ``residual_add_grad``)."""

    def __init__(self, sz: LayerSizes, impl: str, dtype: np.dtype) -> None:
        super().__init__(sz, impl, dtype)
        self.activation = sz.activation
        key = self.key
        self.k_add, self.k_activation = key("residual_add", "forward"), key("activation", "forward")
        self.k_activation_grad = key("activation_grad", "backward")

    def build(self, I: int, workers: workers.Workers, scratch) -> None:
        self.workers = workers
        sz = self.sz
        shape = (sz.d, I, sz.a, sz.b)
        self.S = np.empty(shape, dtype=self.dtype) if self.strided else None
        smooth = self.activation in ("tanh", "sigmoid")
        self.act_scratch = np.empty(shape, dtype=self.dtype) if smooth and self.strided else None

    def forward(self, inputs: list, tm, trace: Trace | None, training: bool = True) -> np.ndarray:
        F, X = inputs
        run = self.workers.run
        if self.strided:
            run(kernels.residual_add_strided, self.sz.d, (F, X, self.S))
            S = self.S
        else:
            S = kernels.residual_add_index(F, X)
        tm.lap(self.k_add)
        if trace is not None:
            trace(self.k_add, [F, X], [S])
        if self.activation != "none":
            run(kernels.ACTIVATIONS[self.activation], self.sz.d, (S,))
            tm.lap(self.k_activation)
            if trace is not None:
                trace(self.k_activation, [S], [S])
        self.A = S
        return S

    def backward(self, dZ: np.ndarray, tm, trace: Trace | None) -> list:
        """dS for both branches (the same array: they only read it)."""
        if self.activation != "none":
            run = self.workers.run
            if self.activation == "relu":
                run(kernels.relu_grad, self.sz.d, (dZ, self.A, dZ))
            else:
                grad = kernels.tanh_grad if self.activation == "tanh" else kernels.sigmoid_grad
                if self.strided:
                    run(grad, self.sz.d, (dZ, self.A, dZ, self.act_scratch))
                else:
                    grad(dZ, self.A, dZ)
            tm.lap(self.k_activation_grad)
            if trace is not None:
                trace(self.k_activation_grad, [dZ, self.A], [dZ])
        return [dZ, dZ]
