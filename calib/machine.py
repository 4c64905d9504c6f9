"""The machine: its fingerprint (read from the OS, never guessed) and its measured ceilings.

Ceilings are peak matrix-product FLOP/s per dtype (square np.matmul with out=, BLAS threads
fixed by threadpoolctl; at the calibration's thread count and at one thread; PyTorch's own
products too for a torch calibration) and a STREAM-like bandwidth probe by working-set size.
They bound the fit (calib.fit.ceiling_of). Timings are
the best of a few runs with time.perf_counter and the garbage collector off.
"""

from __future__ import annotations

import gc
import time
from contextlib import contextmanager

import numpy as np
from threadpoolctl import threadpool_limits

import costmodel.machine.fingerprint as _fp
from costmodel.machine.fingerprint import (available_cores, cache_sizes, cpu_identity, cpu_info,  # noqa: F401
                                           parse_size, physical_cores)

#: working sets of the bandwidth probe: 8 KiB to 256 MiB, 10 points log-spaced (whole KiB)
WORKING_SETS = tuple(1024 * round(x / 1024) for x in np.geomspace(8 << 10, 256 << 20, 10))
#: matrix sizes tried for the peak FLOP/s, in order, while the budget lasts
MATMUL_SIZES = (256, 512, 1024, 1536, 2048)
#: the bandwidth kernel np.add(a, b, out=c) moves three arrays of float64
BW_ARRAYS, BW_DTYPE = 3, np.dtype(np.float64)
MATMUL_SHARE = 0.6  # of the time budget, the rest is for the bandwidth probe
MAX_REPEATS = 10


# -- fingerprint -----------------------------------------------------------------------------
# read from the OS by costmodel.machine.fingerprint (pure, so predict takes it without calib)

def blas_info() -> list[dict]:
    """The BLAS libraries NumPy loaded, as threadpoolctl sees them now (filepath: basename)."""
    return _fp.blas_info()


def _blas_threads(blas: list[dict]) -> int:
    return max((lib["num_threads"] for lib in blas), default=1)


def fingerprint(threads: int | None = None) -> dict:
    """What identifies this machine and software, with BLAS limited to `threads` (None: as is).
    The dict validates as costmodel.machine.profile.Fingerprint."""
    with threadpool_limits(limits=threads, user_api="blas"):
        blas = blas_info()
    return _fp.take_fingerprint(threads or _blas_threads(blas), blas)


# -- ceilings --------------------------------------------------------------------------------

@contextmanager
def _gc_off():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _best_time(run, repeats: int, budget: float) -> float:
    """Best time of `run()` over up to `repeats` timed calls (at least one) after one warm-up,
    stopping early once `budget` seconds are spent."""
    with _gc_off():
        start = time.perf_counter()
        run()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            t = time.perf_counter() - t0
            best = min(best, t)
            if time.perf_counter() - start + t > budget:
                break
    return best


def peak_matmul(dtype: str, budget: float) -> float:
    """Best FLOP/s (2 n^3 per product) of square np.matmul over growing sizes within `budget`."""
    rng = np.random.default_rng(0)
    start, best = time.perf_counter(), 0.0
    for n in MATMUL_SIZES:
        # skip a size whose warm-up and timed runs would overrun the budget at the rate so far
        left = budget - (time.perf_counter() - start)
        if best and 3 * 2 * n**3 / best > left:
            break
        a, b = (rng.standard_normal((n, n)).astype(dtype) for _ in range(2))
        c = np.empty((n, n), dtype)
        t = _best_time(lambda: np.matmul(a, b, out=c), MAX_REPEATS, max(left / 2, 0.0))
        best = max(best, 2 * n**3 / t)
    return best


def bandwidth(working_set: int, budget: float) -> float:
    """Bytes/s of np.add(a, b, out=c), a, b and c filling `working_set` bytes (to within 24 B);
    small sets repeat the call in a loop so a timed sample lasts about a millisecond."""
    n = max(1, working_set // (BW_ARRAYS * BW_DTYPE.itemsize))
    a, b, c = (np.ones(n, BW_DTYPE) for _ in range(BW_ARRAYS))
    moved = BW_ARRAYS * n * BW_DTYPE.itemsize
    once = _best_time(lambda: np.add(a, b, out=c), 1, budget)
    inner = max(1, int(1e-3 / max(once, 1e-9)))

    def run():
        for _ in range(inner):
            np.add(a, b, out=c)

    return inner * moved / _best_time(run, MAX_REPEATS, budget)


def peak_torch(dtype: str, threads: int, budget: float) -> float:
    """Best FLOP/s of PyTorch's own products with `threads` intra-op threads within `budget`:
    square torch.mm over growing sizes (MKL) and a 3x3 convolution of 64 channels (oneDNN for
    float32), whichever is faster; PyTorch's kernels can beat NumPy's OpenBLAS."""
    from calib.backends.torch import import_torch

    torch = import_torch()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        tdtype = getattr(torch, dtype)
        start, best = time.perf_counter(), 0.0
        x = torch.randn((8, 64, 32, 32), generator=generator, dtype=tdtype)
        w = torch.randn((64, 64, 3, 3), generator=generator, dtype=tdtype)
        with torch.no_grad():
            t = _best_time(lambda: torch.nn.functional.conv2d(x, w, padding=1), MAX_REPEATS, budget / 3)
        best = 2 * 64 * 64 * 9 * 8 * 32 * 32 / t
        for n in MATMUL_SIZES:
            left = budget - (time.perf_counter() - start)
            if 3 * 2 * n**3 / best > left:
                break
            a, b = (torch.randn((n, n), generator=generator, dtype=tdtype) for _ in range(2))
            c = torch.empty((n, n), dtype=tdtype)
            t = _best_time(lambda: torch.mm(a, b, out=c), MAX_REPEATS, max(left / 2, 0.0))
            best = max(best, 2 * n**3 / t)
        return best
    finally:
        torch.set_num_threads(previous)


def level_bandwidth(points, caches: dict) -> dict[str, float]:
    """One thread's bandwidth per working-set level of the fit's byte terms, from the
    bandwidth probe's points ({working_set_bytes, bytes_per_second}): "L2" the best of the
    working sets that fit in L2, "L3" of those between L2 and L3, "memory" of the larger ones;
    a level without a point (or without the cache size) is left out."""
    l2, l3 = caches.get("L2"), caches.get("L3")
    out: dict[str, float] = {}
    for p in points:
        ws, bw = p["working_set_bytes"], p["bytes_per_second"]
        if l2 and ws <= l2:
            level = "L2"
        elif l2 and l3 and ws <= l3:
            level = "L3"
        elif l3 and ws > l3:
            level = "memory"
        else:
            continue
        out[level] = max(out.get(level, 0.0), bw)
    return out


def ceilings(dtype_list=("float32", "float64"), threads: int | None = None, budget_seconds: float = 5.0,
             working_sets=WORKING_SETS, torch: bool = False) -> dict:
    """Measure peak matmul FLOP/s per dtype with `threads` BLAS threads (None: as is) and with
    one thread (and PyTorch's with both when `torch`), bandwidth for every working set, and
    machine balance (peak FLOP/s over the largest set's bandwidth). Spends about
    `budget_seconds`. The dict validates as costmodel.machine.profile.Ceilings."""
    from calib.workers import settle_blas

    with threadpool_limits(limits=threads, user_api="blas"):
        used = threads or _blas_threads(blas_info())
    thread_counts = sorted({1, used}, reverse=True)
    backends = ("numpy", "torch") if torch else ("numpy",)
    per_peak = budget_seconds * MATMUL_SHARE / (len(dtype_list) * len(thread_counts) * len(backends))
    peaks = []
    for n in thread_counts:
        with threadpool_limits(limits=n, user_api="blas"):
            for dt in dtype_list:
                peaks.append({"backend": "numpy", "dtype": dt, "threads": n, "flops_per_second": peak_matmul(dt, per_peak)})
        if torch:
            settle_blas()  # NumPy's BLAS threads would share the cores with PyTorch's
            for dt in dtype_list:
                peaks.append({"backend": "torch", "dtype": dt, "threads": n,
                              "flops_per_second": peak_torch(dt, n, per_peak)})
    flops = {p["dtype"]: p["flops_per_second"] for p in peaks if (p["backend"], p["threads"]) == ("numpy", used)}
    settle_blas()
    per_set = budget_seconds * (1 - MATMUL_SHARE) / len(working_sets)
    points = sorted((ws, bandwidth(ws, per_set)) for ws in working_sets)
    memory = points[-1][1]
    return {
        "threads": used,
        "matmul_flops_per_second": flops,
        "bandwidth": [{"working_set_bytes": ws, "bytes_per_second": bw} for ws, bw in points],
        "machine_balance": {dt: f / memory for dt, f in flops.items()},
        "peaks": peaks,
    }
