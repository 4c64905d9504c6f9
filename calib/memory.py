"""How much memory one step needs (the reference CNN's, or PyTorch's), computed from the sizes
before anything is allocated, and a check against the memory this process may still use.

The memory a process may use is the smallest of three limits, each less what is already used:
MemAvailable (/proc/meminfo: what the machine can give without swapping), RLIMIT_AS (`ulimit -v`:
address space, less this process's VmSize) and the memory cgroup's limit (v2 memory.max less
memory.current, v1 memory.limit_in_bytes less memory.usage_in_bytes, for the process's cgroup
and each ancestor), so that a step that would die with MemoryError or the OOM killer under a
ulimit or a container's limit is refused first, in one line.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from costmodel.model.arch import Architecture
from costmodel.errors import UsageError

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
        if strided:  # the update's scratch arrays for (lr/I) dW and (lr/C) W, one of W's and one of b's shape
            kept += params * item
        else:  # the update, simpleNN's way: one W-sized temporary alive at a time
            temporaries.append((params - sz.d_next) * item)
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


def estimate_torch_step_bytes(arch: Architecture) -> int:
    """Peak bytes of one SG step of the same network in PyTorch at arch.batch (an estimate from
    the sizes, not a measurement): the parameters, their gradients and momentum buffers; the
    batch and every activation autograd keeps for backward (each conv or full layer's S and
    activation output, a pooled output with its int64 indices, the flattened input); the
    gradients in flight during backward (twice the largest activation); and, in float64, where
    PyTorch's CPU convolution is im2col + BLAS (slow_conv2d), the columns phi(pad(Z)) of the
    whole batch and their gradient for the largest layer."""
    item, I = arch.itemsize, arch.batch
    sizes = arch.sizes()
    first = sizes[0]
    kept = (first.d * first.a * first.b + arch.n_classes) * I * item  # X, Y
    largest, columns = 0, 0
    for sz in sizes:
        kept += 3 * sz.n_params * item  # W, b (and batch norm's), their gradients, the momentum buffers
        z_in = sz.d * I * sz.a * sz.b
        if sz.kind == "conv":
            S = sz.d_next * I * sz.a_conv * sz.b_conv
            pooled = sz.d_next * I * sz.a_next * sz.b_next if sz.pooled else 0
            acts = (2 + 2 * sz.batch_norm) * S * item + pooled * (item + 8)
            columns = max(columns, sz.h * sz.h * sz.d * I * sz.a_conv * sz.b_conv * item)
        elif sz.kind == "full":
            acts = ((2 + 2 * sz.batch_norm) * sz.n_out + sz.n_in) * I * item
        elif sz.kind == "residual_add":
            acts = 2 * z_in * item  # the sum and its activation
        else:  # global average pooling
            acts = sz.d * I * item
        acts += sz.d_next * I * sz.a_next * sz.b_next * (item + 1) if sz.dropout else 0  # output, mask
        kept += acts
        largest = max(largest, acts)
    phi = 2 * columns if arch.dtype == "float64" else 0
    return int(kept + 2 * largest + phi)


@dataclass(frozen=True)
class MemoryLimit:
    """The bytes this process may still allocate, and which limit says so."""

    bytes: int | None  # None: no limit could be read
    source: str  # e.g. "MemAvailable", "RLIMIT_AS (ulimit -v)", "cgroup memory.max"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def available_bytes(meminfo: str | Path = "/proc/meminfo") -> int | None:
    """MemAvailable from /proc/meminfo, or None where there is no such file."""
    try:
        text = Path(meminfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            try:
                return int(line.split()[1]) * 1024
            except (IndexError, ValueError):
                return None
    return None


def _vm_size(status: str | Path = "/proc/self/status") -> int:
    """This process's address space (VmSize), 0 if unknown."""
    try:
        for line in Path(status).read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


def _cgroup_limits(self_cgroup: str | Path, root: str | Path) -> list[tuple[int, str]]:
    """(bytes left, source) of the memory cgroup of this process and each ancestor, for v2
    (memory.max - memory.current) and v1 (memory.limit_in_bytes - memory.usage_in_bytes)."""
    try:
        lines = Path(self_cgroup).read_text().splitlines()
    except OSError:
        return []
    root = Path(root)
    found = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, where = parts
        if controllers == "":  # v2: the unified hierarchy
            base, files = root, ("memory.max", "memory.current", "cgroup memory.max")
            if not (root / "cgroup.controllers").exists() and (root / "unified").is_dir():
                base = root / "unified"
        elif "memory" in controllers.split(","):  # v1
            base, files = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                            "cgroup memory.limit_in_bytes")
        else:
            continue
        node = Path(where.strip())
        for ancestor in [node, *node.parents]:
            directory = base / str(ancestor).lstrip("/")
            limit, used = _read_int(directory / files[0]), _read_int(directory / files[1])
            if limit is not None and limit < (1 << 60):  # v1 says "unlimited" as ~2**63
                found.append((limit - (used or 0), f"{files[2]} of {ancestor}"))
    return found


def memory_limit(meminfo: str | Path = "/proc/meminfo", *, self_cgroup: str | Path = "/proc/self/cgroup",
                 cgroup_root: str | Path = "/sys/fs/cgroup", status: str | Path = "/proc/self/status",
                 rlimit_as: int | None = None) -> MemoryLimit:
    """The smallest of MemAvailable, RLIMIT_AS less this process's VmSize, and the cgroup limits
    less their usage (see the module docstring). `rlimit_as`: the soft RLIMIT_AS to use instead
    of this process's (tests)."""
    candidates: list[tuple[int, str]] = []
    have = available_bytes(meminfo)
    if have is not None:
        candidates.append((have, "MemAvailable"))
    soft = resource.getrlimit(resource.RLIMIT_AS)[0] if rlimit_as is None else rlimit_as
    if soft != resource.RLIM_INFINITY and soft >= 0:
        candidates.append((soft - _vm_size(status), "RLIMIT_AS (ulimit -v)"))
    candidates += _cgroup_limits(self_cgroup, cgroup_root)
    if not candidates:
        return MemoryLimit(None, "none found")
    left, source = min(candidates)
    return MemoryLimit(max(left, 0), source)


def check_memory(arch: Architecture, impl: str, meminfo: str | Path = "/proc/meminfo", *,
                 limit: MemoryLimit | None = None) -> int:
    """Raise UsageError (exit status 2) when one step needs more memory than this process may
    still use (memory_limit); returns the estimate in bytes. impl "torch" estimates PyTorch's
    step (estimate_torch_step_bytes), any other the reference CNN's (estimate_step_bytes)."""
    need = estimate_torch_step_bytes(arch) if impl == "torch" else estimate_step_bytes(arch, impl)
    limit = limit if limit is not None else memory_limit(meminfo)
    if limit.bytes is not None and need > limit.bytes:
        what = "PyTorch" if impl == "torch" else impl
        raise UsageError(
            f"{arch.name} at batch {arch.batch} ({what}) needs an estimated {need / GiB:.1f} GiB, "
            f"but only {limit.bytes / GiB:.1f} GiB is available ({limit.source}): try a smaller --batch")
    return need
