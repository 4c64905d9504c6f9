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
``threads`` threads of its own (workers.Workers) while BLAS runs single-threaded; dropout's
draws run in the calling thread.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from costmodel.model.arch import Architecture
from costmodel.machine.backends.numpy import threaded_step
from costmodel.model.ops import OpKey

from calib import kernels, workers
from calib.timer import NULL_TIMER
from calib.layers.base import Trace, Layer, Weighted
from calib.layers.conv import Conv
from calib.layers.other import Full, GlobalAvgPool, ResidualAdd

IMPLS = ("index", "strided")


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
        self.threads = 1 if impl == "index" else workers.blas_threads() if threads is None else threads
        self.rng = np.random.default_rng(seed)
        #: fixed dropout masks: {m: bool array of layer m's output}, used instead of drawing
        self.dropout_masks: dict[int, np.ndarray] = {}
        self.layers: list[Layer] = []
        for sz in arch.sizes():
            if sz.kind == "conv":
                layer = Conv(sz, impl, self.dtype, self.rng)
            elif sz.kind == "full":
                layer = Full(sz, impl, self.dtype, self.rng)
            elif sz.kind == "global_avg_pool":
                layer = GlobalAvgPool(sz, impl, self.dtype)
            else:
                layer = ResidualAdd(sz, impl, self.dtype)
            layer.rng = self.rng
            self.layers.append(layer)
        # the layers an addition hands its gradient to, besides the block's input: F's last
        # layer and the projection must not write into it
        for layer in self.layers:
            if isinstance(layer, ResidualAdd):
                f, short = layer.sz.inputs
                self.layers[f - 1].keep_grad = True
                if short > f:  # a projection (an identity shortcut reads the block's input)
                    self.layers[short - 1].keep_grad = True
        weighted = [layer for layer in self.layers if isinstance(layer, Weighted)]
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
        # the strided implementation's own threads (workers.Workers, costmodel.machine.backends.numpy.threaded_step)
        threaded = threaded_step(self.impl, self.threads)
        self.workers = workers.Workers(self.threads if threaded else 1)
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
            if isinstance(layer, Weighted):
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
        weighted = [layer for layer in self.layers if isinstance(layer, Weighted)]
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
