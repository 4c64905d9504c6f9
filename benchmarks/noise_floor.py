"""The noise floor of a calibration on this machine: the load calib.noise records over repeated
--quick sweeps (float32, index), at one thread and at every available core, with nothing else
started by this script. Prints, per run, the other processes' share of the cores, the steal and
the time-weighted median spread of the rounds (calib.noise), beside the limits. On a quiet
machine other and steal stay near 0; the spread is this machine's jitter between repeated steps,
which is why a spread above its limit is a note and not a refusal (calib/noise.py).

    python benchmarks/noise_floor.py [--repeats 3]
"""

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calib.calibrate import Plan, calibrate  # noqa: E402
from calib.noise import OTHER_CPU_LIMIT, SPREAD_LIMIT, STEAL_LIMIT  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--repeats", type=int, default=3)
args = parser.parse_args()

cores = len(os.sched_getaffinity(0))
print(f"limits: other {100 * OTHER_CPU_LIMIT:.0f} %, steal {100 * STEAL_LIMIT:.0f} %, spread {100 * SPREAD_LIMIT:.0f} %")
print(f"{'threads':>7} {'run':>3} {'wall s':>7} {'other %':>8} {'steal %':>8} {'spread %':>9}")
spreads: dict[int, list[float]] = {}
for threads in sorted({1, cores}):
    for run in range(args.repeats):
        plan = Plan.make(quick=True, dtypes=["float32"], impls=["index"])
        load = calibrate(plan, threads=threads)["load"]
        spread = load["spread"] or 0.0
        spreads.setdefault(threads, []).append(spread)
        print(f"{threads:>7} {run:>3} {load['wall_seconds']:>7.1f} {100 * load['other_cpu']:>8.1f} "
              f"{100 * load['steal']:>8.1f} {100 * spread:>9.1f}")
for threads, values in spreads.items():
    print(f"threads {threads}: spread {100 * min(values):.0f}-{100 * max(values):.0f} % over {len(values)} runs")
