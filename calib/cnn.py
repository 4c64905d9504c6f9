"""The reference NumPy CNN in simpleNN's formulation (docs/ops.md is its contract).

One SG step is forward, loss, backward and update; every op of ``costmodel.model.ops.op_list``
ends with ``timer.lap(key)`` (calib/timer.py), and reports the arrays it reads and writes to
``cnn.trace`` when that hook is set. The keys are named in the code that runs the op, so
comparing the timer's record with ``op_list`` is an independent check.

Parameters: ``cnn.W[m - 1]`` is W^m ((d', h h d) for conv, (n_out, n_in) for full),
``cnn.b[m - 1]`` is b^m, ``cnn.vW``/``cnn.vb`` the momentum buffers. The update changes them
in place (the lists and arrays are never rebound), so tests may assign into them.

The network holds buffers (and, for ``impl="index"``, index arrays) for one batch size I.
A call with another batch size (training's last partial batch) rebuilds them for that size;
``predict`` runs in chunks of ``arch.batch``, padding the last chunk.

Threads: ``impl="index"`` is simpleNN's single-threaded NumPy, with BLAS's own threads in the
matrix products. ``impl="strided"`` with more than one thread shares every large op among
``threads`` threads of its own (kernels.Workers) while BLAS runs single-threaded.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np

from costmodel.model.arch import Architecture, LayerSizes
from costmodel.machine.backends.numpy import threaded_step
from costmodel.model.ops import OpKey, needs_flatten

from calib import kernels
from calib.timer import NULL_TIMER

IMPLS = ("index", "strided")

Trace = Callable[[OpKey, list, list], None]


def _interior(Zpad: np.ndarray, p: int) -> np.ndarray:
    """The (d, I, a, b) view of a padded array without its border of width p."""
    return Zpad[:, :, p:Zpad.shape[2] - p, p:Zpad.shape[3] - p]


class _Layer:
    """Parameters W^m, b^m, their gradients and momentum buffers, and the update op."""

    #: grads_ready(layer, timer), called as soon as dW^m and db^m are final (ReferenceCNN.hook_grads)
    grads_ready: Callable | None = None

    def __init__(self, sz: LayerSizes, kind: str, fan_in: int, n_out: int, activation: str,
                 dtype: np.dtype, rng: np.random.Generator) -> None:
        self.sz = sz
        self.m = sz.m
        self.relu = activation == "relu"
        scale = np.sqrt(2.0 / fan_in)  # He-normal
        self.W = (rng.standard_normal((n_out, fan_in)) * scale).astype(dtype)
        self.b = np.zeros(n_out, dtype=dtype)
        self.dW = np.zeros_like(self.W)
        self.db = np.zeros_like(self.b)
        self.vW = np.zeros_like(self.W)
        self.vb = np.zeros_like(self.b)
        self.key = partial(OpKey, sz.m, kind)
        self.k_update = self.key("update", "update")

    def bias_activation(self, tm, trace: Trace | None) -> None:
        """S = S + b 1^T, then sigma(S) in place (ReLU; nothing for a linear layer)."""
        self.workers.run(kernels.add_bias, len(self.b), (self.S, self.b))
        tm.lap(self.k_bias)
        if trace is not None:
            trace(self.k_bias, [self.S, self.b], [self.S])

        if self.relu:
            self.workers.run(kernels.relu, len(self.b), (self.S,))
            tm.lap(self.k_activation)
            if trace is not None:
                trace(self.k_activation, [self.S], [self.S])

    def backward_product(self, dS: np.ndarray, X: np.ndarray, dX: np.ndarray, k_grad_W: OpKey,
                         k_grad_input: OpKey, tm, trace: Trace | None) -> bool:
        """The backward of S = W X + b 1^T, X = phi(pad(Z)) (conv) or Z (full): the ReLU
        derivative (in place in dS), dW = dS X^T, db = dS 1 and, except for layer 1,
        dX = W^T dS. Returns whether dX was computed."""
        if self.relu:
            self.workers.run(kernels.relu_grad, len(self.b), (dS, self.S))
            tm.lap(self.k_activation_grad)
            if trace is not None:
                trace(self.k_activation_grad, [dS, self.S], [dS])

        self.workers.matmul(dS, X.T, self.dW)
        tm.lap(k_grad_W)
        if trace is not None:
            trace(k_grad_W, [dS, X], [self.dW])

        self.workers.run(kernels.bias_grad, len(self.b), (dS, self.db))
        tm.lap(self.k_bias_grad)
        if trace is not None:
            trace(self.k_bias_grad, [dS], [self.db])
        if self.grads_ready is not None:
            self.grads_ready(self, tm)

        if self.m == 1:
            return False
        self.workers.matmul(self.W.T, dS, dX)
        tm.lap(k_grad_input)
        if trace is not None:
            trace(k_grad_input, [self.W, dS], [dX])
        return True

    def update(self, I: int, opt, tm, trace: Trace | None) -> None:
        kernels.sgd_momentum(self.W, self.dW, self.vW, lr=opt.lr, momentum=opt.momentum,
                             C=opt.C, I=I)
        kernels.sgd_momentum(self.b, self.db, self.vb, lr=opt.lr, momentum=opt.momentum,
                             C=opt.C, I=I)
        tm.lap(self.k_update)
        if trace is not None:
            trace(self.k_update, [self.dW, self.W, self.vW, self.db, self.b, self.vb],
                  [self.W, self.vW, self.b, self.vb])


class _ConvLayer(_Layer):
    """S = W phi(pad(Z)) + b 1^T; A = sigma(S); Z^{m+1} = maxpool(A)."""

    def __init__(self, sz: LayerSizes, activation: str, impl: str, dtype: np.dtype,
                 rng: np.random.Generator) -> None:
        super().__init__(sz, "conv", sz.h * sz.h * sz.d, sz.d_next, activation, dtype, rng)
        self.strided = impl == "strided"
        self.dtype = dtype
        key = self.key
        self.k_pad, self.k_phi = key("pad", "forward"), key("phi", "forward")
        self.k_conv_matmul, self.k_bias = key("conv_matmul", "forward"), key("bias", "forward")
        self.k_activation, self.k_pool = key("activation", "forward"), key("pool", "forward")
        self.k_pool_grad = key("pool_grad", "backward")
        self.k_activation_grad = key("activation_grad", "backward")
        self.k_conv_grad_W, self.k_bias_grad = key("conv_grad_W", "backward"), key("bias_grad", "backward")
        self.k_conv_grad_input = key("conv_grad_input", "backward")
        self.k_phi_grad, self.k_pad_grad = key("phi_grad", "backward"), key("pad_grad", "backward")

    def build(self, I: int, dphi_scratch: np.ndarray | None, workers: kernels.Workers) -> None:
        """Allocate the buffers (and index arrays) that depend on the batch size I."""
        self.workers = workers
        sz, dt = self.sz, self.dtype
        K, N = sz.h * sz.h * sz.d, I * sz.a_conv * sz.b_conv
        src_shape = (sz.d, I, sz.a_pad, sz.b_pad) if sz.p > 0 else (sz.d, I, sz.a, sz.b)
        self.src_shape = src_shape
        self.phi = np.empty((K, N), dtype=dt)
        self.S = np.empty((sz.d_next, N), dtype=dt)
        self.A = self.S.reshape(sz.d_next, I, sz.a_conv, sz.b_conv)
        self.dphi = dphi_scratch[:K * N].reshape(K, N) if self.m > 1 else None
        self.Znext = self.pos = None
        if self.strided:
            next_shape = (sz.d_next, I, sz.a_next, sz.b_next)
            self.Zpad = np.zeros(src_shape, dtype=dt) if sz.p > 0 else None
            if sz.pool > 1:
                self.Znext = np.empty(next_shape, dtype=dt)
                self.pos = np.empty(next_shape, dtype=np.intp)
                self.mask = np.empty(next_shape, dtype=bool)
                small = np.min_scalar_type(sz.pool * sz.pool - 1)
                self.pos_small = np.empty(next_shape, dtype=small)
                self.pos_step = np.empty(next_shape, dtype=small)
                self.dA = np.zeros(self.A.shape, dtype=dt)
            if self.m > 1:
                self.dZsrc = np.empty(src_shape, dtype=dt)
                self.spread = np.zeros(src_shape, dtype=dt)
                self.dZ = np.empty((sz.d, I, sz.a, sz.b), dtype=dt) if sz.p > 0 else self.dZsrc
        else:
            self.idx_phi = kernels.phi_indices(sz.d, I, src_shape[2], src_shape[3], sz.h, sz.s,
                                               sz.a_conv, sz.b_conv)
            if sz.pool > 1:
                self.idx_pool = kernels.pool_indices(sz.d_next, I, sz.a_conv, sz.b_conv, sz.pool)

    def forward(self, Z: np.ndarray, tm, trace: Trace | None) -> np.ndarray:
        sz = self.sz
        p = sz.p
        Zsrc = Z
        if p > 0:
            if self.strided:
                self.workers.run(kernels.pad_strided, sz.d, (Z, self.Zpad), p)
                Zsrc = self.Zpad
            else:
                Zsrc = kernels.pad_index(Z, p)
            tm.lap(self.k_pad)
            if trace is not None:
                trace(self.k_pad, [Z], [_interior(Zsrc, p) if self.strided else Zsrc])

        if self.strided:
            self.workers.run(kernels.phi_strided, sz.d, (Zsrc, self.phi), sz.h, sz.s)
        else:
            kernels.phi_index(Zsrc, self.idx_phi, self.phi)
        tm.lap(self.k_phi)
        if trace is not None:
            trace(self.k_phi, [Zsrc] if self.strided else [Zsrc, self.idx_phi], [self.phi])

        self.workers.matmul(self.W, self.phi, self.S)
        tm.lap(self.k_conv_matmul)
        if trace is not None:
            trace(self.k_conv_matmul, [self.W, self.phi], [self.S])

        self.bias_activation(tm, trace)

        if sz.pool == 1:
            return self.A
        if self.strided:
            buffers = (self.A, self.Znext, self.pos, self.mask, self.pos_small, self.pos_step)
            self.workers.run(kernels.pool_strided, sz.d_next, buffers, sz.pool)
        else:
            self.Znext, self.pos = kernels.pool_index(self.A, self.idx_pool, sz.pool)
        tm.lap(self.k_pool)
        if trace is not None:
            trace(self.k_pool, [self.A] if self.strided else [self.A, self.idx_pool],
                  [self.Znext, self.pos])
        return self.Znext

    def backward(self, dZnext: np.ndarray, tm, trace: Trace | None) -> np.ndarray | None:
        """Gradients of W^m and b^m from dZ^{m+1}; returns dZ^m (None for layer 1)."""
        sz = self.sz
        dA = dZnext
        if sz.pool > 1:
            if self.strided:
                self.workers.run(kernels.pool_grad_strided, sz.d_next,
                                 (dZnext, self.pos, self.dA, self.mask), sz.pool)
                dA = self.dA
            else:
                dA = kernels.pool_grad_index(dZnext, self.pos, self.A.shape)
            tm.lap(self.k_pool_grad)
            if trace is not None:
                trace(self.k_pool_grad, [dZnext, self.pos], [dA])
        dS = dA.reshape(self.S.shape)

        if not self.backward_product(dS, self.phi, self.dphi, self.k_conv_grad_W,
                                     self.k_conv_grad_input, tm, trace):
            return None

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

        if sz.p == 0:
            return dZsrc
        if self.strided:
            self.workers.run(kernels.pad_grad_strided, sz.d, (dZsrc, self.dZ), sz.p)
            dZ = self.dZ
        else:
            dZ = kernels.pad_grad_index(dZsrc, sz.p)
        tm.lap(self.k_pad_grad)
        if trace is not None:
            trace(self.k_pad_grad, [_interior(dZsrc, sz.p)], [dZ])
        return dZ


class _FullLayer(_Layer):
    """S = W Z + b 1^T; Z^{m+1} = sigma(S) (linear on the output layer)."""

    def __init__(self, sz: LayerSizes, activation: str, flatten: bool, dtype: np.dtype,
                 rng: np.random.Generator) -> None:
        super().__init__(sz, "full", sz.n_in, sz.n_out, activation, dtype, rng)
        self.flatten = flatten
        self.dtype = dtype
        key = self.key
        self.k_flatten, self.k_full_matmul = key("flatten", "forward"), key("full_matmul", "forward")
        self.k_bias, self.k_activation = key("bias", "forward"), key("activation", "forward")
        self.k_activation_grad = key("activation_grad", "backward")
        self.k_full_grad_W, self.k_bias_grad = key("full_grad_W", "backward"), key("bias_grad", "backward")
        self.k_full_grad_input = key("full_grad_input", "backward")
        self.k_flatten_grad = key("flatten_grad", "backward")

    def build(self, I: int, dphi_scratch: np.ndarray | None, workers: kernels.Workers) -> None:
        self.workers = workers
        sz, dt = self.sz, self.dtype
        self.S = np.empty((sz.n_out, I), dtype=dt)
        self.Zin = None  # the input (n_in, I) of the last forward, read by full_grad_W
        self.X = np.empty((sz.n_in, I), dtype=dt) if self.flatten else None
        self.dX = np.empty((sz.n_in, I), dtype=dt) if self.m > 1 else None
        self.dZ = np.empty((sz.d, I, sz.a, sz.b), dtype=dt) if self.flatten else None

    def forward(self, Z: np.ndarray, tm, trace: Trace | None) -> np.ndarray:
        if self.flatten:
            self.workers.run(kernels.flatten, self.sz.d, (Z, self.X))
            tm.lap(self.k_flatten)
            if trace is not None:
                trace(self.k_flatten, [Z], [self.X])
            Z = self.X
        self.Zin = Z

        self.workers.matmul(self.W, Z, self.S)
        tm.lap(self.k_full_matmul)
        if trace is not None:
            trace(self.k_full_matmul, [self.W, Z], [self.S])

        self.bias_activation(tm, trace)
        return self.S

    def backward(self, dZnext: np.ndarray, tm, trace: Trace | None) -> np.ndarray | None:
        if not self.backward_product(dZnext, self.Zin, self.dX, self.k_full_grad_W,
                                     self.k_full_grad_input, tm, trace):
            return None

        if not self.flatten:
            return self.dX
        self.workers.run(kernels.flatten_grad, self.sz.d, (self.dX, self.dZ))
        tm.lap(self.k_flatten_grad)
        if trace is not None:
            trace(self.k_flatten_grad, [self.dX], [self.dZ])
        return self.dZ


class ReferenceCNN:
    """simpleNN's CNN on NumPy arrays.

    impl: "index" (index arrays, gathers and scatter-adds, as simpleNN) or "strided" (strided
    slices into preallocated buffers); seed: of the He-normal weights (the biases start at
    0); threads: the strided implementation's threads (default: as many as BLAS has now).
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
        rng = np.random.default_rng(seed)
        self.layers: list[_ConvLayer | _FullLayer] = []
        for sz in arch.sizes():
            act = arch.activation_of(sz.m)
            if sz.kind == "conv":
                self.layers.append(_ConvLayer(sz, act, impl, self.dtype, rng))
            else:
                self.layers.append(_FullLayer(sz, act, needs_flatten(arch, sz.m), self.dtype, rng))
        self.W = [layer.W for layer in self.layers]
        self.b = [layer.b for layer in self.layers]
        self.vW = [layer.vW for layer in self.layers]
        self.vb = [layer.vb for layer in self.layers]
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

    # -- batch-dependent buffers -------------------------------------------------------------
    def build(self, I: int) -> None:
        """(Re)allocate every buffer and index array for batch size I."""
        self.I = I
        sizes = [layer.sz for layer in self.layers]
        dphi_size = max((sz.h * sz.h * sz.d * I * sz.a_conv * sz.b_conv
                         for sz in sizes if sz.kind == "conv" and sz.m > 1), default=0)
        # conv_grad_input of one layer at a time: every layer's dphi is a view of one buffer
        dphi_scratch = np.empty(dphi_size, dtype=self.dtype) if dphi_size else None
        # the strided implementation's own threads (kernels.Workers, costmodel.machine.backends.numpy.threaded_step)
        threaded = threaded_step(self.impl, self.threads)
        self.workers = kernels.Workers(self.threads if threaded else 1)
        for layer in self.layers:
            layer.build(I, dphi_scratch, self.workers)
        n = self.arch.n_classes
        self.P = np.empty((n, I), dtype=self.dtype) if self.arch.loss == "softmax_ce" else None
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
    def _forward(self, X: np.ndarray, tm) -> np.ndarray:
        trace = self.trace
        tm.begin()
        Z = X
        for layer in self.layers:
            Z = layer.forward(Z, tm, trace)
        return Z

    def _loss(self, Z: np.ndarray, Y: np.ndarray, tm) -> float:
        trace = self.trace
        if self.P is None:
            value = kernels.mse_loss(Z, Y)
        else:
            value = kernels.softmax_ce_loss(Z, Y, self.P)
        tm.lap(self.k_loss)
        if trace is not None:
            trace(self.k_loss, [Z, Y], [value] if self.P is None else [self.P, value])

        if self.P is None:
            kernels.mse_loss_grad(Z, Y, self.dZ_out)
        else:
            kernels.softmax_ce_loss_grad(self.P, Y, self.dZ_out)
        tm.lap(self.k_loss_grad)
        if trace is not None:
            trace(self.k_loss_grad, [Z, Y] if self.P is None else [self.P, Y], [self.dZ_out])
        return float(value)

    def _backward(self, tm) -> None:
        dZ = self.dZ_out
        trace = self.trace
        for layer in reversed(self.layers):
            dZ = layer.backward(dZ, tm, trace)

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
        """Forward and backward without update: (loss, [dW^m], [db^m]) of the sum loss."""
        X, Y = self._inputs(X, Y)
        with self.workers.single_blas():
            loss = self._loss(self._forward(X, NULL_TIMER), Y, NULL_TIMER)
            self._backward(NULL_TIMER)
        return (loss, [layer.dW.copy() for layer in self.layers],
                [layer.db.copy() for layer in self.layers])

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Z^{L+1} (n_classes, I_total) for X in layout, in chunks of arch.batch."""
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
                out[:, start:start + count] = self._forward(part, NULL_TIMER)[:, :count]
        return out


def to_layout(X_nhwc: np.ndarray, arch: Architecture) -> np.ndarray:
    """Images (I, height, width, channels) -> the network's input layout and dtype:
    (d, I, a, b) for a conv net, (d a b, I) with rows (channel, row, column) for an MLP."""
    X = np.asarray(X_nhwc)
    expected = (arch.input.height, arch.input.width, arch.input.channels)
    if X.ndim != 4 or X.shape[1:] != expected:
        raise ValueError(f"images of shape {X.shape}, expected (I, {', '.join(map(str, expected))})")
    if arch.layers[0].type == "conv":
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
