"""The NumPy backend, machine side: the reference CNN's step (calib.cnn) measured per op
(calib.measure) and timed over the calibration sweep. Its rows and models are
costmodel.machine.backends.numpy's."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from costmodel.model.arch import Architecture

from calib.backends.timing import WARM_VISIT_SECONDS, chunked_sweep, warm_steps
from calib.measure import measure  # noqa: F401  (this backend's measurement)


def time_sweep(archs: list[Architecture], impl: str = "index", *, threads: int, rounds: int, chunk: int, seed: int,
               progress: Callable[[int], None] | None = None) -> list[dict]:
    """Samples {"point", "layer", "op", "phase", "seconds"} of every op of every sweep
    network (median over `rounds` steps)."""
    from calib.cnn import ReferenceCNN
    from calib.measure import synthetic_batch
    from calib.timer import OpTimer

    def build(i: int, arch: Architecture):
        cnn = ReferenceCNN(arch, impl=impl, seed=i, threads=threads)
        X, Y = synthetic_batch(arch, seed=i)
        start = [w.copy() for w in cnn.W + cnn.b + cnn.vW + cnn.vb]
        t0 = time.perf_counter()
        cnn.step(X, Y)  # warm-up: first touches of every buffer, lazily built index arrays
        seconds = time.perf_counter() - t0
        if seconds < WARM_VISIT_SECONDS:  # the first step was short: time a warm one
            t0 = time.perf_counter()
            cnn.step(X, Y)
            seconds = time.perf_counter() - t0
        # a small network's ops are dominated by per-call costs that depend on how warm the
        # caches are: each visit runs untimed steps first, as a training loop has them
        return cnn, X, Y, start, warm_steps(seconds)

    def run_round(visits):
        out = {}
        for i, (cnn, X, Y, start, warm) in visits:
            for timed in [False] * warm + [True]:
                # every step starts from the same weights, so no sweep network diverges
                for w, w0 in zip(cnn.W + cnn.b + cnn.vW + cnn.vb, start):
                    np.copyto(w, w0)
                timer = OpTimer() if timed else None
                cnn.step(X, Y, timer)
            out[i] = {(k.layer, k.op, k.phase): sec for k, sec in timer.seconds().items()}
        return out

    return chunked_sweep(archs, chunk=chunk, rounds=rounds, seed=seed, build=build, run_round=run_round,
                         progress=progress)


def versions() -> dict[str, str]:
    """Nothing beyond the fingerprint's NumPy and BLAS."""
    return {}
