"""The op kernels of the reference CNN, in simpleNN's layout (docs/ops.md), other than the
data-movement ops of a conv layer (pad, phi, pooling: calib/windows.py, in two implementations,
``index`` and ``strided``) and the threads (calib/workers.py).

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

import numpy as np


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
