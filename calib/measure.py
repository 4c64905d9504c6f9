"""Measure where the time of real SG steps of the reference CNN goes, op by op."""

from __future__ import annotations

from time import perf_counter_ns
from typing import Callable

import numpy as np

from costmodel.model.arch import Architecture
from costmodel.model.ops import OpKey

from calib.allocator import warm_heap
from calib.cnn import ReferenceCNN, one_hot, to_layout
from calib.workers import blas_threads
from calib.memory import check_memory
from calib.noise import LoadMonitor, handoff_seconds, relative_spread
from calib.timer import OpTimer


def synthetic_batch(arch: Architecture, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded mini-batch of arch.batch images with values in [0, 1) and random labels, in
    the network's layout: (X, Y one-hot)."""
    rng = np.random.default_rng(seed)
    I = arch.batch
    images = rng.random((I, arch.input.height, arch.input.width, arch.input.channels))
    return to_layout(images, arch), one_hot(rng.integers(0, arch.n_classes, I), arch.n_classes, arch.dtype)


def measure(arch: Architecture, *, steps: int = 10, warmup: int = 2, threads: int | None = None,
            impl: str = "index", seed: int = 0,
            progress: Callable[[int, int], None] | None = None) -> dict:
    """Run warmup + steps SG steps of the reference CNN on a synthetic batch and return the
    median seconds of every op (DESIGN.md's per-op JSON, without flops and bytes).

    Every step starts from the same seeded parameters (restored outside the timed region), so
    the times do not depend on whether the optimizer's settings make training diverge on
    synthetic data. ``step_seconds`` is the median wall-clock of whole steps, timed outside
    the op timers; ``coverage`` is the median over steps of the sum of a step's op times over
    its wall-clock. ``load`` is the machine's load while the steps ran (calib.noise: other
    processes' CPU time, steal, each op's spread over the steps). ``threads`` limits the BLAS
    (and OpenMP) pools with threadpoolctl (None keeps the current setting) and is
    the number of threads the strided implementation shares its large ops among.
    ``allocator`` is the C allocator's state the steps ran in (calib.allocator.warm_heap).
    ``load`` holds the cores' hand-off before and after the steps (calib.noise.handoff_seconds);
    the monitor then settles the BLAS threads (calib.workers.settle_blas): a step right after
    other threaded products of this process would share the cores with them still spinning.
    """
    from threadpoolctl import threadpool_limits

    if steps < 1 or warmup < 0:
        raise ValueError("steps must be >= 1 and warmup >= 0")
    check_memory(arch, impl)
    allocator = warm_heap()
    # the monitor samples the cores' hand-off, then lets no BLAS thread spin into the steps
    with threadpool_limits(limits=threads), LoadMonitor(handoff=handoff_seconds) as monitor:
        used_threads = blas_threads()
        cnn = ReferenceCNN(arch, impl=impl, seed=seed, threads=used_threads)
        X, Y = synthetic_batch(arch, seed)
        start = [a.copy() for a in cnn.W + cnn.b + cnn.vW + cnn.vb]
        timer = OpTimer()
        op_seconds: list[dict] = []
        step_seconds: list[float] = []
        total = warmup + steps
        for i in range(total):
            for a, a0 in zip(cnn.W + cnn.b + cnn.vW + cnn.vb, start):
                np.copyto(a, a0)
            timer.reset()
            t0 = perf_counter_ns()
            cnn.step(X, Y, timer)
            t1 = perf_counter_ns()
            if i >= warmup:
                op_seconds.append(timer.seconds())
                step_seconds.append((t1 - t0) * 1e-9)
            if progress is not None:
                progress(i + 1, total)
        add_step_spreads(monitor, op_seconds)

    return {"arch": arch.name, "batch": arch.batch, "dtype": arch.dtype, "threads": used_threads,
            "impl": impl, **summarize(op_seconds, step_seconds, list(op_seconds[0])),
            "load": monitor.load.as_dict(), "allocator": allocator}


def add_step_spreads(monitor: LoadMonitor, op_seconds: list[dict]) -> None:
    """Each op's relative spread over the steps, weighted by its median time."""
    keys = {key for step in op_seconds for key in step}
    for key in keys:
        times = [step.get(key, 0.0) for step in op_seconds]
        monitor.add_spreads([relative_spread(times)], [float(np.median(times))])


def summarize(op_seconds: list[dict], step_seconds: list[float], order: list[OpKey]) -> dict:
    """The per-op part of DESIGN.md's measure JSON from the op times of each step (an op missing
    from a step counts 0 there): per op the median seconds and its fraction of their sum
    (`total_seconds`), the median whole step (`step_seconds`) and `coverage`."""
    medians = {key: float(np.median([s.get(key, 0.0) for s in op_seconds])) for key in order}
    total_seconds = sum(medians.values())
    return {
        "total_seconds": total_seconds,
        "step_seconds": float(np.median(step_seconds)),
        # each step's own timed share, then the median: a sum of per-op medians against the
        # median step would be biased low whenever hiccups land in different ops of each step
        "coverage": float(np.median([sum(ops.values()) / step
                                     for ops, step in zip(op_seconds, step_seconds)])),
        "ops": [{"layer": key.layer, "layer_type": key.layer_type, "op": key.op,
                 "phase": key.phase, "seconds": seconds,
                 "fraction": seconds / total_seconds if total_seconds > 0 else 0.0}
                for key, seconds in medians.items()],
    }
