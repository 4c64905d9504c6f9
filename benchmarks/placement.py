"""The cores' placement over time on this machine: how often a VM's two vCPUs share a cache,
and what it does to a step.

Every ~0.7 s for --seconds it measures --steps steps of --arch (calib.measure, index) at two
threads, with the cores' hand-off before and after (calib.noise.handoff_seconds: a two-thread
128^3 float32 product), and at one thread. It prints the runs of consecutive samples in one placement, then per placement
("near": hand-off within calib.noise.HANDOFF_CHANGE_LIMIT of the least sample, "far": beyond)
the share of samples and the median steps. On a 2-vCPU AMD EPYC VM (2026-12-01) mnist-mlp took
0.88 ms (near) or 1.11 ms (far) at two threads and 1.37-1.42 ms at one thread in both.

    python benchmarks/placement.py [--seconds 120] [--arch costmodel/examples/mnist-mlp.yaml]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calib.measure import measure  # noqa: E402
from calib.noise import HANDOFF_CHANGE_LIMIT, handoff_seconds  # noqa: E402
from costmodel.model.arch import load_arch  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--arch", type=Path, default=ROOT / "costmodel" / "examples" / "mnist-mlp.yaml")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    if handoff_seconds(reps=4) is None:
        print("one core available: no placement to see")
        return 0
    arch = load_arch(args.arch)
    samples = []  # (seconds since start, hand-off, two-thread step, one-thread step)
    t_start = time.perf_counter()
    while time.perf_counter() - t_start < args.seconds:
        two = measure(arch, steps=args.steps, threads=2)  # its load holds the hand-off before and after
        one = measure(arch, steps=args.steps, threads=1)
        samples.append((time.perf_counter() - t_start, statistics.median(two["load"]["handoff_seconds"]),
                        two["step_seconds"], one["step_seconds"]))
    near_limit = HANDOFF_CHANGE_LIMIT * min(h for _, h, _, _ in samples)
    label = ["near" if h <= near_limit else "far" for _, h, _, _ in samples]
    print(f"{arch.name}: {len(samples)} samples over {samples[-1][0]:.0f} s; near: hand-off <= {1e6 * near_limit:.0f} us")
    first = 0
    for i in range(1, len(samples) + 1):
        if i == len(samples) or label[i] != label[first]:
            part = samples[first:i]
            print(f"  {part[0][0]:6.1f}-{part[-1][0]:6.1f} s  {label[first]:4s}  hand-off "
                  f"{1e6 * statistics.median(h for _, h, _, _ in part):5.1f} us  step at 2 threads "
                  f"{1e3 * statistics.median(s for _, _, s, _ in part):.3f} ms, at 1 thread "
                  f"{1e3 * statistics.median(s for _, _, _, s in part):.3f} ms")
            first = i
    for name in ("near", "far"):
        part = [s for s, lab in zip(samples, label) if lab == name]
        if part:
            print(f"{name}: {100 * len(part) / len(samples):.0f} % of the samples; median hand-off "
                  f"{1e6 * statistics.median(h for _, h, _, _ in part):.1f} us, step at 2 threads "
                  f"{1e3 * statistics.median(s for _, _, s, _ in part):.3f} ms, at 1 thread "
                  f"{1e3 * statistics.median(s for _, _, _, s in part):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
