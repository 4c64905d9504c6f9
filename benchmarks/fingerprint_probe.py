"""What taking this machine's fingerprint costs (it runs on every `predict`), and how long the
probe for transfers takes (target: <= 3 s) and its cached reuse.

    python benchmarks/fingerprint_probe.py [--torch] [--threads 1 2]

Prints figures; asserts nothing. Run it on a quiet machine for figures to quote.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cold(code: str, runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", action="store_true", help="probe torch's products and call time too")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    import numpy  # noqa: F401  (predict imports both anyway: not the fingerprint's cost)
    import costmodel.machine.profile  # noqa: F401

    t0 = time.perf_counter()
    from costmodel.machine.fingerprint import take_fingerprint

    fp = take_fingerprint()
    first = time.perf_counter() - t0
    again = []
    for _ in range(20):
        t0 = time.perf_counter()
        take_fingerprint()
        again.append(time.perf_counter() - t0)
    print(f"fingerprint in a process with NumPy and costmodel.machine.profile loaded: first {1e3 * first:.1f} ms "
          "(imports threadpoolctl), "
          f"then median {1e3 * statistics.median(again):.2f} ms over 20")
    base = cold("import numpy")
    with_fp = cold("import numpy; from costmodel.machine.fingerprint import take_fingerprint; take_fingerprint()")
    with_cm = cold("import numpy, costmodel.machine.profile")
    with_both = cold("import numpy, costmodel.machine.profile; "
                     "from costmodel.machine.fingerprint import take_fingerprint; take_fingerprint()")
    print(f"cold process: import numpy {base:.3f} s, + fingerprint {with_fp:.3f} s "
          f"(+{1e3 * (with_fp - base):.0f} ms); numpy + costmodel.machine.profile {with_cm:.3f} s, "
          f"+ fingerprint {with_both:.3f} s (+{1e3 * (with_both - with_cm):.0f} ms); medians of 7")

    from calib.probe import cached_probe

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.json"
        t0 = time.perf_counter()
        result, fresh = cached_probe(args.threads, ("float32", "float64"), torch=args.torch, fingerprint=fp, path=path)
        wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, fresh_again = cached_probe(args.threads, ("float32", "float64"), torch=args.torch, fingerprint=fp,
                                      path=path)
        reuse = time.perf_counter() - t0
    print(f"probe (threads {args.threads}, float32 and float64{', torch' if args.torch else ''}): "
          f"{wall:.2f} s wall ({result.seconds:.2f} s inside probe(); target 3 s), taken now: {fresh}; "
          f"from the cache: {1e3 * reuse:.1f} ms, taken again: {fresh_again}")
    for p in result.products:
        print(f"  {p.backend:5} {p.dtype} {p.threads} thread(s) {p.shape:6} {p.flops_per_second / 1e9:7.1f} GFLOP/s")
    for lv in result.bandwidth:
        print(f"  {lv.level:6} {lv.working_set_bytes / 1024:9.0f} KiB {lv.bytes_per_second / 1e9:7.1f} GB/s")
    for backend, seconds in result.call_seconds.items():
        print(f"  one call of a tiny {backend} op: {1e9 * seconds:.0f} ns")


if __name__ == "__main__":
    main()
