"""The op kernels of the reference CNN, in simpleNN's layout (docs/ops.md).

Two implementations of the data-movement ops:

- ``index`` (simpleNN's way): index arrays (``intp``) built once per layer and batch size;
  phi is a gather through ``idx_phi``, pooling a gather through ``idx_pool`` then
  argmax/max, phi_grad a scatter-add (``np.add.at``) and pool_grad a scatter through ``pos``;
  pad, pool, pool_grad, phi_grad and pad_grad return new arrays.
- ``strided``: no index arrays and no ``np.add.at``; shifted/strided slices copied into, or
  summed from, preallocated buffers that the caller passes in.

The bias, activation, loss, flatten and update kernels are shared; so are the matrix products,
through ``Workers.matmul`` (a grouped convolution's product per group: ``grouped_matmul``).
Batch normalization, dropout, global average pooling and the residual addition have an
``index`` form that computes with NumPy expressions into new arrays and a ``strided`` form that
writes into preallocated buffers. ``Workers`` shares an op among threads (the strided
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


def pool_windows(a_conv: int, P: int, t: int, a_next: int) -> np.ndarray:
    """(P, a') the row (or column) of offset u of every pooling window along one dimension,
    windows starting at i t; an offset past the border (a window of ceil mode hanging over it)
    is replaced by the window's first row, a real element of the same window."""
    start = np.arange(a_next) * t
    rows = start[np.newaxis, :] + np.arange(P)[:, np.newaxis]
    return np.where(rows < a_conv, rows, start[np.newaxis, :])


def pool_valid(a_conv: int, P: int, t: int, a_next: int) -> np.ndarray:
    """(P, a') whether offset u of window i lies inside the a_conv rows (or columns)."""
    rows = np.arange(a_next)[np.newaxis, :] * t + np.arange(P)[:, np.newaxis]
    return rows < a_conv


def pool_indices(d: int, I: int, a_conv: int, b_conv: int, P: int, t: int | None = None,
                 a_next: int | None = None, b_next: int | None = None) -> np.ndarray:
    """idx_pool (P P, d I a' b'): row u P + v holds the flat position in A (d, I, a_conv,
    b_conv) of offset (u, v) of every pooling window (window stride t, default P), windows in
    (d, I, a', b') order; with ceil mode an offset past the border holds a real element of the
    same window (pool_windows)."""
    t = P if t is None else t
    a_next = (a_conv - P) // t + 1 if a_next is None else a_next
    b_next = (b_conv - P) // t + 1 if b_next is None else b_next
    rows = pool_windows(a_conv, P, t, a_next)  # (P, a')
    cols = pool_windows(b_conv, P, t, b_next)  # (P, b')
    base = np.arange(d * I).reshape(1, 1, d * I, 1, 1) * (a_conv * b_conv)
    idx = base + rows.reshape(P, 1, 1, a_next, 1) * b_conv + cols.reshape(1, P, 1, 1, b_next)
    return idx.reshape(P * P, d * I * a_next * b_next).astype(np.intp, copy=False)


def pool_weight(a_conv: int, b_conv: int, P: int, t: int, a_next: int, b_next: int,
                dtype) -> np.ndarray:
    """(P P, a' b') the weight of offset (u, v) of window (i, j) in average pooling: 1 over the
    number of real elements of the window where the offset is one of them, else 0."""
    rows, cols = pool_valid(a_conv, P, t, a_next), pool_valid(b_conv, P, t, b_next)
    valid = rows[:, np.newaxis, :, np.newaxis] & cols[np.newaxis, :, np.newaxis, :]
    count = rows.sum(axis=0)[:, np.newaxis] * cols.sum(axis=0)[np.newaxis, :]
    return (valid / count).reshape(P * P, a_next * b_next).astype(dtype)


def pool_inverse_count(a_conv: int, b_conv: int, P: int, t: int, a_next: int, b_next: int,
                       dtype) -> np.ndarray:
    """(a', b') 1 over the number of real elements of every window (ceil mode's last windows
    cover fewer)."""
    rows, cols = pool_valid(a_conv, P, t, a_next), pool_valid(b_conv, P, t, b_next)
    return (1.0 / (rows.sum(axis=0)[:, np.newaxis] * cols.sum(axis=0)[np.newaxis, :])).astype(dtype)


def window_count(size: int, start: int, t: int, n: int) -> int:
    """How many of the n windows (starting at 0, t, 2t, ...) have their offset `start` inside
    `size` elements."""
    return max(0, min(n, (size - start - 1) // t + 1))


# -- index implementation ------------------------------------------------------------------


def pad_index(Z: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """pad(Z): a new zero-filled (d, I, a_pad, b_pad) array with Z assigned to its interior
    (top/bottom rows and left/right columns of zeros)."""
    d, I, a, b = Z.shape
    Zpad = np.zeros((d, I, a + top + bottom, b + left + right), dtype=Z.dtype)
    Zpad[:, :, top:top + a, left:left + b] = Z
    return Zpad


def phi_index(Zsrc: np.ndarray, idx_phi: np.ndarray, phi: np.ndarray) -> None:
    """phi = Zsrc.flat[idx_phi], a gather (Zsrc C-contiguous; mode "clip" because
    np.take buffers its output in the default mode)."""
    np.take(Zsrc.reshape(-1), idx_phi, out=phi, mode="clip")


def pool_index(A: np.ndarray, idx_pool: np.ndarray, out_shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Max-pooling by a gather of the windows then argmax (the first maximum wins).

    Returns Z^{m+1} (d, I, a', b') = out_shape and pos, the flat position in A of every
    maximum."""
    windows = np.take(A.reshape(-1), idx_pool)  # (P P, d I a' b')
    k = np.argmax(windows, axis=0)[np.newaxis]
    Znext = np.take_along_axis(windows, k, axis=0).reshape(out_shape)
    pos = np.take_along_axis(idx_pool, k, axis=0).reshape(out_shape)
    return Znext, pos


def pool_grad_index(dZnext: np.ndarray, pos: np.ndarray, A_shape: tuple,
                    overlap: bool = False) -> np.ndarray:
    """dA: a new zero array with dZ^{m+1} scattered to the positions of the maxima; windows
    that overlap (stride < width) may share a maximum, whose gradients then add (np.add.at)."""
    dA = np.zeros(A_shape, dtype=dZnext.dtype)
    if overlap:
        np.add.at(dA.reshape(-1), pos.reshape(-1), dZnext.reshape(-1))
    else:
        dA.reshape(-1)[pos.reshape(-1)] = dZnext.reshape(-1)
    return dA


def avg_pool_index(A: np.ndarray, idx_pool: np.ndarray, weight: np.ndarray,
                   out_shape: tuple) -> np.ndarray:
    """Average pooling by a gather of the windows, each offset weighted by pool_weight (1 over
    the window's real elements, 0 past the border), summed: a new Z^{m+1} (d, I, a', b')."""
    d, I, a_next, b_next = out_shape
    PP = idx_pool.shape[0]
    windows = np.take(A.reshape(-1), idx_pool).reshape(PP, d * I, a_next * b_next)
    return (windows * weight[:, np.newaxis, :]).sum(axis=0).reshape(out_shape)


def avg_pool_grad_index(dZnext: np.ndarray, idx_pool: np.ndarray, weight: np.ndarray,
                        A_shape: tuple) -> np.ndarray:
    """dA: a new zero array into which every window's dZ^{m+1} times its weights is
    scatter-added (np.add.at: overlapping windows share elements)."""
    d, I, a_next, b_next = dZnext.shape
    spread = weight[:, np.newaxis, :] * dZnext.reshape(1, d * I, a_next * b_next)
    dA = np.zeros(A_shape, dtype=dZnext.dtype)
    np.add.at(dA.reshape(-1), idx_pool.reshape(-1), spread.reshape(-1))
    return dA


def phi_grad_index(dphi: np.ndarray, idx_phi: np.ndarray, src_shape: tuple) -> np.ndarray:
    """P_phi^T vec(dphi) (col2im): a scatter-add of dphi through idx_phi into a new zero
    array of the source's shape."""
    dZsrc = np.zeros(src_shape, dtype=dphi.dtype)
    np.add.at(dZsrc.reshape(-1), idx_phi, dphi)
    return dZsrc


def pad_grad_index(dZpad: np.ndarray, top: int, left: int, a: int, b: int) -> np.ndarray:
    """Remove the padding: a new contiguous copy of the a x b interior of dZpad."""
    return dZpad[:, :, top:top + a, left:left + b].copy()


# -- strided implementation ------------------------------------------------------------------
# Arrays first, then sizes: Workers.run splits the arrays by channel (their first axis).


def pad_strided(Z: np.ndarray, Zpad: np.ndarray, top: int, left: int) -> None:
    """Copy Z into the interior of the preallocated Zpad (its border stays zero)."""
    _, _, a, b = Z.shape
    np.copyto(Zpad[:, :, top:top + a, left:left + b], Z)


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


def _offset(X: np.ndarray, u: int, v: int, t: int, rows: int, cols: int) -> np.ndarray:
    """The (.., rows, cols) strided view of offset (u, v) of the first rows x cols windows."""
    return X[:, :, u:u + t * (rows - 1) + 1:t, v:v + t * (cols - 1) + 1:t]


def pool_strided(A: np.ndarray, Znext: np.ndarray, pos: np.ndarray, gt: np.ndarray,
                 pos_small: np.ndarray, step: np.ndarray, P: int, t: int) -> None:
    """Max-pooling (window P, stride t) as a running maximum over the P P strided offsets of
    the windows; a strict '>' keeps the first maximum (as torch). pos gets the offset
    k = u P + v inside the window. Offset (0, 0) of every window is a real element; a later
    offset updates only the windows it lies in (ceil mode's last windows hang over the border).

    Branch-free: pos_small (an unsigned type holding P P - 1) += gt (k - pos_small), then one
    cast copy into pos; a masked copy with a random mask is several times slower."""
    a_conv, b_conv = A.shape[2:]
    a_next, b_next = Znext.shape[2:]
    gt_int = gt.view(np.uint8)
    np.copyto(Znext, _offset(A, 0, 0, t, a_next, b_next))
    pos_small.fill(0)
    for k in range(1, P * P):
        u, v = divmod(k, P)
        ra, cb = window_count(a_conv, u, t, a_next), window_count(b_conv, v, t, b_next)
        if ra == 0 or cb == 0:
            continue
        Z, g, gi, st, ps = (X[:, :, :ra, :cb] for X in (Znext, gt, gt_int, step, pos_small))
        offset = _offset(A, u, v, t, ra, cb)
        np.greater(offset, Z, out=g)
        np.maximum(Z, offset, out=Z)
        np.subtract(k, ps, out=st)
        np.multiply(st, gi, out=st)
        np.add(ps, st, out=ps)
    np.copyto(pos, pos_small)


def pool_grad_strided(dZnext: np.ndarray, pos: np.ndarray, dA: np.ndarray, mask: np.ndarray,
                      spread: np.ndarray | None, P: int, t: int) -> None:
    """dA at offset k = u P + v of every window = dZ^{m+1} where pos == k. Without overlap
    (t >= P) every element of A is in at most one window and is written once; the elements no
    window covers (the rows and columns the pooling crops, the gaps of a stride above P) are
    zeroed here, as the ops after pool_grad may write dA in place (batch norm's backward does).
    With overlap (t < P, ``spread`` a buffer of dZ^{m+1}'s shape) dA is zeroed and every
    offset's share is added."""
    a_conv, b_conv = dA.shape[2:]
    a_next, b_next = dZnext.shape[2:]
    if spread is not None or t > P:
        dA.fill(0)
    else:  # t == P: zero what the windows do not cover
        dA[:, :, min(a_conv, a_next * P):, :] = 0
        dA[:, :, :, min(b_conv, b_next * P):] = 0
    for k in range(P * P):
        u, v = divmod(k, P)
        ra, cb = window_count(a_conv, u, t, a_next), window_count(b_conv, v, t, b_next)
        if ra == 0 or cb == 0:
            continue
        dZ, p, mk = (X[:, :, :ra, :cb] for X in (dZnext, pos, mask))
        target = _offset(dA, u, v, t, ra, cb)
        np.equal(p, k, out=mk)
        if spread is None:
            np.multiply(dZ, mk, out=target)
        else:
            share = spread[:, :, :ra, :cb]
            np.multiply(dZ, mk, out=share)
            np.add(target, share, out=target)


def avg_pool_strided(A: np.ndarray, Znext: np.ndarray, P: int, t: int,
                     inverse_count: np.ndarray | None) -> None:
    """Average pooling (window P, stride t): the sum of the P P strided offsets of the windows
    (each offset only in the windows it lies in), times 1/(P P), or times ``inverse_count``
    (a', b') when ceil mode's last windows cover fewer elements."""
    a_conv, b_conv = A.shape[2:]
    a_next, b_next = Znext.shape[2:]
    np.copyto(Znext, _offset(A, 0, 0, t, a_next, b_next))
    for k in range(1, P * P):
        u, v = divmod(k, P)
        ra, cb = window_count(a_conv, u, t, a_next), window_count(b_conv, v, t, b_next)
        if ra and cb:
            Z = Znext[:, :, :ra, :cb]
            np.add(Z, _offset(A, u, v, t, ra, cb), out=Z)
    np.multiply(Znext, 1.0 / (P * P) if inverse_count is None else inverse_count, out=Znext)


def avg_pool_grad_strided(dZnext: np.ndarray, dA: np.ndarray, share: np.ndarray, P: int,
                          t: int, inverse_count: np.ndarray | None) -> None:
    """dA: every element gets the dZ^{m+1} of each window it lies in over the window's count
    (``share``, a buffer of dZ^{m+1}'s shape); copied when windows do not overlap, added when
    they do. The elements no window covers are zeroed (as pool_grad_strided does)."""
    a_conv, b_conv = dA.shape[2:]
    a_next, b_next = dZnext.shape[2:]
    np.multiply(dZnext, 1.0 / (P * P) if inverse_count is None else inverse_count, out=share)
    overlap = t < P
    if overlap or t > P:
        dA.fill(0)
    else:
        dA[:, :, min(a_conv, a_next * P):, :] = 0
        dA[:, :, :, min(b_conv, b_next * P):] = 0
    for k in range(P * P):
        u, v = divmod(k, P)
        ra, cb = window_count(a_conv, u, t, a_next), window_count(b_conv, v, t, b_next)
        if ra == 0 or cb == 0:
            continue
        target = _offset(dA, u, v, t, ra, cb)
        if overlap:
            np.add(target, share[:, :, :ra, :cb], out=target)
        else:
            np.copyto(target, share[:, :, :ra, :cb])


def pad_grad_strided(dZpad: np.ndarray, dZ: np.ndarray, top: int, left: int) -> None:
    """Remove the padding: copy the interior of dZpad into the preallocated dZ."""
    _, _, a, b = dZ.shape
    np.copyto(dZ, dZpad[:, :, top:top + a, left:left + b])


# -- shared kernels -------------------------------------------------------------------------


def add_bias(S: np.ndarray, b: np.ndarray) -> None:
    """S += b 1^T, in place."""
    np.add(S, b[:, np.newaxis], out=S)


def relu(S: np.ndarray) -> None:
    """S = max(S, 0), in place."""
    np.maximum(S, 0, out=S)


def relu_grad(dZ: np.ndarray, A: np.ndarray, dS: np.ndarray | None = None) -> None:
    """dS = dZ * (S > 0), in place into dZ (or into dS); A = relu(S) > 0 exactly where S > 0."""
    np.multiply(dZ, A > 0, out=dZ if dS is None else dS)


def tanh(S: np.ndarray) -> None:
    """S = tanh(S), in place."""
    np.tanh(S, out=S)


def sigmoid(S: np.ndarray) -> None:
    """S = 1 / (1 + exp(-S)), in place (scipy's expit: no overflow for large -S)."""
    from scipy.special import expit

    expit(S, out=S)


def tanh_grad(dZ: np.ndarray, A: np.ndarray, dS: np.ndarray, scratch: np.ndarray | None = None) -> None:
    """dS = dZ (1 - A^2), A = tanh(S); dS may be dZ (in place). ``scratch`` (A's shape): a
    buffer for 1 - A^2 (None: a temporary)."""
    scratch = np.multiply(A, A, out=scratch)
    np.subtract(1, scratch, out=scratch)
    np.multiply(dZ, scratch, out=dS)


def sigmoid_grad(dZ: np.ndarray, A: np.ndarray, dS: np.ndarray, scratch: np.ndarray | None = None) -> None:
    """dS = dZ A (1 - A), A = sigmoid(S); dS may be dZ (in place)."""
    scratch = np.subtract(1, A, out=scratch)
    np.multiply(scratch, A, out=scratch)
    np.multiply(dZ, scratch, out=dS)


ACTIVATIONS = {"relu": relu, "tanh": tanh, "sigmoid": sigmoid}


def grouped_matmul(A: np.ndarray, B: np.ndarray, out: np.ndarray) -> None:
    """out[k] = A[k] B[k] for every group k: one BLAS product per group (np.matmul on stacks).
    A grouped convolution: W^m (d', h h d/g) as (g, d'/g, h h d/g) times phi (h h d, N) as
    (g, h h d/g, N) gives S (d', N) as (g, d'/g, N); the rows of phi are ordered by channel,
    so group k's rows are one contiguous block."""
    np.matmul(A, B, out=out)


# -- batch normalization (training mode: statistics of the mini-batch; PyTorch's eps and momentum)


def batch_norm_index(S: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                     running_mean: np.ndarray, running_var: np.ndarray, eps: float,
                     momentum: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch normalization of every row of S (d', N) over its N columns (a conv layer's
    I a_conv b_conv positions, a full layer's I instances): mu, sigma^2 (biased) of the row,
    Xhat = (S - mu) / sqrt(sigma^2 + eps), Y = gamma Xhat + beta. The running averages move
    by `momentum` towards mu and the unbiased sigma^2 N/(N-1), in place (PyTorch's BatchNorm).

    Returns new arrays (Y, Xhat, inv_std), inv_std = 1/sqrt(sigma^2 + eps) (d',)."""
    N = S.shape[1]
    mu = S.mean(axis=1)
    centered = S - mu[:, np.newaxis]
    var = (centered * centered).mean(axis=1)
    inv_std = 1 / np.sqrt(var + eps)
    Xhat = centered * inv_std[:, np.newaxis]
    Y = Xhat * gamma[:, np.newaxis] + beta[:, np.newaxis]
    _update_running(running_mean, running_var, mu, var, N, momentum)
    return Y, Xhat, inv_std


def _update_running(running_mean, running_var, mu, var, N: int, momentum: float) -> None:
    running_mean *= 1 - momentum
    running_mean += momentum * mu
    running_var *= 1 - momentum
    running_var += (momentum * N / max(N - 1, 1)) * var


def batch_norm_strided(S: np.ndarray, Xhat: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                       mean: np.ndarray, inv_std: np.ndarray, running_mean: np.ndarray,
                       running_var: np.ndarray, eps: float, momentum: float) -> None:
    """batch_norm_index into preallocated buffers: Xhat (d', N), mean and inv_std (d',); Y
    replaces S in place (S serves as scratch for the squares on the way)."""
    N = S.shape[1]
    np.mean(S, axis=1, out=mean)
    np.subtract(S, mean[:, np.newaxis], out=Xhat)
    np.multiply(Xhat, Xhat, out=S)
    np.mean(S, axis=1, out=inv_std)  # the variance, for now
    _update_running(running_mean, running_var, mean, inv_std, N, momentum)
    np.add(inv_std, eps, out=inv_std)
    np.sqrt(inv_std, out=inv_std)
    np.divide(1, inv_std, out=inv_std)
    np.multiply(Xhat, inv_std[:, np.newaxis], out=Xhat)
    np.multiply(Xhat, gamma[:, np.newaxis], out=S)
    np.add(S, beta[:, np.newaxis], out=S)


def batch_norm_eval(S: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                    running_var: np.ndarray, eps: float) -> np.ndarray:
    """Batch normalization in evaluation mode (predict): a new gamma (S - running mean) /
    sqrt(running var + eps) + beta."""
    scale = gamma / np.sqrt(running_var + eps)
    return (S - running_mean[:, np.newaxis]) * scale[:, np.newaxis] + beta[:, np.newaxis]


def batch_norm_grad_index(dY: np.ndarray, Xhat: np.ndarray, gamma: np.ndarray,
                          inv_std: np.ndarray, dgamma: np.ndarray, dbeta: np.ndarray) -> np.ndarray:
    """The backward of batch normalization in training mode (Ioffe and Szegedy 2015):
    dbeta = dY 1, dgamma = (dY * Xhat) 1, and a new
    dS = gamma inv_std / N (N dY - dbeta 1^T - Xhat * dgamma 1^T)."""
    N = dY.shape[1]
    np.sum(dY, axis=1, out=dbeta)
    np.sum(dY * Xhat, axis=1, out=dgamma)
    scale = (gamma * inv_std / N)[:, np.newaxis]
    return scale * (N * dY - dbeta[:, np.newaxis] - Xhat * dgamma[:, np.newaxis])


def batch_norm_grad_strided(dY: np.ndarray, Xhat: np.ndarray, gamma: np.ndarray,
                            inv_std: np.ndarray, dgamma: np.ndarray, dbeta: np.ndarray,
                            dS: np.ndarray, scratch: np.ndarray) -> None:
    """batch_norm_grad_index into preallocated buffers; dS may be dY (in place); scratch
    (dY's shape) holds Xhat * dgamma."""
    N = dY.shape[1]
    np.sum(dY, axis=1, out=dbeta)
    np.einsum("ij,ij->i", dY, Xhat, out=dgamma)
    np.multiply(Xhat, dgamma[:, np.newaxis], out=scratch)
    np.multiply(dY, N, out=dS)
    np.subtract(dS, scratch, out=dS)
    np.subtract(dS, dbeta[:, np.newaxis], out=dS)
    np.multiply(dS, (gamma * inv_std / N)[:, np.newaxis], out=dS)


# -- inverted dropout


def dropout_index(Z: np.ndarray, rate: float, rng: np.random.Generator,
                  keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inverted dropout: keep each element with probability 1 - rate (uniforms of `rng` in Z's
    dtype, kept where >= rate; or the given bool ``keep`` mask) and scale the kept ones by
    1/(1 - rate). Returns new arrays (Z_out, keep)."""
    if keep is None:
        keep = rng.random(Z.shape, dtype=Z.dtype) >= rate
    return Z * keep * (1 / (1 - rate)), keep


def dropout_strided(Z: np.ndarray, Zout: np.ndarray, keep: np.ndarray, uniform: np.ndarray,
                    rate: float, rng: np.random.Generator, fixed: np.ndarray | None = None) -> None:
    """dropout_index into preallocated buffers (``uniform``: Z's shape and dtype, the draws;
    the same numbers as dropout_index from the same generator state)."""
    if fixed is None:
        rng.random(out=uniform, dtype=uniform.dtype)
        np.greater_equal(uniform, rate, out=keep)
    else:
        np.copyto(keep, fixed)
    np.multiply(Z, keep, out=Zout)
    np.multiply(Zout, 1 / (1 - rate), out=Zout)


def dropout_grad(dZ: np.ndarray, keep: np.ndarray, rate: float, dS: np.ndarray) -> None:
    """dS = dZ * keep / (1 - rate); dS may be dZ (in place)."""
    np.multiply(dZ, keep, out=dS)
    np.multiply(dS, 1 / (1 - rate), out=dS)


# -- global average pooling and the residual addition


def global_avg_pool_index(Z: np.ndarray) -> np.ndarray:
    """A new (d, I, 1, 1): the mean of every channel of every instance over its a b positions."""
    return Z.mean(axis=(2, 3), keepdims=True)


def global_avg_pool_strided(Z: np.ndarray, G: np.ndarray) -> None:
    """global_avg_pool_index into the preallocated G (d, I, 1, 1)."""
    np.sum(Z, axis=(2, 3), keepdims=True, out=G)
    np.multiply(G, 1.0 / (Z.shape[2] * Z.shape[3]), out=G)


def global_avg_pool_grad_index(dG: np.ndarray, a: int, b: int) -> np.ndarray:
    """A new dZ (d, I, a, b): every position gets its channel's dG / (a b)."""
    d, I = dG.shape[:2]
    return np.repeat(dG.reshape(d, I, 1) / (a * b), a * b, axis=2).reshape(d, I, a, b)


def global_avg_pool_grad_strided(dG: np.ndarray, dZ: np.ndarray) -> None:
    """global_avg_pool_grad_index into the preallocated dZ (d, I, a, b)."""
    d, I, a, b = dZ.shape
    np.multiply(dG.reshape(d, I, 1, 1), 1.0 / (a * b), out=dZ)


def residual_add_index(F: np.ndarray, X: np.ndarray) -> np.ndarray:
    """A new S = F(X) + shortcut(X)."""
    return F + X


def residual_add_strided(F: np.ndarray, X: np.ndarray, S: np.ndarray) -> None:
    np.add(F, X, out=S)


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


def softmax_ce_loss(Z: np.ndarray, Y: np.ndarray, softmax: np.ndarray) -> np.ndarray:
    """sum over the batch of -log softmax(z)_y (Y one-hot); writes softmax(Z) into `softmax`.

    Returns the loss as a 0-d array of Z's dtype."""
    z_max = Z.max(axis=0)
    np.subtract(Z, z_max, out=softmax)
    np.exp(softmax, out=softmax)
    total = softmax.sum(axis=0)
    np.divide(softmax, total, out=softmax)
    log_sum_exp = np.log(total) + z_max
    return np.asarray(log_sum_exp.sum() - np.vdot(Z, Y), dtype=Z.dtype)


def softmax_ce_loss_grad(softmax: np.ndarray, Y: np.ndarray, dZ: np.ndarray) -> None:
    """dZ = softmax(Z) - Y."""
    np.subtract(softmax, Y, out=dZ)


def sgd_momentum(W: np.ndarray, dW: np.ndarray, v: np.ndarray, *, lr: float,
                 momentum: float, C: float, I: int, buffer: np.ndarray | None = None) -> None:
    """simpleNN's SG with momentum, in place: Grad = dW/I + W/C; v = momentum v - lr Grad;
    W = W + v.

    The scaled terms (lr/I) dW and (lr/C) W are each written to a W-sized array and read back:
    without `buffer` (simpleNN's way, the index implementation) to a fresh temporary each, one
    alive at a time; with a preallocated `buffer` of W's shape and dtype (the strided
    implementation) to that buffer, twice. The cost model counts them
    (costmodel.model.costs.update)."""
    v *= momentum
    if buffer is None:
        v -= (lr / I) * dW
        v -= (lr / C) * W
    else:
        v -= np.multiply(dW, lr / I, out=buffer)
        v -= np.multiply(W, lr / C, out=buffer)
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
        array's first axis holds d channels of equal size (rows c h h ... of phi); an array
        may be None (an optional buffer), passed as None."""
        parts = min(self.threads, d)
        if parts < 2 or sum(a.nbytes for a in arrays if a is not None) < rules.SPLIT_BYTES:
            kernel(*arrays, *sizes)
            return
        bounds = [d * k // parts for k in range(parts + 1)]

        def part(k: int) -> None:
            lo, hi = bounds[k], bounds[k + 1]
            kernel(*(None if a is None else a[lo * (len(a) // d):hi * (len(a) // d)] for a in arrays),
                   *sizes)

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
