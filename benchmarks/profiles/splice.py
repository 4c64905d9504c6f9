"""Replace one backend's part of a profile by another calibration's, keeping the rest.

    python benchmarks/profiles/splice.py BASE NEW --backend torch -o OUT

Takes from NEW, for `--backend`: its entries, its peaks (ceilings.peaks of that backend) and
its probe's products and call time of that backend; keeps everything else of BASE (the other
backend's entries, the bandwidth and the probe's bandwidth levels, which the other backend's
transfers are rescaled by). Both must be profiles of the same machine (equal fingerprints).

Why: the shipped profile (costmodel/data/reference_profile.json) is made by `costmodel
calibrate` once per backend and merged; when only one backend's models change, its part is
recalibrated without moving the other's transfer ratios (the probe's bandwidth drifts over
hours on the development VM: three probes of it read L2 at 179, 207 and 217 GB/s). Prints
what it replaced; writes OUT atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))


def splice(base, new, backend: str):
    """The Profile `base` with `backend`'s entries, peaks and probe products and call time from `new`."""
    from costmodel.errors import UsageError

    if base.fingerprint != new.fingerprint:
        raise UsageError("the two profiles are of different machines (their fingerprints differ)")
    if not any(e.backend == backend for e in new.entries):
        raise UsageError(f"the new profile has no {backend} entry")
    entries = [e for e in base.entries if e.backend != backend] + [e for e in new.entries if e.backend == backend]
    peaks = ([p for p in base.ceilings.peaks if p.backend != backend]
             + [p for p in new.ceilings.peaks if p.backend == backend])
    probe = base.probe
    if probe is not None and new.probe is not None:
        products = ([p for p in probe.products if p.backend != backend]
                    + [p for p in new.probe.products if p.backend == backend])
        calls = dict(probe.call_seconds)
        if backend in new.probe.call_seconds:
            calls[backend] = new.probe.call_seconds[backend]
        probe = probe.model_copy(update={"products": products, "call_seconds": calls})
    ceilings = base.ceilings.model_copy(update={"peaks": peaks})
    return base.model_copy(update={"entries": entries, "ceilings": ceilings, "probe": probe})


def main() -> int:
    from costmodel.errors import CostModelError
    from costmodel.machine.profile import load_profile, save_profile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("new")
    parser.add_argument("--backend", required=True, choices=("numpy", "torch"))
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    from costmodel.machine.profile import check_profile_output

    try:
        check_profile_output(Path(args.output))  # a profile or a new file, in a folder that exists
        base, new = load_profile(args.base), load_profile(args.new)
        out = splice(base, new, args.backend)
        save_profile(out, args.output, make_parents=False)
    except CostModelError as exc:
        print(f"splice: {exc}", file=sys.stderr)
        return 2
    for e in out.entries:
        print(f"{e.describe()}: {'from ' + args.new if e.backend == args.backend else 'kept'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
