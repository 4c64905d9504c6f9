"""The features of an op that its time is modelled on, shared by the fit (calib/) and predict.

An op's time on a machine is modelled per op kind as a non-negative linear combination

    t = c_call + c_flop * FLOPs + c_byte * bytes + c_L2 * bytes_beyond_L2 + c_L3 * bytes_beyond_L3

(the PALEO-style "sum of compute time and memory time", with a per-call overhead). The
`bytes_beyond_*` features are the op's bytes when its working set (every array it reads or
writes) exceeds that cache level, else 0: the extra time per byte of fetching from the next
level. Every coefficient reads as a machine fact: 1/c_flop is FLOP/s, 1/c_byte is bytes/s,
c_call is seconds per call.
"""

from __future__ import annotations

FEATURES = ("calls", "flops", "bytes", "bytes_beyond_L2", "bytes_beyond_L3")
#: features the torch backend's rows carry besides FLOPs and bytes (costmodel.machine.fused.torch_rows):
#: the bytes of arrays so large that every allocation maps fresh pages, and the FLOPs blocked
#: convolution kernels spend on SIMD lanes past a layer's channel counts
ROW_FEATURES = ("bytes_fresh", "flops_lane_waste")
ALL_FEATURES = FEATURES + ROW_FEATURES
TORCH_FEATURES = FEATURES + ("bytes_fresh",)
LANE_FEATURES = TORCH_FEATURES + ("flops_lane_waste",)


def features_of(backend: str, key: str = "") -> tuple[str, ...]:
    """The features the model `key` of a backend is fitted on."""
    if backend != "torch":
        return FEATURES
    if "conv_matmul" in key or "conv_grad_W" in key:
        return LANE_FEATURES
    return TORCH_FEATURES


def simd_lanes(cpu_flags, itemsize: int) -> int:
    """Elements of `itemsize` bytes in one SIMD register of a CPU with these flags: 64-byte
    registers with AVX-512, 32 with AVX, else 16 (SSE, NEON)."""
    flags = set(cpu_flags)
    width = 64 if "avx512f" in flags else 32 if "avx" in flags or "avx2" in flags else 16
    return max(width // itemsize, 1)


def model_key(op: str, loss: str, regime: str = "") -> str:
    """The op kind a model is fitted for: the op name; for the loss ops also the loss (mse and
    softmax_ce run different kernels under the same op name); and how it runs
    (costmodel.model.ops.op_regime: "threaded", "serial" or ""), e.g. "phi:threaded",
    "conv_matmul:serial", "loss:mse"."""
    variants = ([loss] if op in ("loss", "loss_grad") else []) + ([regime] if regime else [])
    return f"{op}:{'+'.join(variants)}" if variants else op


def feature_rows(costs, caches: dict, features: tuple[str, ...] = FEATURES) -> "np.ndarray":
    """The (n_ops, len(features)) feature matrix of per-op costs: a DataFrame of
    costmodel.model.evaluate.costs, or any mapping with "flops" and "bytes" sequences (and
    the ROW_FEATURES of the torch groups; 0 where absent).

    `caches` holds the cache sizes in bytes ({"L2": ..., "L3": ...}) of the machine whose
    profile is used; a missing level counts as infinitely large.
    """
    import numpy as np

    flops = np.asarray(costs["flops"], dtype=float)
    nbytes = np.asarray(costs["bytes"], dtype=float)
    working_set = nbytes  # every array the op touches, once
    inf = float("inf")
    l2 = float(caches.get("L2") or inf)
    l3 = float(caches.get("L3") or inf)
    columns = {
        "calls": lambda: np.ones_like(flops),
        "flops": lambda: flops,
        "bytes": lambda: nbytes,
        "bytes_beyond_L2": lambda: np.where(working_set > l2, nbytes, 0.0),
        "bytes_beyond_L3": lambda: np.where(working_set > l3, nbytes, 0.0),
    }
    for name in ROW_FEATURES:
        columns[name] = (lambda name=name: np.asarray(costs[name], dtype=float) if name in costs
                         else np.zeros_like(flops))
    unknown = [f for f in features if f not in columns]
    if unknown:
        raise ValueError(f"unknown feature {unknown[0]!r} (this costmodel knows {', '.join(columns)})")
    return np.column_stack([columns[f]() for f in features])
