"""A profile on another machine, emulated on this one: predictions with the profile as it is and
transferred by the probe (costmodel.machine.transfer), against measured steps.

Emulations: OpenBLAS's kernels of another CPU (OPENBLAS_CORETYPE=SandyBridge, Nehalem) and one
core (taskset -c 0, 1 thread). Each runs in its own process: it takes this machine's
fingerprint, names the differences from the profile's machine, probes (calib.probe, into a
temporary cache), transfers the profile, then measures and predicts every example and the
varied architectures of benchmarks/archs/.

Targets (issue 11): with the transfer, step-time error median <= 15 %, worst <= 30 %.

    python benchmarks/portability.py --profile FILE [--impl index] [--steps 3] [--threads 2]
                                     [--emulate native SandyBridge Nehalem taskset] [--verbose]

The profile must hold a probe (made by `costmodel calibrate` since issue 11). Without entries at
the emulation's thread count (`taskset`: 1) its entries at more threads are rescaled first, as
`predict` does (costmodel.machine.transfer.fewer_threads). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ARCHS = sorted((ROOT / "examples").glob("*.yaml")) + sorted((ROOT / "benchmarks" / "archs").glob("*.yaml"))
EMULATIONS = {"native": ({}, []), "SandyBridge": ({"OPENBLAS_CORETYPE": "SandyBridge"}, []),
              "Nehalem": ({"OPENBLAS_CORETYPE": "Nehalem"}, []), "taskset": ({}, ["taskset", "-c", "0"])}


def child(args) -> None:
    """One emulation, in this process: print one JSON object."""
    from calib.measure import measure
    from calib.probe import cached_probe
    from costmodel.machine.fingerprint import take_fingerprint
    from costmodel.machine.predict import predict
    from costmodel.machine.profile import load_profile
    from costmodel.machine.provenance import compare_machines, describe_differences
    from costmodel.machine.transfer import fewer_threads, probe_needs, transfer
    from costmodel.model.arch import load_arch

    profile = load_profile(args.profile)
    if not any((e.impl, e.threads, e.backend) == (args.impl, args.threads, "numpy") for e in profile.entries):
        profile = fewer_threads(profile, args.threads)  # as `predict` does on a machine with fewer cores
    profile = profile.model_copy(update={"entries": [e for e in profile.entries if e.threads == args.threads]})
    here = take_fingerprint(args.threads)
    needs = probe_needs(profile)
    with tempfile.TemporaryDirectory() as tmp:
        probed, _ = cached_probe(needs["threads"], needs["dtypes"], fingerprint=here, path=Path(tmp) / "probe.json")
    moved = transfer(profile, probed, here)
    rows = []
    for path in ARCHS:
        arch = load_arch(path)
        if (arch.dtype, args.impl, args.threads, "numpy") not in {e.key for e in profile.entries}:
            continue  # the profile has no entry for it
        measured = measure(arch, steps=args.steps, warmup=1, threads=args.threads, impl=args.impl)
        as_is = predict(arch, profile, impl=args.impl, threads=args.threads).total_seconds
        moved_s = predict(arch, moved, impl=args.impl, threads=args.threads).total_seconds
        rows.append({"arch": path.stem, "measured": measured["step_seconds"], "as_is": as_is, "transferred": moved_s,
                     "disturbed": measured["load"]["disturbed"]})
    print(json.dumps({"differences": describe_differences(compare_machines(profile.fingerprint, here, args.threads)),
                      "probe_seconds": probed.seconds, "rows": rows}))


def summary(rows: list[dict], key: str) -> tuple[float, float, str]:
    errors = [(100 * (r[key] / r["measured"] - 1), r["arch"]) for r in rows]
    worst = max(errors, key=lambda e: abs(e[0]))
    return statistics.median(abs(e) for e, _ in errors), worst[0], worst[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, required=True)
    parser.add_argument("--impl", default="index", choices=("index", "strided"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--emulate", nargs="+", default=list(EMULATIONS), choices=list(EMULATIONS))
    parser.add_argument("--verbose", action="store_true", help="also print every architecture's figures")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    for name in args.emulate:
        env, prefix = EMULATIONS[name]
        if prefix and not shutil.which(prefix[0]):
            print(f"{name}: skipped ({prefix[0]} not found)")
            continue
        threads = 1 if name == "taskset" else args.threads
        cmd = [*prefix, sys.executable, __file__, "--child", "--profile", str(args.profile), "--impl", args.impl,
               "--steps", str(args.steps), "--threads", str(threads)]
        out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{name}: failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
            continue
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rows = result["rows"]
        if not rows:
            print(f"{name}: the profile has no entry for impl {args.impl} with {threads} thread(s)")
            continue
        med0, worst0, at0 = summary(rows, "as_is")
        med1, worst1, at1 = summary(rows, "transferred")
        noisy = sum(r["disturbed"] for r in rows)
        print(f"{name} ({threads} thread(s), impl {args.impl}): {result['differences'] or 'no difference'}")
        print(f"  profile as is: median {med0:.1f} %, worst {worst0:+.1f} % ({at0}); transferred (probe "
              f"{result['probe_seconds']:.1f} s): median {med1:.1f} %, worst {worst1:+.1f} % ({at1}); "
              f"{len(rows)} architectures, {noisy} measured on a disturbed machine")
        if args.verbose:
            for r in sorted(rows, key=lambda r: -abs(r["transferred"] / r["measured"] - 1)):
                print(f"    {r['arch']:<24} measured {1e3 * r['measured']:9.3f} ms  as is {100 * (r['as_is'] / r['measured'] - 1):+7.1f} %"
                      f"  transferred {100 * (r['transferred'] / r['measured'] - 1):+7.1f} %{'  (disturbed)' if r['disturbed'] else ''}")


if __name__ == "__main__":
    main()
