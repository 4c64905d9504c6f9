"""What the per-op timers cost: a step with OpTimer against the same step untimed.

For every example architecture at its own batch size and both implementations, runs pairs
of steps, one with an OpTimer and one with none (NullTimer), in alternating order and every
step from the same weights, and prints the median of the paired differences in percent of
the untimed step ("measured %"). As that is a small difference of noisy times, it also
prints the timers' own cost from first principles ("laps %"): (one OpTimer.lap - one
NullTimer.lap) x ops per step / untimed step.

    python benchmarks/timer_overhead.py [--seconds 6] [--impl index strided]
"""

from __future__ import annotations

import argparse
import timeit
from pathlib import Path
from time import perf_counter_ns

import numpy as np

from calib.cnn import ReferenceCNN
from calib.measure import synthetic_batch
from calib.timer import NULL_TIMER, OpTimer
from costmodel.model.arch import load_arch
from costmodel.model.ops import OpKey, op_keys

ROOT = Path(__file__).resolve().parents[1]


def lap_cost_ns() -> float:
    """Nanoseconds one OpTimer.lap costs more than one NullTimer.lap."""
    key = OpKey(1, "conv", "phi", "forward")
    timer = OpTimer()
    number = 20000

    def timed() -> float:
        timer.reset()
        return min(timeit.repeat(lambda: timer.lap(key), number=number, repeat=7)) / number

    null = min(timeit.repeat(lambda: NULL_TIMER.lap(key), number=number, repeat=7)) / number
    return (timed() - null) * 1e9


def overhead(path: Path, impl: str, seconds: float) -> tuple[float, float, int, int]:
    """(median untimed step s, median of the paired differences timed - untimed s, ops per
    step, pairs run): pairs of steps, one timed and one not, in alternating order, for about
    `seconds` (at least 10 pairs, at most 2000)."""
    arch = load_arch(path)
    cnn = ReferenceCNN(arch, impl=impl)
    X, Y = synthetic_batch(arch)
    params = cnn.W + cnn.b + cnn.vW + cnn.vb
    start = [a.copy() for a in params]
    timer = OpTimer()

    def step(timed: bool) -> int:
        for a, a0 in zip(params, start):
            np.copyto(a, a0)
        timer.reset()
        t0 = perf_counter_ns()
        cnn.step(X, Y, timer if timed else None)
        return perf_counter_ns() - t0

    first = min(step(False) for _ in range(3))
    pairs = int(min(2000, max(10, seconds / (2 * first * 1e-9))))
    untimed, diffs = [], []
    for i in range(pairs):
        order = (False, True) if i % 2 else (True, False)
        ns = {timed: step(timed) for timed in order}
        untimed.append(ns[False])
        diffs.append(ns[True] - ns[False])
    return float(np.median(untimed)) * 1e-9, float(np.median(diffs)) * 1e-9, len(op_keys(arch)), pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per architecture and impl")
    parser.add_argument("--impl", nargs="+", default=["index", "strided"])
    args = parser.parse_args()
    lap_ns = lap_cost_ns()
    print(f"one lap costs {lap_ns:.0f} ns more than an untimed op")
    print(f"{'arch':<22}{'impl':<9}{'ops':>5}{'pairs':>7}{'untimed s':>12}"
          f"{'measured %':>12}{'laps %':>9}")
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for impl in args.impl:
            untimed, diff, n_ops, pairs = overhead(path, impl, args.seconds)
            print(f"{path.stem:<22}{impl:<9}{n_ops:>5}{pairs:>7}{untimed:>12.6f}"
                  f"{100 * diff / untimed:>12.2f}{100 * lap_ns * 1e-9 * n_ops / untimed:>9.3f}")


if __name__ == "__main__":
    main()
