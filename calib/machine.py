"""The machine: its fingerprint (read from the OS, never guessed) and its measured ceilings.

Ceilings are peak matrix-product FLOP/s per dtype (square np.matmul with out=, BLAS threads
fixed by threadpoolctl) and a STREAM-like bandwidth probe by working-set size. Timings are
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


def ceilings(dtype_list=("float32", "float64"), threads: int | None = None, budget_seconds: float = 5.0,
             working_sets=WORKING_SETS) -> dict:
    """Measure peak matmul FLOP/s per dtype with `threads` BLAS threads (None: as is), bandwidth
    for every working set, and machine balance (peak FLOP/s over the largest set's bandwidth).
    Spends about `budget_seconds`. The dict validates as costmodel.machine.profile.Ceilings."""
    with threadpool_limits(limits=threads, user_api="blas"):
        used = threads or _blas_threads(blas_info())
        flops = {dt: peak_matmul(dt, budget_seconds * MATMUL_SHARE / len(dtype_list)) for dt in dtype_list}
    per_set = budget_seconds * (1 - MATMUL_SHARE) / len(working_sets)
    points = sorted((ws, bandwidth(ws, per_set)) for ws in working_sets)
    memory = points[-1][1]
    return {
        "threads": used,
        "matmul_flops_per_second": flops,
        "bandwidth": [{"working_set_bytes": ws, "bytes_per_second": bw} for ws, bw in points],
        "machine_balance": {dt: f / memory for dt, f in flops.items()},
    }
