"""The reference NumPy CNN in simpleNN's formulation (docs/ops.md is its contract).

One SG step is forward, loss, backward and update; every op ends with ``timer.lap(key)``
(calib/timer.py) and reports the arrays it reads and writes to ``cnn.trace`` when that hook is
set. The keys are named in the code that runs the op, so comparing the timer's record with
``costmodel.model.ops.op_list`` is an independent check.

The layers are the flat list m = 1..L of ``Architecture.sizes()`` (docs/arch-format.md): conv,
full, global average pooling and a residual block's addition; each reads the outputs of the
layers in its ``inputs``. The backward runs the layers in reverse order; the input X of a
residual block gets two gradients (F's and the shortcut's), and the backward of the layer that
produced X starts by summing them (its op ``residual_add_grad``).

Parameters: ``cnn.W`` and ``cnn.b`` list W^m ((d', h h d/g) for conv, (n_out, n_in) for full)
and b^m of the layers with weights, in the order of m (``cnn.weighted`` holds their m; without
global average pooling and residual blocks that is every layer, so ``cnn.W[m - 1]`` is W^m),
``cnn.vW``/``cnn.vb`` the momentum buffers. ``cnn.parameters()`` names every trainable array
(W3, b3, gamma3, beta3, ...), ``cnn.state()`` every array a step changes (with the momentum
buffers and batch norm's running averages). The update changes them in place (the lists and
arrays are never rebound), so tests may assign into them.

Training mode: batch normalization uses the statistics of the mini-batch and moves its running
averages (eps 1e-5, momentum 0.1, as PyTorch); dropout draws a new mask every step from the
network's generator (``cnn.rng``), unless ``cnn.dropout_masks[m]`` holds a fixed bool mask of
the layer's output (tests). ``predict`` runs in evaluation mode: running averages, no dropout.

The network holds buffers (and, for ``impl="index"``, index arrays) for one batch size I.
A call with another batch size (training's last partial batch) rebuilds them for that size;
``predict`` runs in chunks of ``arch.batch``, padding the last chunk.

Threads: ``impl="index"`` is simpleNN's single-threaded NumPy, with BLAS's own threads in the
matrix products. ``impl="strided"`` with more than one thread shares every large op among
``threads`` threads of its own (kernels.Workers) while BLAS runs single-threaded; dropout's
draws run in the calling thread.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np

from costmodel.model.arch import Architecture, LayerSizes
from costmodel.machine.backends.numpy import threaded_step
from costmodel.model.ops import OpKey

from calib import kernels
from calib.timer import NULL_TIMER

IMPLS = ("index", "strided")

#: batch normalization's constants, as torch.nn.BatchNorm2d/1d
BN_EPS = 1e-5
BN_MOMENTUM = 0.1

Trace = Callable[[OpKey, list, list], None]


class _Layer:
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

    def build(self, I: int, workers: kernels.Workers, scratch: np.ndarray | None) -> None:
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


class _Weighted(_Layer):
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


class _ConvLayer(_Weighted):
    """S = W phi(pad(Z)) + b 1^T (a product per group when g > 1); batch normalization;
    A = sigma(S); Z^{m+1} = pool(A) (max or average, window P with stride t); dropout."""

    def __init__(self, sz: LayerSizes, impl: str, dtype: np.dtype, rng: np.random.Generator) -> None:
        super().__init__(sz, impl, sz.h * sz.h * sz.d // sz.g, sz.d_next, dtype, rng)
        key = self.key
        self.k_pad, self.k_phi = key("pad", "forward"), key("phi", "forward")
        self.k_conv_matmul, self.k_pool = key("conv_matmul", "forward"), key("pool", "forward")
        self.k_pool_grad = key("pool_grad", "backward")
        self.k_conv_grad_W = key("conv_grad_W", "backward")
        self.k_conv_grad_input = key("conv_grad_input", "backward")
        self.k_phi_grad, self.k_pad_grad = key("phi_grad", "backward"), key("pad_grad", "backward")
        self.overlap = sz.pool_stride < sz.pool
        self.avg = sz.pool_type == "avg"

    def build(self, I: int, workers: kernels.Workers, dphi_scratch: np.ndarray | None) -> None:
        """Allocate the buffers (and index arrays) that depend on the batch size I."""
        self.workers = workers
        sz, dt = self.sz, self.dtype
        K, N = sz.h * sz.h * sz.d, I * sz.a_conv * sz.b_conv
        src_shape = (sz.d, I, sz.a_pad, sz.b_pad) if sz.padded else (sz.d, I, sz.a, sz.b)
        self.src_shape = src_shape
        next_shape = (sz.d_next, I, sz.a_next, sz.b_next)
        self.A_shape = (sz.d_next, I, sz.a_conv, sz.b_conv)
        self.next_shape = next_shape
        self.phi = np.empty((K, N), dtype=dt)
        self.S = np.empty((sz.d_next, N), dtype=dt)
        self.dphi = dphi_scratch[:K * N].reshape(K, N) if self.input_grad else None
        self.Znext = self.pos = None
        self.build_post(self.S.shape, next_shape)
        t = sz.pool_stride
        ceil_counts = sz.pooled and sz.pool_ceil and (
            (sz.a_next - 1) * t + sz.pool > sz.a_conv or (sz.b_next - 1) * t + sz.pool > sz.b_conv)
        if self.strided:
            self.Zpad = np.zeros(src_shape, dtype=dt) if sz.padded else None
            if sz.pooled:
                self.Znext = np.empty(next_shape, dtype=dt)
                self.dA = np.zeros(self.A_shape, dtype=dt)
                self.spread_pool = np.empty(next_shape, dtype=dt) if self.overlap or self.avg else None
                if not self.avg:
                    self.pos = np.empty(next_shape, dtype=np.intp)
                    self.mask = np.empty(next_shape, dtype=bool)
                    small = np.min_scalar_type(sz.pool * sz.pool - 1)
                    self.pos_small = np.empty(next_shape, dtype=small)
                    self.pos_step = np.empty(next_shape, dtype=small)
                self.inv_count = (kernels.pool_inverse_count(sz.a_conv, sz.b_conv, sz.pool, t,
                                                             sz.a_next, sz.b_next, dt)
                                  if self.avg and ceil_counts else None)
            if self.input_grad:
                self.dZsrc = np.empty(src_shape, dtype=dt)
                self.spread = np.zeros(src_shape, dtype=dt)
                self.dZ = np.empty((sz.d, I, sz.a, sz.b), dtype=dt) if sz.padded else self.dZsrc
        else:
            self.idx_phi = kernels.phi_indices(sz.d, I, src_shape[2], src_shape[3], sz.h, sz.s,
                                               sz.a_conv, sz.b_conv)
            if sz.pooled:
                self.idx_pool = kernels.pool_indices(sz.d_next, I, sz.a_conv, sz.b_conv, sz.pool,
                                                     t, sz.a_next, sz.b_next)
                self.pool_weight = (kernels.pool_weight(sz.a_conv, sz.b_conv, sz.pool, t,
                                                        sz.a_next, sz.b_next, dt)
                                    if self.avg else None)
        if sz.g > 1:
            g = sz.g
            self.W3 = self.W.reshape(g, sz.d_next // g, K // g)
            self.dW3 = self.dW.reshape(g, sz.d_next // g, K // g)

    def _interior(self, Zpad: np.ndarray) -> np.ndarray:
        """The (d, I, a, b) view of a padded array without its border."""
        sz = self.sz
        return Zpad[:, :, sz.p_top:sz.p_top + sz.a, sz.p_left:sz.p_left + sz.b]

    def _groups(self, X: np.ndarray) -> np.ndarray:
        """(rows, N) -> (g, rows/g, N): the rows of each group as one block of a stack."""
        return X.reshape(self.sz.g, X.shape[0] // self.sz.g, X.shape[1])

    def forward(self, inputs: list, tm, trace: Trace | None, training: bool = True) -> np.ndarray:
        (Z,) = inputs
        sz = self.sz
        Zsrc = Z
        if sz.padded:
            if self.strided:
                self.workers.run(kernels.pad_strided, sz.d, (Z, self.Zpad), sz.p_top, sz.p_left)
                Zsrc = self.Zpad
            else:
                Zsrc = kernels.pad_index(Z, sz.p_top, sz.p_bottom, sz.p_left, sz.p_right)
            tm.lap(self.k_pad)
            if trace is not None:
                trace(self.k_pad, [Z], [self._interior(Zsrc) if self.strided else Zsrc])

        if self.strided:
            self.workers.run(kernels.phi_strided, sz.d, (Zsrc, self.phi), sz.h, sz.s)
        else:
            kernels.phi_index(Zsrc, self.idx_phi, self.phi)
        tm.lap(self.k_phi)
        if trace is not None:
            trace(self.k_phi, [Zsrc] if self.strided else [Zsrc, self.idx_phi], [self.phi])

        if sz.g == 1:
            self.workers.matmul(self.W, self.phi, self.S)
        else:
            self.workers.run(kernels.grouped_matmul, sz.g,
                             (self.W3, self._groups(self.phi), self._groups(self.S)))
        tm.lap(self.k_conv_matmul)
        if trace is not None:
            trace(self.k_conv_matmul, [self.W, self.phi], [self.S])

        A = self.bias_bn_activation(self.S, tm, trace, training).reshape(self.A_shape)
        self.A4 = A
        Z = A if not sz.pooled else self.pool(A, tm, trace)
        return self.dropout(Z, tm, trace, training)

    def pool(self, A: np.ndarray, tm, trace: Trace | None) -> np.ndarray:
        sz = self.sz
        P, t = sz.pool, sz.pool_stride
        if self.strided:
            if self.avg:
                self.workers.run(kernels.avg_pool_strided, sz.d_next, (A, self.Znext), P, t,
                                 self.inv_count)
            else:
                buffers = (A, self.Znext, self.pos, self.mask, self.pos_small, self.pos_step)
                self.workers.run(kernels.pool_strided, sz.d_next, buffers, P, t)
        elif self.avg:
            self.Znext = kernels.avg_pool_index(A, self.idx_pool, self.pool_weight, self.next_shape)
        else:
            self.Znext, self.pos = kernels.pool_index(A, self.idx_pool, self.next_shape)
        tm.lap(self.k_pool)
        if trace is not None:
            trace(self.k_pool, [A, *self._pool_reads()], [self.Znext] if self.avg else [self.Znext, self.pos])
        return self.Znext

    def _pool_reads(self) -> list:
        """The arrays pool and pool_grad read besides A or dZ^{m+1}."""
        if self.avg:
            if self.strided:
                return [] if self.inv_count is None else [self.inv_count]
            return [self.idx_pool, self.pool_weight]
        return [] if self.strided else [self.idx_pool]

    def backward(self, dZnext: np.ndarray, tm, trace: Trace | None) -> list:
        """Gradients of W^m and b^m (gamma^m, beta^m) from dZ^{m+1}; returns [dZ^m] (None for
        the network's input)."""
        sz = self.sz
        dZnext, owned = self.dropout_backward(dZnext, tm, trace)
        dA = dZnext
        if sz.pooled:
            dZnext = dZnext.reshape(self.next_shape)
            P, t = sz.pool, sz.pool_stride
            if self.strided:
                if self.avg:
                    self.workers.run(kernels.avg_pool_grad_strided, sz.d_next,
                                     (dZnext, self.dA, self.spread_pool), P, t, self.inv_count)
                else:
                    self.workers.run(kernels.pool_grad_strided, sz.d_next,
                                     (dZnext, self.pos, self.dA, self.mask, self.spread_pool), P, t)
                dA = self.dA
            elif self.avg:
                dA = kernels.avg_pool_grad_index(dZnext, self.idx_pool, self.pool_weight, self.A_shape)
            else:
                dA = kernels.pool_grad_index(dZnext, self.pos, self.A_shape, self.overlap)
            tm.lap(self.k_pool_grad)
            if trace is not None:
                reads = [dZnext, *self._pool_reads()] if self.avg else [dZnext, self.pos]
                trace(self.k_pool_grad, reads, [dA])
            owned = True
        dS = self.activation_bn_backward(dA.reshape(self.S.shape), owned, tm, trace)

        if not self.backward_product(dS, self.phi, self.dphi, self.k_conv_grad_W,
                                     self.k_conv_grad_input, tm, trace):
            return [None]

        if self.strided:
            self.workers.run(kernels.phi_grad_strided, sz.d,
                             (self.dphi, self.dZsrc, self.spread), sz.h, sz.s)
            dZsrc = self.dZsrc
        else:
            dZsrc = kernels.phi_grad_index(self.dphi, self.idx_phi, self.src_shape)
        tm.lap(self.k_phi_grad)
        if trace is not None:
            trace(self.k_phi_grad, [self.dphi] if self.strided else [self.dphi, self.idx_phi],
                  [dZsrc])

        if not sz.padded:
            return [dZsrc]
        if self.strided:
            self.workers.run(kernels.pad_grad_strided, sz.d, (dZsrc, self.dZ), sz.p_top, sz.p_left)
            dZ = self.dZ
        else:
            dZ = kernels.pad_grad_index(dZsrc, sz.p_top, sz.p_left, sz.a, sz.b)
        tm.lap(self.k_pad_grad)
        if trace is not None:
            trace(self.k_pad_grad, [self._interior(dZsrc)], [dZ])
        return [dZ]

    def product_W(self, dS: np.ndarray, X: np.ndarray) -> None:
        if self.sz.g == 1:
            self.workers.matmul(dS, X.T, self.dW)
        else:
            self.workers.run(kernels.grouped_matmul, self.sz.g,
                             (self._groups(dS), self._groups(X).transpose(0, 2, 1), self.dW3))

    def product_input(self, dS: np.ndarray, dX: np.ndarray) -> None:
        if self.sz.g == 1:
            self.workers.matmul(self.W.T, dS, dX)
        else:
            self.workers.run(kernels.grouped_matmul, self.sz.g,
                             (self.W3.transpose(0, 2, 1), self._groups(dS), self._groups(dX)))


class _FullLayer(_Weighted):
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

    def build(self, I: int, workers: kernels.Workers, dphi_scratch: np.ndarray | None) -> None:
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


class _GlobalAvgPool(_Layer):
    """Z^{m+1} (d, I, 1, 1): the mean of every channel over its a b positions."""

    def __init__(self, sz: LayerSizes, impl: str, dtype: np.dtype) -> None:
        super().__init__(sz, impl, dtype)
        self.k_forward = self.key("global_avg_pool", "forward")
        self.k_backward = self.key("global_avg_pool_grad", "backward")

    def build(self, I: int, workers: kernels.Workers, scratch) -> None:
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


class _ResidualAdd(_Layer):
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

    def build(self, I: int, workers: kernels.Workers, scratch) -> None:
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


class ReferenceCNN:
    """simpleNN's CNN on NumPy arrays.

    impl: "index" (index arrays, gathers and scatter-adds, as simpleNN) or "strided" (strided
    slices into preallocated buffers); seed: of the He-normal weights (the biases start at
    0) and of dropout's masks; threads: the strided implementation's threads (default: as many
    as BLAS has now).
    """

    def __init__(self, arch: Architecture, impl: str = "index", seed: int = 0,
                 threads: int | None = None) -> None:
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {', '.join(IMPLS)}, not {impl!r}")
        self.arch = arch
        self.impl = impl
        self.dtype = np.dtype(arch.dtype)
        self.trace: Trace | None = None
        self.threads = 1 if impl == "index" else kernels.blas_threads() if threads is None else threads
        self.rng = np.random.default_rng(seed)
        #: fixed dropout masks: {m: bool array of layer m's output}, used instead of drawing
        self.dropout_masks: dict[int, np.ndarray] = {}
        self.layers: list[_Layer] = []
        for sz in arch.sizes():
            if sz.kind == "conv":
                layer = _ConvLayer(sz, impl, self.dtype, self.rng)
            elif sz.kind == "full":
                layer = _FullLayer(sz, impl, self.dtype, self.rng)
            elif sz.kind == "global_avg_pool":
                layer = _GlobalAvgPool(sz, impl, self.dtype)
            else:
                layer = _ResidualAdd(sz, impl, self.dtype)
            layer.rng = self.rng
            self.layers.append(layer)
        # the layers an addition hands its gradient to, besides the block's input: F's last
        # layer and the projection must not write into it
        for layer in self.layers:
            if isinstance(layer, _ResidualAdd):
                f, short = layer.sz.inputs
                self.layers[f - 1].keep_grad = True
                if short > f:  # a projection (an identity shortcut reads the block's input)
                    self.layers[short - 1].keep_grad = True
        weighted = [layer for layer in self.layers if isinstance(layer, _Weighted)]
        self.weighted = [layer.m for layer in weighted]
        self.W = [layer.W for layer in weighted]
        self.b = [layer.b for layer in weighted]
        self.vW = [layer.vW for layer in weighted]
        self.vb = [layer.vb for layer in weighted]
        L = arch.L
        self.k_loss = OpKey(L + 1, "loss", "loss", "forward")
        self.k_loss_grad = OpKey(L + 1, "loss", "loss_grad", "backward")
        self.I = 0
        self.before_update: Callable | None = None
        self.update_batch: int | None = None
        self.build(arch.batch)

    def hook_grads(self, grads_ready: Callable | None, before_update: Callable | None = None,
                   update_batch: int | None = None) -> None:
        """Hooks for data-parallel SG (calib/parallel): grads_ready(layer, timer) runs as soon as
        a layer's dW^m and db^m are final (after its bias_grad, before its input gradient),
        before_update(timer) after the backward, and the update divides the (summed) gradient by
        update_batch (the whole mini-batch of all workers) instead of this step's I. None
        removes a hook."""
        for layer in self.layers:
            layer.grads_ready = grads_ready
        self.before_update = before_update
        self.update_batch = update_batch

    def parameters(self) -> dict[str, np.ndarray]:
        """Every trainable array by name: W{m}, b{m}, gamma{m}, beta{m}, in the order of m."""
        return {name: theta for layer in self.layers for name, (theta, _) in layer.parameters().items()}

    def gradients(self) -> dict[str, np.ndarray]:
        """The gradients of the last backward, by the names of parameters() (copies)."""
        return {name: grad.copy() for layer in self.layers
                for name, (_, grad) in layer.parameters().items()}

    def state(self) -> list[np.ndarray]:
        """Every array a step changes (parameters, momentum buffers, running averages), to
        save and restore a network's starting point."""
        return [a for layer in self.layers for a in layer.state()]

    # -- batch-dependent buffers -------------------------------------------------------------
    def build(self, I: int) -> None:
        """(Re)allocate every buffer and index array for batch size I."""
        self.I = I
        sizes = [layer.sz for layer in self.layers]
        dphi_size = max((sz.h * sz.h * sz.d * I * sz.a_conv * sz.b_conv
                         for sz, layer in zip(sizes, self.layers)
                         if sz.kind == "conv" and layer.input_grad), default=0)
        # conv_grad_input of one layer at a time: every layer's dphi is a view of one buffer
        dphi_scratch = np.empty(dphi_size, dtype=self.dtype) if dphi_size else None
        # the strided implementation's own threads (kernels.Workers, costmodel.machine.backends.numpy.threaded_step)
        threaded = threaded_step(self.impl, self.threads)
        self.workers = kernels.Workers(self.threads if threaded else 1)
        for layer in self.layers:
            layer.build(I, self.workers, dphi_scratch)
        n = self.arch.n_classes
        self.softmax = np.empty((n, I), dtype=self.dtype) if self.arch.loss == "softmax_ce" else None
        self.dZ_out = np.empty((n, I), dtype=self.dtype)
        self.input_shape = self._input_shape(I)

    def _input_shape(self, I: int) -> tuple:
        first = self.layers[0].sz
        return (first.d, I, first.a, first.b) if first.kind == "conv" else (first.n_in, I)

    def _inputs(self, X: np.ndarray, Y: np.ndarray | None = None):
        """X (and Y) in the network's dtype, C-contiguous; the buffers are rebuilt for a new
        batch size."""
        X = np.ascontiguousarray(X, dtype=self.dtype)
        if X.shape != self.input_shape:
            if X.ndim < 2 or X.shape != self._input_shape(X.shape[1]):
                raise ValueError(f"input of shape {X.shape}, expected {self.input_shape} "
                                 "(see to_layout)")
            self.build(X.shape[1])
        if Y is None:
            return X
        Y = np.ascontiguousarray(Y, dtype=self.dtype)
        if Y.shape != self.dZ_out.shape:
            raise ValueError(f"labels of shape {Y.shape}, expected {self.dZ_out.shape}")
        return X, Y

    # -- the step ----------------------------------------------------------------------------
    def _forward(self, X: np.ndarray, tm, training: bool = True) -> np.ndarray:
        trace = self.trace if training else None
        for layer in self.layers:
            if isinstance(layer, _Weighted):
                mask = self.dropout_masks.get(layer.m)
                layer.fixed_mask = None if mask is None else np.asarray(mask, dtype=bool)
        tm.begin()
        outputs = [X]
        for layer in self.layers:
            outputs.append(layer.forward([outputs[i] for i in layer.sz.inputs], tm, trace, training))
        return outputs[-1]

    def _loss(self, Z: np.ndarray, Y: np.ndarray, tm) -> float:
        trace = self.trace
        if self.softmax is None:
            value = kernels.mse_loss(Z, Y)
        else:
            value = kernels.softmax_ce_loss(Z, Y, self.softmax)
        tm.lap(self.k_loss)
        if trace is not None:
            trace(self.k_loss, [Z, Y], [value] if self.softmax is None else [self.softmax, value])

        if self.softmax is None:
            kernels.mse_loss_grad(Z, Y, self.dZ_out)
        else:
            kernels.softmax_ce_loss_grad(self.softmax, Y, self.dZ_out)
        tm.lap(self.k_loss_grad)
        if trace is not None:
            trace(self.k_loss_grad, [Z, Y] if self.softmax is None else [self.softmax, Y], [self.dZ_out])
        return float(value)

    def _backward(self, tm) -> None:
        """Layers in reverse order; grads[m] collects the gradients of layer m's output (two
        at a residual block's input, summed by the block's residual_add_grad)."""
        trace = self.trace
        L = len(self.layers)
        grads: list[list] = [[] for _ in range(L + 1)]
        grads[L].append(self.dZ_out)
        for layer in reversed(self.layers):
            m = layer.m
            if len(grads[m]) == 2:  # the input of a residual block: shortcut's, then F's
                from_shortcut, from_F = grads[m]
                grads[m] = [layer.sum_grads(from_F, from_shortcut, tm, trace)]
            (dZ,) = grads[m]
            for i, dX in zip(layer.sz.inputs, layer.backward(dZ, tm, trace)):
                if i > 0 and dX is not None:
                    grads[i].append(dX)

    def step(self, X: np.ndarray, Y: np.ndarray, timer=None) -> float:
        """One SG step (forward, loss, backward, update); returns the loss of the batch."""
        tm = NULL_TIMER if timer is None else timer
        X, Y = self._inputs(X, Y)
        with self.workers.single_blas():
            loss = self._loss(self._forward(X, tm), Y, tm)
            self._backward(tm)
            if self.before_update is not None:
                self.before_update(tm)
            opt, I, trace = self.arch.optimizer, self.update_batch or self.I, self.trace
            for layer in self.layers:
                layer.update(I, opt, tm, trace)
        return loss

    def loss_and_grads(self, X: np.ndarray, Y: np.ndarray) -> tuple[float, list, list]:
        """Forward and backward without update: (loss, [dW^m], [db^m]) of the sum loss, for
        the layers with weights (``gradients()`` then has every gradient by name). Batch
        normalization's running averages move, as in any training-mode forward."""
        X, Y = self._inputs(X, Y)
        with self.workers.single_blas():
            loss = self._loss(self._forward(X, NULL_TIMER), Y, NULL_TIMER)
            self._backward(NULL_TIMER)
        weighted = [layer for layer in self.layers if isinstance(layer, _Weighted)]
        return (loss, [layer.dW.copy() for layer in weighted], [layer.db.copy() for layer in weighted])

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Z^{L+1} (n_classes, I_total) for X in layout, in chunks of arch.batch, in evaluation
        mode (batch normalization with its running averages, no dropout)."""
        X = np.asarray(X, dtype=self.dtype)
        total, chunk = X.shape[1], self.arch.batch
        out = np.empty((self.arch.n_classes, total), dtype=self.dtype)
        for start in range(0, total, chunk):
            part = X[:, start:start + chunk]
            count = part.shape[1]
            if count < chunk:
                padding = np.zeros(part.shape[:1] + (chunk - count,) + part.shape[2:], self.dtype)
                part = np.concatenate([part, padding], axis=1)
            part = self._inputs(part)
            with self.workers.single_blas():
                out[:, start:start + count] = self._forward(part, NULL_TIMER, training=False)[:, :count]
        return out


def to_layout(X_nhwc: np.ndarray, arch: Architecture) -> np.ndarray:
    """Images (I, height, width, channels) -> the network's input layout and dtype:
    (d, I, a, b) for a conv net, (d a b, I) with rows (channel, row, column) for an MLP."""
    X = np.asarray(X_nhwc)
    expected = (arch.input.height, arch.input.width, arch.input.channels)
    if X.ndim != 4 or X.shape[1:] != expected:
        raise ValueError(f"images of shape {X.shape}, expected (I, {', '.join(map(str, expected))})")
    if arch.layers[0].type != "full":
        Z = X.transpose(3, 0, 1, 2)  # (d, I, a, b)
    else:
        Z = X.transpose(3, 1, 2, 0).reshape(-1, X.shape[0])  # (d a b, I)
    return np.ascontiguousarray(Z, dtype=arch.dtype)


def one_hot(y: np.ndarray, n_classes: int, dtype) -> np.ndarray:
    """Integer labels (I,) -> one-hot Y (n_classes, I)."""
    y = np.asarray(y)
    Y = np.zeros((n_classes, y.shape[0]), dtype=dtype)
    Y[y, np.arange(y.shape[0])] = 1
    return Y
