"""Print this machine's fingerprint and its measured ceilings (peak matmul FLOP/s, bandwidth
by working set), rendered as `costmodel profile show` renders a profile.

    python benchmarks/ceilings.py [--threads N] [--budget SECONDS] [--format table|json|csv]
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone

from calib.machine import ceilings, fingerprint
from costmodel.machine.profile import Profile
from costmodel.present.profile_text import render_profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads (default: as is)")
    parser.add_argument("--budget", type=float, default=5.0, help="seconds to spend measuring")
    parser.add_argument("--format", default="table", choices=("table", "json"))
    args = parser.parse_args()

    start = time.perf_counter()
    profile = Profile(created=datetime.now(timezone.utc), fingerprint=fingerprint(args.threads),
                      ceilings=ceilings(threads=args.threads, budget_seconds=args.budget))
    print(render_profile(profile, args.format), end="")
    if args.format == "table":
        print(f"\nmeasured in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
