"""A conv layer of the reference CNN: pad, phi (im2col), W phi, bias, batch normalization,
activation, pooling and dropout, forward and backward, in both implementations."""

from __future__ import annotations

import numpy as np

from costmodel.model.arch import LayerSizes

from calib import kernels, windows, workers
from calib.layers.base import Trace, Weighted


class Conv(Weighted):
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

    def build(self, I: int, workers: workers.Workers, dphi_scratch: np.ndarray | None) -> None:
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
                self.inv_count = (windows.pool_inverse_count(sz.a_conv, sz.b_conv, sz.pool, t,
                                                             sz.a_next, sz.b_next, dt)
                                  if self.avg and ceil_counts else None)
            if self.input_grad:
                self.dZsrc = np.empty(src_shape, dtype=dt)
                self.spread = np.zeros(src_shape, dtype=dt)
                self.dZ = np.empty((sz.d, I, sz.a, sz.b), dtype=dt) if sz.padded else self.dZsrc
        else:
            self.idx_phi = windows.phi_indices(sz.d, I, src_shape[2], src_shape[3], sz.h, sz.s,
                                               sz.a_conv, sz.b_conv)
            if sz.pooled:
                self.idx_pool = windows.pool_indices(sz.d_next, I, sz.a_conv, sz.b_conv, sz.pool,
                                                     t, sz.a_next, sz.b_next)
                self.pool_weight = (windows.pool_weight(sz.a_conv, sz.b_conv, sz.pool, t,
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
                self.workers.run(windows.pad_strided, sz.d, (Z, self.Zpad), sz.p_top, sz.p_left)
                Zsrc = self.Zpad
            else:
                Zsrc = windows.pad_index(Z, sz.p_top, sz.p_bottom, sz.p_left, sz.p_right)
            tm.lap(self.k_pad)
            if trace is not None:
                trace(self.k_pad, [Z], [self._interior(Zsrc) if self.strided else Zsrc])

        if self.strided:
            self.workers.run(windows.phi_strided, sz.d, (Zsrc, self.phi), sz.h, sz.s)
        else:
            windows.phi_index(Zsrc, self.idx_phi, self.phi)
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
                self.workers.run(windows.avg_pool_strided, sz.d_next, (A, self.Znext), P, t,
                                 self.inv_count)
            else:
                buffers = (A, self.Znext, self.pos, self.mask, self.pos_small, self.pos_step)
                self.workers.run(windows.pool_strided, sz.d_next, buffers, P, t)
        elif self.avg:
            self.Znext = windows.avg_pool_index(A, self.idx_pool, self.pool_weight, self.next_shape)
        else:
            self.Znext, self.pos = windows.pool_index(A, self.idx_pool, self.next_shape)
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
                    self.workers.run(windows.avg_pool_grad_strided, sz.d_next,
                                     (dZnext, self.dA, self.spread_pool), P, t, self.inv_count)
                else:
                    self.workers.run(windows.pool_grad_strided, sz.d_next,
                                     (dZnext, self.pos, self.dA, self.mask, self.spread_pool), P, t)
                dA = self.dA
            elif self.avg:
                dA = windows.avg_pool_grad_index(dZnext, self.idx_pool, self.pool_weight, self.A_shape)
            else:
                dA = windows.pool_grad_index(dZnext, self.pos, self.A_shape, self.overlap)
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
            self.workers.run(windows.phi_grad_strided, sz.d,
                             (self.dphi, self.dZsrc, self.spread), sz.h, sz.s)
            dZsrc = self.dZsrc
        else:
            dZsrc = windows.phi_grad_index(self.dphi, self.idx_phi, self.src_shape)
        tm.lap(self.k_phi_grad)
        if trace is not None:
            trace(self.k_phi_grad, [self.dphi] if self.strided else [self.dphi, self.idx_phi],
                  [dZsrc])

        if not sz.padded:
            return [dZsrc]
        if self.strided:
            self.workers.run(windows.pad_grad_strided, sz.d, (dZsrc, self.dZ), sz.p_top, sz.p_left)
            dZ = self.dZ
        else:
            dZ = windows.pad_grad_index(dZsrc, sz.p_top, sz.p_left, sz.a, sz.b)
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
