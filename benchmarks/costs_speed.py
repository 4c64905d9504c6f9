"""How fast the symbolic cost model answers (prints measured figures; asserts nothing).

(a) the wall time of cold processes: the interpreter alone, ``import sympy``,
    ``import pandas``, and costing an example through costmodel.model.evaluate (target for the whole
    ``costmodel costs`` process: <= 1 s); (b) variants costed per second through costs_many
    (target >= 10,000/s), over mini-batch sizes and over a layer's filters.

Usage: python benchmarks/costs_speed.py [examples/cifar10-layer7.yaml]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
REPEATS = 5


def cold(code: str) -> float:
    """Median wall time of a fresh interpreter running `code`."""
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def per_second(fn, count: int) -> float:
    fn()  # warm: lambdified functions cached
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def main() -> None:
    example = sys.argv[1] if len(sys.argv) > 1 else "examples/cifar10-layer7.yaml"
    cost_it = ("import costmodel, costmodel.model.evaluate as e; "
               f"e.costs_report(costmodel.load_arch({example!r}), 'index')")
    base = cold("pass")
    print(f"(a) cold processes, median of {REPEATS} (python {sys.version.split()[0]})")
    print(f"    interpreter alone                    {base:6.3f} s")
    for label, code in [("import sympy", "import sympy"), ("import pandas", "import pandas"),
                        ("import costmodel", "import costmodel"),
                        ("import costmodel.model.evaluate", "import costmodel.model.evaluate"),
                        (f"cost {Path(example).name} (report)", cost_it)]:
        t = cold(code)
        print(f"    {label:36s} {t:6.3f} s  ({t - base:+.3f} s over the interpreter)")

    from costmodel import load_arch
    from costmodel.model.evaluate import costs_many

    arch = load_arch(ROOT / example)
    batch = np.arange(1, 10_001)
    filters = list(range(1, 201))
    print("(b) costs_many, warm")
    rate = per_second(lambda: costs_many(arch, "index", batch=batch), len(batch))
    print(f"    batch = 1..10000                     {rate:10,.0f} variants/s")
    rate = per_second(lambda: costs_many(arch, "index", **{"layers[0].filters": filters}),
                      len(filters))
    print(f"    layers[0].filters = 1..200           {rate:10,.0f} variants/s "
          "(each one a validated Architecture)")
    rate = per_second(lambda: costs_many(arch, "index", batch=batch[:100],
                                         **{"layers[0].filters": filters}),
                      100 * len(filters))
    print(f"    filters 1..200 x batch 1..100        {rate:10,.0f} variants/s")


if __name__ == "__main__":
    main()
