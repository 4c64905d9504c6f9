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

#: what one unit of each coefficient means, for reading a profile
FEATURE_UNITS = {
    "calls": ("s per call", 1.0),
    "flops": ("FLOP/s", None),
    "bytes": ("B/s", None),
    "bytes_beyond_L2": ("B/s beyond L2", None),
    "bytes_beyond_L3": ("B/s beyond L3", None),
}


def model_key(op: str, loss: str, regime: str = "") -> str:
    """The op kind a model is fitted for: the op name; for the loss ops also the loss (mse and
    softmax_ce run different kernels under the same op name); and how it runs
    (costmodel.ops.op_regime: "threaded", "serial" or ""), e.g. "phi:threaded",
    "conv_matmul:serial", "loss:mse"."""
    variants = ([loss] if op in ("loss", "loss_grad") else []) + ([regime] if regime else [])
    return f"{op}:{'+'.join(variants)}" if variants else op


def feature_rows(costs, caches: dict) -> "np.ndarray":
    """The (n_ops, len(FEATURES)) feature matrix of per-op costs: a DataFrame of
    costmodel.evaluate.costs, or any mapping with "flops" and "bytes" sequences.

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
    return np.column_stack([
        np.ones_like(flops),
        flops,
        nbytes,
        np.where(working_set > l2, nbytes, 0.0),
        np.where(working_set > l3, nbytes, 0.0),
    ])
