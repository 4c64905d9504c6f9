"""Cold `costmodel predict` and `costmodel costs` processes (target: <= 1.0 s each), and what
the predict path imports (nothing heavy: no scikit-learn, matplotlib or torch).

    python benchmarks/predict_speed.py
"""

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCH = ROOT / "examples" / "cifar10-layer7.yaml"


def cold(args: list[str], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], check=True,
                       capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def heavy_imports() -> list[str]:
    code = ("import sys, runpy; sys.argv = ['costmodel', 'predict', %r]\n"
            "try:\n    runpy.run_path(%r, run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('HEAVY:' + ','.join(m for m in ('sklearn', 'matplotlib', 'torch', 'scipy') if m in sys.modules))"
            % (str(ARCH), str(ROOT / "cli.py")))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("HEAVY:"))
    return [m for m in line[len("HEAVY:"):].split(",") if m]


if __name__ == "__main__":
    print(f"costmodel predict {ARCH.name}: {cold(['predict', str(ARCH)]):.2f} s cold (median of 5; target 1.0 s)")
    print(f"costmodel costs {ARCH.name}:   {cold(['costs', str(ARCH)]):.2f} s cold (median of 5; target 1.0 s)")
    print(f"heavy modules imported by predict: {heavy_imports() or 'none'}")
