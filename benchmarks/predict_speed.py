"""Cold `costmodel predict`, `costmodel costs` and `costmodel --help` processes against a cold
`python -c "import numpy"` measured in the same run (targets: predict <= 3x, --help <= 2x), and
what the predict path imports (nothing heavy: no SymPy, pandas, scikit-learn, matplotlib, torch).

Runs are interleaved (numpy, predict, costs, help, numpy, ...) so that a slower moment of the
machine hits every command alike; the figures are medians. The project's modules are compiled
to bytecode first and the runs may write bytecode (PYTHONDONTWRITEBYTECODE is dropped), as in a
pip-installed costmodel: otherwise every run compiles ~90 modules again (~35 ms, measured).

    python benchmarks/predict_speed.py [--runs 9]
"""

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCH = ROOT / "examples" / "cifar10-layer7.yaml"
HEAVY = ("sympy", "pandas", "sklearn", "matplotlib", "torch", "scipy")

COMMANDS = {
    "python -c 'import numpy'": [sys.executable, "-c", "import numpy"],
    "costmodel predict": [sys.executable, str(ROOT / "cli.py"), "predict", str(ARCH)],
    "costmodel costs": [sys.executable, str(ROOT / "cli.py"), "costs", str(ARCH)],
    "costmodel --help": [sys.executable, str(ROOT / "cli.py"), "--help"],
}


ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, env=ENV)
    return time.perf_counter() - t0


def heavy_imports() -> list[str]:
    # printed by an atexit handler: the command line ends by os._exit after the atexit handlers
    code = ("import atexit, sys, runpy; sys.argv = ['costmodel', 'predict', %r]\n"
            "atexit.register(lambda: print('HEAVY:' + ','.join(m for m in %r if m in sys.modules)))\n"
            "runpy.run_path(%r, run_name='__main__')"
            % (str(ARCH), HEAVY, str(ROOT / "cli.py")))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=ENV).stdout
    line = next(line for line in out.splitlines() if line.startswith("HEAVY:"))
    return [m for m in line[len("HEAVY:"):].split(",") if m]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    for folder in ("costmodel", "calib"):
        compileall.compile_dir(ROOT / folder, quiet=1)
    compileall.compile_file(ROOT / "cli.py", quiet=1)
    for command in COMMANDS.values():  # one untimed run each: caches (the probe's) and bytecode written
        timed(command)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):
        for name, command in COMMANDS.items():
            times[name].append(timed(command))
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["python -c 'import numpy'"]
    targets = {"costmodel predict": 3.0, "costmodel --help": 2.0}
    for name, median in medians.items():
        ratio = median / base
        target = f" (target <= {targets[name]:g}x)" if name in targets else ""
        print(f"{name:<28} {median:6.3f} s  {ratio:4.2f}x numpy{target}")
    print(f"heavy modules imported by predict: {heavy_imports() or 'none'}")


if __name__ == "__main__":
    main()
