"""How much memory one step of the reference CNN needs, computed from the sizes before
anything is allocated, and a check against the memory the machine has available."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from costmodel.model.arch import Architecture
from costmodel.errors import CostModelError

INTP = np.dtype(np.intp).itemsize
GiB = 1024 ** 3


def _keep_grad(sizes) -> set[int]:
    """The layers that receive a residual addition's gradient together with another layer
    (F's last layer, the projection): their first in-place backward op writes a spare buffer."""
    out: set[int] = set()
    for sz in sizes:
        if sz.kind == "residual_add":
            f, short = sz.inputs
            out.add(f)
            if short > f:
                out.add(short)
    return out


def estimate_step_bytes(arch: Architecture, impl: str) -> int:
    """Peak bytes that ReferenceCNN(arch, impl) allocates for one step at arch.batch: the
    parameters, momentum and gradients, every buffer and index array, the data batch, and
    the largest set of temporaries alive at one time."""
    item, I, n = arch.itemsize, arch.batch, arch.n_classes
    sizes = arch.sizes()
    spare = _keep_grad(sizes)
    strided = impl == "strided"
    first = sizes[0]
    kept = (first.d * first.a * first.b + n) * I * item  # X and Y
    kept += n * I * item * (2 if arch.loss == "softmax_ce" else 1)  # dZ^{L+1} (and softmax)
    temporaries = [2 * n * I * item]  # the loss and its gradient
    dphi_scratch = 0
    for sz in sizes:
        input_grad = 0 not in sz.inputs
        z_in = sz.d * I * sz.a * sz.b
        if sz.kind == "global_avg_pool":
            kept += sz.d * I * item  # the pooled output
            if strided:
                kept += z_in * item  # dZ
            else:  # the gradient spread over a b, and the repeat's copy of it
                temporaries.append(2 * z_in * item)
            continue
        if sz.kind == "residual_add":
            kept += z_in * item  # the sum
            if strided and sz.activation in ("tanh", "sigmoid"):
                kept += z_in * item  # the activation's scratch
            # activation_grad's mask or 1 - A^2, and (index) residual_add_grad's new sum
            temporaries.append(z_in * (item if sz.activation != "relu" else 1) + (0 if strided else z_in * item))
            continue
        params = sz.d_next * (sz.h * sz.h * sz.d // sz.g if sz.kind == "conv" else sz.n_in) + sz.d_next
        kept += 3 * params * item  # W, dW, v and b, db, v
        kept += 8 * sz.d_next * item if sz.batch_norm else 0  # gamma, beta, their gradients, v, running averages
        temporaries.append((params - sz.d_next) * item)  # the update: one W-sized temporary
        S = sz.d_next * (I if sz.kind == "full" else I * sz.a_conv * sz.b_conv)
        out = sz.d_next * I * sz.a_next * sz.b_next
        smooth = sz.activation in ("tanh", "sigmoid")
        kept += S * item if sz.m in spare else 0
        if sz.batch_norm:  # strided: Xhat and a scratch; index: the new output and Xhat
            kept += 2 * S * item + (2 * sz.d_next * item if strided else 0)
            temporaries.append(0 if strided else 4 * S * item)
        kept += S * item if smooth and strided else 0
        if not strided and smooth:
            temporaries.append(S * item)  # 1 - A^2 or 1 - A
        if sz.dropout:  # the output and the mask (strided: and the uniforms)
            kept += out * (2 * item + 1 if strided else item + 1)
            temporaries.append(0 if strided else 2 * out * item)
        if sz.kind == "full":
            kept += sz.n_out * I * item  # S
            if sz.flatten:
                kept += sz.n_in * I * item  # the flattened input
                kept += sz.n_in * I * item if input_grad else 0  # flatten_grad's dZ
            if input_grad:
                kept += sz.n_in * I * item  # full_grad_input's dZ
            temporaries.append(sz.n_out * I)  # relu_grad's mask (bool)
            continue
        K, N = sz.h * sz.h * sz.d, I * sz.a_conv * sz.b_conv
        src = sz.d * I * sz.a_pad * sz.b_pad
        pooled = out if sz.pooled else 0
        PP = sz.pool ** 2
        avg = sz.pool_type == "avg"
        overlap = sz.pool_stride < sz.pool
        dZnext = out * item  # the gradient coming in
        kept += (K + sz.d_next) * N * item  # phi, S
        if input_grad:
            dphi_scratch = max(dphi_scratch, K * N * item)
        if strided:
            kept += src * item if sz.padded else 0  # Zpad
            if avg:
                kept += pooled * item * 2  # Z^{m+1} and the share of every window
            else:
                kept += pooled * (item + INTP + 1 + 2 * np.min_scalar_type(PP - 1).itemsize)
                kept += pooled * item if overlap else 0
            kept += sz.d_next * N * item if sz.pooled else 0  # dA
            if input_grad:
                kept += 2 * src * item + (z_in * item if sz.padded else 0)  # dZpad, spread, dZ
            temporaries.append(dZnext + sz.d_next * N)  # relu_grad's mask
            continue
        kept += K * N * INTP + pooled * (PP * INTP + item + (0 if avg else INTP))  # idx_phi, idx_pool, Z^{m+1}, pos
        temporaries.append(src * item)  # the new Zpad during phi
        # pool: the gathered windows, argmax's contiguous copy of them (avg: the weighted
        # windows), k and the new outputs
        temporaries.append(pooled * (2 * PP * item + 2 * INTP + item + INTP))
        backward = dZnext + (sz.d_next * N * item if sz.pooled else 0)  # dA
        backward += pooled * PP * item if avg else 0  # the windows' shares, scatter-added
        if input_grad:
            backward += src * item + (z_in * item if sz.padded else 0)  # dZpad, dZ
        temporaries.append(backward + sz.d_next * N)
    return int(kept + dphi_scratch + max(temporaries))


def available_bytes(meminfo: str | Path = "/proc/meminfo") -> int | None:
    """MemAvailable from /proc/meminfo, or None where there is no such file."""
    try:
        text = Path(meminfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def check_memory(arch: Architecture, impl: str, meminfo: str | Path = "/proc/meminfo") -> int:
    """Raise CostModelError when one step needs more memory than is available; returns the
    estimate in bytes."""
    need = estimate_step_bytes(arch, impl)
    have = available_bytes(meminfo)
    if have is not None and need > have:
        raise CostModelError(
            f"{arch.name} at batch {arch.batch} ({impl}) needs an estimated {need / GiB:.1f} GiB, "
            f"but only {have / GiB:.1f} GiB is available")
    return need
