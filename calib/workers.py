"""Threads for the strided implementation's large ops (Workers) and the BLAS's thread count."""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import costmodel.machine.backends.numpy as rules

# When a step uses threads (costmodel.machine.backends.numpy.threaded_step) and which ops they share
# (costmodel.machine.backends.numpy.SPLIT_BYTES, SPLIT_FLOPS) are rules of the cost model too, so they live there.
# Handing work to a sleeping thread costs 20-60 us (on a 2-core VM), more than it saves for a
# small op.

_POOLS: dict[int, ThreadPoolExecutor] = {}
_BLAS: list = []  # threadpoolctl's controller of the BLAS libraries, made once


#: seconds the BLAS's idle threads go on spinning after a threaded product before they sleep:
#: OpenBLAS's THREAD_TIMEOUT is 2^28 cycles (~0.1 s at 2.5 GHz), with a margin
BLAS_SPIN_SECONDS = 0.25


def settle_blas() -> None:
    """Wait until the BLAS's threads have stopped spinning after NumPy's last threaded product,
    before timing something that runs on other threads: the strided implementation's own
    threads, PyTorch's OpenMP threads. Measured on 2 cores: mlp-batchnorm-dropout's strided
    step took 9.3-10.3 ms right after an index step, 6.7-7.1 ms in a fresh process or after a
    0.25 s pause (0.05 s was not enough); PyTorch's float32 product peak at 2 threads was once
    measured at 22 GFLOP/s (459 in another run) right after NumPy's."""
    time.sleep(BLAS_SPIN_SECONDS)


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
