"""Coverage of `measure`: the sum of the per-op times over the wall-clock of whole steps.

The laps of the per-op timers tile the step (tests/test_cnn_measure.py checks that with a fake
clock); what they miss on a real machine is the step's prologue and epilogue and the time the
OS takes the core away. This prints, for every example at batch 8 and its own batch, both
implementations (and PyTorch when installed), the median coverage of `repeats` measures of
15 steps, and their range.

    python benchmarks/coverage.py [--repeats 3] [--batch 8]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from calib.measure import measure
from costmodel.model.arch import load_arch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, nargs="*", default=[8, None])
    args = parser.parse_args()
    try:
        from calib.backends.torch import measure_torch
    except ImportError:
        measure_torch = None
    print(f"{'architecture':<24} {'batch':>5} {'impl':<8} {'coverage (median)':>18} {'range':>15}")
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for batch in args.batch:
            arch = load_arch(path).with_batch(batch)
            runs = {impl: lambda impl=impl: measure(arch, steps=15, warmup=3, impl=impl)["coverage"]
                    for impl in ("index", "strided")}
            if measure_torch is not None:
                runs["torch"] = lambda: measure_torch(arch, steps=15, warmup=3)["coverage"]
            for impl, run in runs.items():
                try:
                    values = [run() for _ in range(args.repeats)]
                except ImportError:
                    continue
                print(f"{arch.name:<24} {arch.batch:>5} {impl:<8} {np.median(values):>18.3f} "
                      f"{min(values):>7.3f}-{max(values):.3f}")


if __name__ == "__main__":
    main()
