"""The op kernels of the reference CNN, in simpleNN's layout (docs/ops.md).

Two implementations of the data-movement ops:

- ``index`` (simpleNN's way): index arrays (``intp``) built once per layer and batch size;
  phi is a gather through ``idx_phi``, pooling a gather through ``idx_pool`` then
  argmax/max, phi_grad a scatter-add (``np.add.at``) and pool_grad a scatter through ``pos``;
  pad, pool, pool_grad, phi_grad and pad_grad return new arrays.
- ``strided``: no index arrays and no ``np.add.at``; shifted/strided slices copied into, or
  summed from, preallocated buffers that the caller passes in.

The bias, activation, loss, flatten and update kernels are shared; so are the matrix products,
through ``Workers.matmul``. ``Workers`` shares an op among threads (the strided
implementation's, for large networks). Names follow the course: Z (layer input),
Zpad = pad(Z), phi = phi(pad(Z)) of shape (K, N) with K = h h d and N = I a_conv b_conv,
S = W phi + b 1^T, A = sigma(S), P the pooling width.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import costmodel.machine.backends.numpy as rules

# -- index arrays (index implementation) --------------------------------------------------


def phi_indices(d: int, I: int, a_src: int, b_src: int, h: int, s: int,
                a_conv: int, b_conv: int) -> np.ndarray:
    """idx_phi (K, N): the flat position in the source (d, I, a_src, b_src) of every
    element of phi, rows (channel, kernel row, kernel column), columns (instance, row, col)."""
    c = np.arange(d).reshape(d, 1, 1, 1, 1, 1) * (I * a_src * b_src)
    i = np.arange(h).reshape(1, h, 1, 1, 1, 1) * b_src
    j = np.arange(h).reshape(1, 1, h, 1, 1, 1)
    n = np.arange(I).reshape(1, 1, 1, I, 1, 1) * (a_src * b_src)
    r = np.arange(a_conv).reshape(1, 1, 1, 1, a_conv, 1) * (s * b_src)
    col = np.arange(b_conv).reshape(1, 1, 1, 1, 1, b_conv) * s
    idx = ((c + n) + (i + r)) + (j + col)
    return idx.reshape(d * h * h, I * a_conv * b_conv).astype(np.intp, copy=False)


def pool_indices(d: int, I: int, a_conv: int, b_conv: int, P: int) -> np.ndarray:
    """idx_pool (P P, d I a' b'): row u P + v holds the flat position in A (d, I, a_conv,
    b_conv) of offset (u, v) of every pooling window, windows in (d, I, a', b') order."""
    a_next, b_next = a_conv // P, b_conv // P
    base = np.arange(d * I).reshape(d * I, 1, 1) * (a_conv * b_conv)
    rows = np.arange(a_next).reshape(1, a_next, 1) * (P * b_conv)
    cols = np.arange(b_next).reshape(1, 1, b_next) * P
    corner = (base + rows + cols).reshape(1, -1)
    offsets = (np.arange(P).reshape(P, 1) * b_conv + np.arange(P).reshape(1, P)).reshape(-1, 1)
    return (offsets + corner).astype(np.intp, copy=False)


# -- index implementation ------------------------------------------------------------------


def pad_index(Z: np.ndarray, p: int) -> np.ndarray:
    """pad(Z): a new zero-filled (d, I, a_pad, b_pad) array with Z assigned to its interior."""
    d, I, a, b = Z.shape
    Zpad = np.zeros((d, I, a + 2 * p, b + 2 * p), dtype=Z.dtype)
    Zpad[:, :, p:p + a, p:p + b] = Z
    return Zpad


def phi_index(Zsrc: np.ndarray, idx_phi: np.ndarray, phi: np.ndarray) -> None:
    """phi = Zsrc.flat[idx_phi], a gather (Zsrc C-contiguous; mode "clip" because
    np.take buffers its output in the default mode)."""
    np.take(Zsrc.reshape(-1), idx_phi, out=phi, mode="clip")


def pool_index(A: np.ndarray, idx_pool: np.ndarray, P: int) -> tuple[np.ndarray, np.ndarray]:
    """Max-pooling by a gather of the windows then argmax (the first maximum wins).

    Returns Z^{m+1} (d, I, a', b') and pos, the flat position in A of every maximum."""
    d, I, a_conv, b_conv = A.shape
    out_shape = (d, I, a_conv // P, b_conv // P)
    windows = np.take(A.reshape(-1), idx_pool)  # (P P, d I a' b')
    k = np.argmax(windows, axis=0)[np.newaxis]
    Znext = np.take_along_axis(windows, k, axis=0).reshape(out_shape)
    pos = np.take_along_axis(idx_pool, k, axis=0).reshape(out_shape)
    return Znext, pos


def pool_grad_index(dZnext: np.ndarray, pos: np.ndarray, A_shape: tuple) -> np.ndarray:
    """dA: a new zero array with dZ^{m+1} scattered to the positions of the maxima."""
    dA = np.zeros(A_shape, dtype=dZnext.dtype)
    dA.reshape(-1)[pos.reshape(-1)] = dZnext.reshape(-1)
    return dA


def phi_grad_index(dphi: np.ndarray, idx_phi: np.ndarray, src_shape: tuple) -> np.ndarray:
    """P_phi^T vec(dphi) (col2im): a scatter-add of dphi through idx_phi into a new zero
    array of the source's shape."""
    dZsrc = np.zeros(src_shape, dtype=dphi.dtype)
    np.add.at(dZsrc.reshape(-1), idx_phi, dphi)
    return dZsrc


def pad_grad_index(dZpad: np.ndarray, p: int) -> np.ndarray:
    """Remove the padding: a new contiguous copy of the interior of dZpad."""
    _, _, a_pad, b_pad = dZpad.shape
    return dZpad[:, :, p:a_pad - p, p:b_pad - p].copy()


# -- strided implementation ------------------------------------------------------------------
# Arrays first, then sizes: Workers.run splits the arrays by channel (their first axis).


def pad_strided(Z: np.ndarray, Zpad: np.ndarray, p: int) -> None:
    """Copy Z into the interior of the preallocated Zpad (its border stays zero)."""
    _, _, a, b = Z.shape
    np.copyto(Zpad[:, :, p:p + a, p:p + b], Z)


def phi_strided(Zsrc: np.ndarray, phi: np.ndarray, h: int, s: int) -> None:
    """phi by h h copies of shifted, strided slices of Zsrc into a (d, h, h, I, a_conv,
    b_conv) view of phi (faster here than one copy from an as_strided window view)."""
    d, I = Zsrc.shape[:2]
    a_conv = (Zsrc.shape[2] - h) // s + 1
    b_conv = (Zsrc.shape[3] - h) // s + 1
    phi6 = phi.reshape(d, h, h, I, a_conv, b_conv)
    for i in range(h):
        for j in range(h):
            np.copyto(phi6[:, i, j],
                      Zsrc[:, :, i:i + s * (a_conv - 1) + 1:s, j:j + s * (b_conv - 1) + 1:s])


def phi_grad_strided(dphi: np.ndarray, dZsrc: np.ndarray, spread: np.ndarray, h: int,
                     s: int) -> None:
    """col2im without index arrays, for each kernel offset (i, j): copy the rows (c, i, j) of
    dphi to the positions they would have for offset (0, 0) in ``spread`` (dZsrc's shape,
    zero everywhere else: allocate it with np.zeros); the positions of offset (i, j) are those
    shifted by i b_pad + j in the flat array, so spread is then added to dZsrc as one long
    contiguous 1-D add (numpy adds short strided rows several times slower)."""
    d, I, a_pad, b_pad = dZsrc.shape
    a_conv, b_conv = (a_pad - h) // s + 1, (b_pad - h) // s + 1
    dphi6 = dphi.reshape(d, h, h, I, a_conv, b_conv)
    positions = spread[:, :, :s * (a_conv - 1) + 1:s, :s * (b_conv - 1) + 1:s]
    dst, src = dZsrc.reshape(-1), spread.reshape(-1)
    for i in range(h):
        for j in range(h):
            np.copyto(positions, dphi6[:, i, j])
            shift = i * b_pad + j
            if shift == 0:
                np.copyto(dst, src)
            else:  # what falls past the end of dst is zero in src
                np.add(dst[shift:], src[:src.size - shift], out=dst[shift:])


def pool_strided(A: np.ndarray, Znext: np.ndarray, pos: np.ndarray, gt: np.ndarray,
                 pos_small: np.ndarray, step: np.ndarray, P: int) -> None:
    """Max-pooling as a running maximum over the P P strided offsets of the windows; a strict
    '>' keeps the first maximum (as torch). pos gets the offset k = u P + v inside the window.

    Branch-free: pos_small (an unsigned type holding P P - 1) += gt (k - pos_small), then one
    cast copy into pos; a masked copy with a random mask is several times slower."""
    a_next, b_next = Znext.shape[2:]
    gt_int = gt.view(np.uint8)
    np.copyto(Znext, A[:, :, 0:P * a_next:P, 0:P * b_next:P])
    pos_small.fill(0)
    for k in range(1, P * P):
        u, v = divmod(k, P)
        offset = A[:, :, u:u + P * a_next:P, v:v + P * b_next:P]
        np.greater(offset, Znext, out=gt)
        np.maximum(Znext, offset, out=Znext)
        np.subtract(k, pos_small, out=step)
        np.multiply(step, gt_int, out=step)
        np.add(pos_small, step, out=pos_small)
    np.copyto(pos, pos_small)


def pool_grad_strided(dZnext: np.ndarray, pos: np.ndarray, dA: np.ndarray, mask: np.ndarray,
                      P: int) -> None:
    """dA at offset k = u P + v of every window = dZ^{m+1} where pos == k, else 0. The rows
    and columns that the pooling crops are never written: dA must start zeroed."""
    a_next, b_next = dZnext.shape[2:]
    for k in range(P * P):
        u, v = divmod(k, P)
        np.equal(pos, k, out=mask)
        np.multiply(dZnext, mask, out=dA[:, :, u:u + P * a_next:P, v:v + P * b_next:P])


def pad_grad_strided(dZpad: np.ndarray, dZ: np.ndarray, p: int) -> None:
    """Remove the padding: copy the interior of dZpad into the preallocated dZ."""
    _, _, a, b = dZ.shape
    np.copyto(dZ, dZpad[:, :, p:p + a, p:p + b])


# -- shared kernels -------------------------------------------------------------------------


def add_bias(S: np.ndarray, b: np.ndarray) -> None:
    """S += b 1^T, in place."""
    np.add(S, b[:, np.newaxis], out=S)


def relu(S: np.ndarray) -> None:
    """S = max(S, 0), in place."""
    np.maximum(S, 0, out=S)


def relu_grad(dZ: np.ndarray, A: np.ndarray) -> None:
    """dS = dZ * (S > 0), in place into dZ; A = relu(S) > 0 exactly where S > 0."""
    np.multiply(dZ, A > 0, out=dZ)


def bias_grad(dS: np.ndarray, db: np.ndarray) -> None:
    """db = row sums of dS."""
    np.sum(dS, axis=1, out=db)


def flatten(Z: np.ndarray, X: np.ndarray) -> None:
    """(d, I, a, b) -> (d a b, I), rows (channel, row, column): torch's flatten of NCHW."""
    d, I, a, b = Z.shape
    np.copyto(X.reshape(d, a, b, I), Z.transpose(0, 2, 3, 1))


def flatten_grad(dX: np.ndarray, dZ: np.ndarray) -> None:
    """The inverse layout change: (d a b, I) -> (d, I, a, b)."""
    d, I, a, b = dZ.shape
    np.copyto(dZ, dX.reshape(d, a, b, I).transpose(0, 3, 1, 2))


def mse_loss(Z: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """sum over the batch of ||z - y||^2, as a 0-d array of Z's dtype."""
    diff = Z - Y
    return np.asarray(np.vdot(diff, diff))


def mse_loss_grad(Z: np.ndarray, Y: np.ndarray, dZ: np.ndarray) -> None:
    """dZ = 2 (Z - Y)."""
    np.subtract(Z, Y, out=dZ)
    np.multiply(dZ, 2, out=dZ)


def softmax_ce_loss(Z: np.ndarray, Y: np.ndarray, P: np.ndarray) -> np.ndarray:
    """sum over the batch of -log softmax(z)_y (Y one-hot); writes softmax(Z) into P.

    Returns the loss as a 0-d array of Z's dtype."""
    z_max = Z.max(axis=0)
    np.subtract(Z, z_max, out=P)
    np.exp(P, out=P)
    total = P.sum(axis=0)
    np.divide(P, total, out=P)
    log_sum_exp = np.log(total) + z_max
    return np.asarray(log_sum_exp.sum() - np.vdot(Z, Y), dtype=Z.dtype)


def softmax_ce_loss_grad(P: np.ndarray, Y: np.ndarray, dZ: np.ndarray) -> None:
    """dZ = softmax(Z) - Y."""
    np.subtract(P, Y, out=dZ)


def sgd_momentum(W: np.ndarray, dW: np.ndarray, v: np.ndarray, *, lr: float,
                 momentum: float, C: float, I: int) -> None:
    """simpleNN's SG with momentum, in place: Grad = dW/I + W/C; v = momentum v - lr Grad;
    W = W + v."""
    v *= momentum
    v -= (lr / I) * dW
    v -= (lr / C) * W
    W += v


# -- threads ----------------------------------------------------------------------------------

# When a step uses threads (costmodel.machine.backends.numpy.threaded_step) and which ops they share
# (costmodel.machine.backends.numpy.SPLIT_BYTES, SPLIT_FLOPS) are rules of the cost model too, so they live there.
# Handing work to a sleeping thread costs 20-60 us (on a 2-core VM), more than it saves for a
# small op.

_POOLS: dict[int, ThreadPoolExecutor] = {}
_BLAS: list = []  # threadpoolctl's controller of the BLAS libraries, made once


def blas_threads() -> int:
    """The number of threads the BLAS that numpy uses runs with now."""
    from threadpoolctl import threadpool_info

    counts = [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]
    return max(counts, default=1)


class Workers:
    """Runs the ops of a step in ``threads`` threads at once by giving each a share of the
    work: NumPy releases the GIL inside copies, ufunc loops and BLAS calls.

    With more than one thread, BLAS must run single-threaded meanwhile (``single_blas()``
    around the step): the BLAS's own threads, busy-waiting for ~0.1 s after each product,
    would otherwise hold the cores the other ops need. With one thread everything runs in
    the calling thread and BLAS keeps its own threads.
    """

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        if self.threads > 1 and self.threads not in _POOLS:
            _POOLS[self.threads] = ThreadPoolExecutor(self.threads - 1,
                                                      thread_name_prefix="calib-kernels")
        self.pool = _POOLS.get(self.threads)

    def single_blas(self):
        """A context in which BLAS runs single-threaded (nothing to do with one thread)."""
        if self.threads == 1:
            return contextlib.nullcontext()
        if not _BLAS:
            from threadpoolctl import ThreadpoolController

            _BLAS.append(ThreadpoolController().select(user_api="blas"))
        return _BLAS[0].limit(limits=1)

    def _split(self, parts: int, part) -> None:
        futures = [self.pool.submit(part, k) for k in range(1, parts)]
        part(0)
        for future in futures:
            future.result()

    def run(self, kernel, d: int, arrays: tuple, *sizes) -> None:
        """kernel(*arrays, *sizes) on up to ``threads`` ranges of the d channels: every
        array's first axis holds d channels of equal size (rows c h h ... of phi)."""
        parts = min(self.threads, d)
        if parts < 2 or sum(a.nbytes for a in arrays) < rules.SPLIT_BYTES:
            kernel(*arrays, *sizes)
            return
        bounds = [d * k // parts for k in range(parts + 1)]

        def part(k: int) -> None:
            lo, hi = bounds[k], bounds[k + 1]
            kernel(*(a[lo * (len(a) // d):hi * (len(a) // d)] for a in arrays), *sizes)

        self._split(parts, part)

    def matmul(self, A: np.ndarray, B: np.ndarray, out: np.ndarray) -> None:
        """out = A B (BLAS gemm; transposed operands are views, not copies). The threads
        share the rows or the columns of out, whichever are more, or, for a long sum
        (dW = dS phi^T sums over N = I a_conv b_conv), the range summed over."""
        (m, n), k = out.shape, A.shape[1]
        axis = 2 if k > 4 * max(m, n) else 0 if m >= n else 1
        size = (m, n, k)[axis]
        parts = min(self.threads, size // 64)
        if parts < 2 or 2 * m * n * k < rules.SPLIT_FLOPS:
            np.matmul(A, B, out=out)
            return
        bounds = [size * p // parts // 16 * 16 for p in range(parts)] + [size]
        partial = np.empty((parts - 1, m, n), dtype=out.dtype) if axis == 2 else None

        def part(p: int) -> None:
            lo, hi = bounds[p], bounds[p + 1]
            if axis == 0:
                np.matmul(A[lo:hi], B, out=out[lo:hi])
            elif axis == 1:
                np.matmul(A, B[:, lo:hi], out=out[:, lo:hi])
            else:
                np.matmul(A[:, lo:hi], B[lo:hi], out=out if p == 0 else partial[p - 1])

        self._split(parts, part)
        if partial is not None:
            np.add(out, partial.sum(axis=0), out=out)
