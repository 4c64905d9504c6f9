"""The data-movement kernels of the reference CNN's conv layers (docs/ops.md): pad, phi
(im2col), max and average pooling and their gradients, in two implementations.

- ``index`` (simpleNN's way): index arrays (``intp``) built once per layer and batch size;
  phi is a gather through ``idx_phi``, pooling a gather through ``idx_pool`` then
  argmax/max, phi_grad a scatter-add (``np.add.at``) and pool_grad a scatter through ``pos``;
  pad, pool, pool_grad, phi_grad and pad_grad return new arrays.
- ``strided``: no index arrays and no ``np.add.at``; shifted/strided slices copied into, or
  summed from, preallocated buffers that the caller passes in.

Names follow the course: Z (layer input), Zpad = pad(Z), phi = phi(pad(Z)) of shape (K, N) with
K = h h d and N = I a_conv b_conv, P the pooling width and t its stride."""

from __future__ import annotations

import numpy as np

from costmodel.model.sizes import window_count


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
    np.copyto(pos_small, 0)
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


def _grad_offsets(dA: np.ndarray, dZnext: np.ndarray, P: int, t: int,
                  zero_all: bool) -> list[tuple[int, int, int, int, int]]:
    """The window offsets k = u P + v of a pooling's backward as (k, u, v, ra, cb): the offset
    lies in the first ra x cb windows (offsets in none left out). First zeroes dA where the
    offsets will not write: all of it when `zero_all` (overlapping windows add up) or when the
    stride t skips elements, else the rows and columns the pooling crops."""
    a_conv, b_conv = dA.shape[2:]
    a_next, b_next = dZnext.shape[2:]
    if zero_all or t > P:
        np.copyto(dA, 0)
    else:  # t == P: zero what the windows do not cover
        np.copyto(dA[:, :, min(a_conv, a_next * P):, :], 0)
        np.copyto(dA[:, :, :, min(b_conv, b_next * P):], 0)
    offsets = []
    for k in range(P * P):
        u, v = divmod(k, P)
        ra, cb = window_count(a_conv, u, t, a_next), window_count(b_conv, v, t, b_next)
        if ra and cb:
            offsets.append((k, u, v, ra, cb))
    return offsets


def pool_grad_strided(dZnext: np.ndarray, pos: np.ndarray, dA: np.ndarray, mask: np.ndarray,
                      spread: np.ndarray | None, P: int, t: int) -> None:
    """dA at offset k = u P + v of every window = dZ^{m+1} where pos == k. Without overlap
    (t >= P) every element of A is in at most one window and is written once; the elements no
    window covers (the rows and columns the pooling crops, the gaps of a stride above P) are
    zeroed here, as the ops after pool_grad may write dA in place (batch norm's backward does).
    With overlap (t < P, ``spread`` a buffer of dZ^{m+1}'s shape) dA is zeroed and every
    offset's share is added."""
    for k, u, v, ra, cb in _grad_offsets(dA, dZnext, P, t, zero_all=spread is not None):
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
    np.multiply(dZnext, 1.0 / (P * P) if inverse_count is None else inverse_count, out=share)
    overlap = t < P
    for _, u, v, ra, cb in _grad_offsets(dA, dZnext, P, t, zero_all=overlap):
        target = _offset(dA, u, v, t, ra, cb)
        if overlap:
            np.add(target, share[:, :, :ra, :cb], out=target)
        else:
            np.copyto(target, share[:, :, :ra, :cb])


def pad_grad_strided(dZpad: np.ndarray, dZ: np.ndarray, top: int, left: int) -> None:
    """Remove the padding: copy the interior of dZpad into the preallocated dZ."""
    _, _, a, b = dZ.shape
    np.copyto(dZ, dZpad[:, :, top:top + a, left:left + b])
