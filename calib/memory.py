"""How much memory one step of the reference CNN needs, computed from the sizes before
anything is allocated, and a check against the memory the machine has available."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from costmodel.model.arch import Architecture
from costmodel.errors import CostModelError
from costmodel.model.ops import needs_flatten

INTP = np.dtype(np.intp).itemsize
GiB = 1024 ** 3


def estimate_step_bytes(arch: Architecture, impl: str) -> int:
    """Peak bytes that ReferenceCNN(arch, impl) allocates for one step at arch.batch: the
    parameters, momentum and gradients, every buffer and index array, the data batch, and
    the largest set of temporaries alive at one time."""
    item, I, n = arch.itemsize, arch.batch, arch.n_classes
    sizes = arch.sizes()
    first = sizes[0]
    kept = (first.d * first.a * first.b + n) * I * item  # X and Y
    kept += n * I * item * (2 if arch.loss == "softmax_ce" else 1)  # dZ^{L+1} (and softmax)
    temporaries = [2 * n * I * item]  # the loss and its gradient
    dphi_scratch = 0
    for sz in sizes:
        params = sz.d_next * (sz.h * sz.h * sz.d if sz.kind == "conv" else sz.n_in) + sz.d_next
        kept += 3 * params * item  # W, dW, v and b, db, v
        temporaries.append((params - sz.d_next) * item)  # the update: one W-sized temporary
        if sz.kind == "full":
            kept += sz.n_out * I * item  # S
            if needs_flatten(arch, sz.m):
                kept += 2 * sz.n_in * I * item  # the flattened input and flatten_grad's dZ
            if sz.m > 1:
                kept += sz.n_in * I * item  # full_grad_input's dZ
            temporaries.append(sz.n_out * I)  # relu_grad's mask (bool)
            continue
        K, N = sz.h * sz.h * sz.d, I * sz.a_conv * sz.b_conv
        src = sz.d * I * (sz.a_pad * sz.b_pad if sz.p > 0 else sz.a * sz.b)
        z_in = sz.d * I * sz.a * sz.b
        pooled = sz.d_next * I * sz.a_next * sz.b_next if sz.pool > 1 else 0
        dZnext = sz.d_next * I * sz.a_next * sz.b_next * item  # the gradient coming in
        kept += (K + sz.d_next) * N * item  # phi, S
        if sz.m > 1:
            dphi_scratch = max(dphi_scratch, K * N * item)
        if impl == "strided":
            kept += src * item if sz.p > 0 else 0  # Zpad
            kept += pooled * (item + INTP + 1 + 2 * np.min_scalar_type(sz.pool ** 2 - 1).itemsize)
            kept += sz.d_next * N * item if sz.pool > 1 else 0  # dA
            if sz.m > 1:
                kept += 2 * src * item + (z_in * item if sz.p > 0 else 0)  # dZpad, spread, dZ
            temporaries.append(dZnext + sz.d_next * N)  # relu_grad's mask
            continue
        kept += K * N * INTP + pooled * (sz.pool ** 2 * INTP + item + INTP)  # idx_phi, idx_pool, Z^{m+1}, pos
        temporaries.append(src * item)  # the new Zpad during phi
        # pool: the gathered windows, argmax's contiguous copy of them, k and the new outputs
        temporaries.append(pooled * (2 * sz.pool ** 2 * item + 2 * INTP + item + INTP))
        backward = dZnext + (sz.d_next * N * item if sz.pool > 1 else 0)  # dA
        if sz.m > 1:
            backward += src * item + (z_in * item if sz.p > 0 else 0)  # dZpad, dZ
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
