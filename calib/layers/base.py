"""The base of the reference CNN's layers: a layer's sizes, op keys and buffers (Layer), and the
parameters, gradients and update of a layer with weights (Weighted)."""

from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np

from costmodel.model.arch import LayerSizes
from costmodel.model.ops import OpKey

from calib import kernels, workers


#: batch normalization's constants, as torch.nn.BatchNorm2d/1d
BN_EPS = 1e-5
BN_MOMENTUM = 0.1

Trace = Callable[[OpKey, list, list], None]


class Layer:
    """Layer m of the flat list: its sizes, op keys and the buffers of one batch size."""

    #: grads_ready(layer, timer), called as soon as the layer's gradients are final (ReferenceCNN.hook_grads)
    grads_ready: Callable | None = None

    def __init__(self, sz: LayerSizes, impl: str, dtype: np.dtype) -> None:
        self.sz = sz
        self.m = sz.m
        self.strided = impl == "strided"
        self.dtype = dtype
        self.key = partial(OpKey, sz.m, sz.kind)
        #: the gradient this layer receives is also handed to another layer (a residual
        #: block's addition gives its gradient to F's last layer and to the projection):
        #: the layer must not write into it
        self.keep_grad = False
        #: the layer computes the gradient of its input (not for the network's input)
        self.input_grad = 0 not in sz.inputs
        self.k_fork_grad = self.key("residual_add_grad", "backward")

    def build(self, I: int, workers: workers.Workers, scratch: np.ndarray | None) -> None:
        self.workers = workers

    def parameters(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{name: (array, gradient)} of the layer's trainable arrays."""
        return {}

    def state(self) -> list[np.ndarray]:
        return []

    def update(self, I: int, opt, tm, trace: Trace | None) -> None:
        pass

    def sum_grads(self, from_F: np.ndarray, from_shortcut: np.ndarray, tm,
                  trace: Trace | None) -> np.ndarray:
        """residual_add_grad, the first op of the backward of a layer whose output is a residual
        block's input X: dX = (F's gradient at X) + (the shortcut's gradient at X); in place
        into F's (an array of the block's first layer) in the strided implementation."""
        if self.strided:
            self.workers.run(kernels.residual_add_strided, len(from_F),
                             (from_F, from_shortcut, from_F))
            dX = from_F
        else:
            dX = kernels.residual_add_index(from_F, from_shortcut)
        tm.lap(self.k_fork_grad)
        if trace is not None:
            trace(self.k_fork_grad, [from_F, from_shortcut], [dX])
        return dX


class Weighted(Layer):
    """W^m, b^m (and gamma^m, beta^m with batch normalization), their gradients and momentum
    buffers, the update; the ops after the product: bias, batch_norm, activation, dropout."""

    def __init__(self, sz: LayerSizes, impl: str, fan_in: int, n_out: int, dtype: np.dtype,
                 rng: np.random.Generator) -> None:
        super().__init__(sz, impl, dtype)
        self.activation = sz.activation
        scale = np.sqrt(2.0 / fan_in)  # He-normal
        self.W = (rng.standard_normal((n_out, fan_in)) * scale).astype(dtype)
        self.b = np.zeros(n_out, dtype=dtype)
        self.dW = np.zeros_like(self.W)
        self.db = np.zeros_like(self.b)
        self.vW = np.zeros_like(self.W)
        self.vb = np.zeros_like(self.b)
        # the strided update's scratch arrays for (lr/I) dW and (lr/C) W, one per parameter shape
        self._update_buffers = ({self.W.shape: np.empty_like(self.W), self.b.shape: np.empty_like(self.b)}
                                if self.strided else {})
        self.bn = sz.batch_norm
        if self.bn:  # PyTorch's initial values
            self.gamma = np.ones(n_out, dtype=dtype)
            self.beta = np.zeros(n_out, dtype=dtype)
            self.dgamma, self.dbeta = np.zeros_like(self.gamma), np.zeros_like(self.beta)
            self.vgamma, self.vbeta = np.zeros_like(self.gamma), np.zeros_like(self.beta)
            self.running_mean = np.zeros(n_out, dtype=dtype)
            self.running_var = np.ones(n_out, dtype=dtype)
        self.rate = sz.dropout
        self.fixed_mask: np.ndarray | None = None  # set by ReferenceCNN from dropout_masks
        key = self.key
        self.k_bias, self.k_batch_norm = key("bias", "forward"), key("batch_norm", "forward")
        self.k_activation, self.k_dropout = key("activation", "forward"), key("dropout", "forward")
        self.k_dropout_grad = key("dropout_grad", "backward")
        self.k_activation_grad = key("activation_grad", "backward")
        self.k_batch_norm_grad = key("batch_norm_grad", "backward")
        self.k_bias_grad = key("bias_grad", "backward")
        self.k_update = key("update", "update")

    def parameters(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        m = self.m
        out = {f"W{m}": (self.W, self.dW), f"b{m}": (self.b, self.db)}
        if self.bn:
            out.update({f"gamma{m}": (self.gamma, self.dgamma), f"beta{m}": (self.beta, self.dbeta)})
        return out

    def state(self) -> list[np.ndarray]:
        arrays = [self.W, self.b, self.vW, self.vb]
        if self.bn:
            arrays += [self.gamma, self.beta, self.vgamma, self.vbeta, self.running_mean,
                       self.running_var]
        return arrays

    def build_post(self, S_shape: tuple, out_shape: tuple) -> None:
        """Buffers of the ops after the product: S (d', N) is the product's output, out_shape
        the layer's output before dropout."""
        dt, n = self.dtype, S_shape[0]
        strided = self.strided
        self.Xhat = np.empty(S_shape, dtype=dt) if self.bn and strided else None
        self.inv_std = np.empty(n, dtype=dt) if self.bn and strided else None
        self.bn_mean = np.empty(n, dtype=dt) if self.bn and strided else None
        self.bn_scratch = np.empty(S_shape, dtype=dt) if self.bn and strided else None
        smooth = self.activation in ("tanh", "sigmoid")
        self.act_scratch = np.empty(S_shape, dtype=dt) if smooth and strided else None
        self.Zdrop = self.keep = self.uniform = None
        if self.rate and strided:
            self.Zdrop = np.empty(out_shape, dtype=dt)
            self.keep = np.empty(out_shape, dtype=bool)
            self.uniform = np.empty(out_shape, dtype=dt)
        # the first op of the backward that would write into the incoming gradient writes here
        self.spare = np.empty(S_shape, dtype=dt) if self.keep_grad else None

    # -- forward -----------------------------------------------------------------------------
    def bias_bn_activation(self, S: np.ndarray, tm, trace: Trace | None, training: bool) -> np.ndarray:
        """S = S + b 1^T in place, then batch normalization (a new array in the index
        implementation, in place in the strided one) and sigma in place. Returns A (d', N)."""
        run = self.workers.run
        run(kernels.add_bias, len(self.b), (S, self.b))
        tm.lap(self.k_bias)
        if trace is not None:
            trace(self.k_bias, [S, self.b], [S])

        if self.bn:
            S_in = S
            if not training:
                S = kernels.batch_norm_eval(S, self.gamma, self.beta, self.running_mean,
                                            self.running_var, BN_EPS)
            elif self.strided:
                run(kernels.batch_norm_strided, len(self.b),
                    (S, self.Xhat, self.gamma, self.beta, self.bn_mean, self.inv_std,
                     self.running_mean, self.running_var), BN_EPS, BN_MOMENTUM)
            else:
                S, self.Xhat, self.inv_std = kernels.batch_norm_index(
                    S, self.gamma, self.beta, self.running_mean, self.running_var, BN_EPS,
                    BN_MOMENTUM)
            tm.lap(self.k_batch_norm)
            if trace is not None:
                stats = [self.running_mean, self.running_var]
                trace(self.k_batch_norm, [S_in, self.gamma, self.beta, *stats],
                      [S, self.Xhat, self.inv_std, *stats])

        if self.activation != "none":
            run(kernels.ACTIVATIONS[self.activation], len(self.b), (S,))
            tm.lap(self.k_activation)
            if trace is not None:
                trace(self.k_activation, [S], [S])
        self.A = S
        return S

    def dropout(self, Z: np.ndarray, tm, trace: Trace | None, training: bool) -> np.ndarray:
        """Inverted dropout of the layer's output Z (nothing in evaluation mode)."""
        if not self.rate or not training:
            return Z
        if self.strided:
            kernels.dropout_strided(Z, self.Zdrop, self.keep, self.uniform, self.rate, self.rng,
                                    self.fixed_mask)
            out = self.Zdrop
        else:
            out, self.keep = kernels.dropout_index(Z, self.rate, self.rng, self.fixed_mask)
        tm.lap(self.k_dropout)
        if trace is not None:
            trace(self.k_dropout, [Z], [self.keep, out])
        return out

    # -- backward ----------------------------------------------------------------------------
    def _target(self, grad: np.ndarray, owned: bool) -> np.ndarray:
        """Where an in-place op of the backward writes: into grad itself, or, while grad is
        the shared incoming gradient, into the spare buffer."""
        return grad if owned else self.spare.reshape(grad.shape)

    def dropout_backward(self, dZ: np.ndarray, tm, trace: Trace | None) -> tuple[np.ndarray, bool]:
        """dropout_grad: dZ * keep / (1 - rate). Returns (the gradient, whether it is the
        layer's own array)."""
        owned = not self.keep_grad
        if not self.rate:
            return dZ, owned
        out = self._target(dZ, owned)
        kernels.dropout_grad(dZ, self.keep, self.rate, out)
        tm.lap(self.k_dropout_grad)
        if trace is not None:
            trace(self.k_dropout_grad, [dZ, self.keep], [out])
        return out, True

    def activation_bn_backward(self, dA: np.ndarray, owned: bool, tm,
                               trace: Trace | None) -> np.ndarray:
        """activation_grad (dA (d', N) times sigma'(S), from A = sigma(S)) and batch_norm_grad
        (dgamma, dbeta and dS). Returns dS (d', N)."""
        run = self.workers.run
        if self.activation != "none":
            out = self._target(dA, owned)
            if self.activation == "relu":
                run(kernels.relu_grad, len(self.b), (dA, self.A, out))
            else:
                grad = kernels.tanh_grad if self.activation == "tanh" else kernels.sigmoid_grad
                if self.strided:
                    run(grad, len(self.b), (dA, self.A, out, self.act_scratch))
                else:
                    grad(dA, self.A, out)
            tm.lap(self.k_activation_grad)
            if trace is not None:
                trace(self.k_activation_grad, [dA, self.A], [out])
            dA, owned = out, True

        if self.bn:
            if self.strided:
                out = self._target(dA, owned)
                run(kernels.batch_norm_grad_strided, len(self.b),
                    (dA, self.Xhat, self.gamma, self.inv_std, self.dgamma, self.dbeta, out,
                     self.bn_scratch))
            else:
                out = kernels.batch_norm_grad_index(dA, self.Xhat, self.gamma, self.inv_std,
                                                    self.dgamma, self.dbeta)
            tm.lap(self.k_batch_norm_grad)
            if trace is not None:
                trace(self.k_batch_norm_grad, [dA, self.Xhat, self.gamma, self.inv_std],
                      [out, self.dgamma, self.dbeta])
            dA = out
        return dA

    def backward_product(self, dS: np.ndarray, X: np.ndarray, dX: np.ndarray | None,
                         k_grad_W: OpKey, k_grad_input: OpKey, tm, trace: Trace | None) -> bool:
        """The backward of S = W X + b 1^T, X = phi(pad(Z)) (conv) or Z (full): dW = dS X^T,
        db = dS 1 and, unless the input is the network's, dX = W^T dS. Returns whether dX was
        computed."""
        self.product_W(dS, X)
        tm.lap(k_grad_W)
        if trace is not None:
            trace(k_grad_W, [dS, X], [self.dW])

        self.workers.run(kernels.bias_grad, len(self.b), (dS, self.db))
        tm.lap(self.k_bias_grad)
        if trace is not None:
            trace(self.k_bias_grad, [dS], [self.db])
        if self.grads_ready is not None:
            self.grads_ready(self, tm)

        if not self.input_grad:
            return False
        self.product_input(dS, dX)
        tm.lap(k_grad_input)
        if trace is not None:
            trace(k_grad_input, [self.W, dS], [dX])
        return True

    def product_W(self, dS: np.ndarray, X: np.ndarray) -> None:
        self.workers.matmul(dS, X.T, self.dW)

    def product_input(self, dS: np.ndarray, dX: np.ndarray) -> None:
        self.workers.matmul(self.W.T, dS, dX)

    def update(self, I: int, opt, tm, trace: Trace | None) -> None:
        """simpleNN's SG with momentum on W^m, b^m (and gamma^m, beta^m)."""
        pairs = [(self.W, self.dW, self.vW), (self.b, self.db, self.vb)]
        if self.bn:
            pairs += [(self.gamma, self.dgamma, self.vgamma), (self.beta, self.dbeta, self.vbeta)]
        for theta, grad, v in pairs:
            kernels.sgd_momentum(theta, grad, v, lr=opt.lr, momentum=opt.momentum, C=opt.C, I=I,
                                 buffer=self._update_buffers.get(theta.shape))  # None: the index way
        tm.lap(self.k_update)
        if trace is not None:
            # the scaled terms (lr/I) dW, (lr/C) W: the strided buffer, or stand-ins of the index
            # way's temporaries (already freed) with their shape and dtype
            def scaled_terms(theta):
                buffer = self._update_buffers.get(theta.shape)
                return [buffer] * 2 if buffer is not None else [np.broadcast_to(np.empty((), theta.dtype),
                                                                                theta.shape)] * 2
            scaled = [scaled_terms(theta) for theta, _, _ in pairs]
            trace(self.k_update, [a for (theta, grad, v), tmp in zip(pairs, scaled) for a in (grad, theta, v, *tmp)],
                  [a for (theta, grad, v), tmp in zip(pairs, scaled) for a in (theta, v, *tmp)])
