"""Wall time of `costmodel calibrate` as a whole process on this machine (targets: full <= 180 s,
--quick <= 30 s), each writing to a temporary profile, and the CV errors it stored.

    python benchmarks/calibration_time.py [--threads 2]
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from costmodel.machine.profile import load_profile  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--threads", type=int, default=2)
args = parser.parse_args()

with tempfile.TemporaryDirectory() as tmp:
    for label, extra, target in (("quick", ["--quick"], 30), ("full", [], 180)):
        out = Path(tmp) / f"{label}.json"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "cli.py"), "calibrate", *extra, "--threads",
                        str(args.threads), "-o", str(out)], check=True, capture_output=True)
        seconds = time.perf_counter() - t0
        profile = load_profile(out)
        print(f"calibrate {label:5s}: {seconds:6.1f} s (target {target} s), entries: "
              + ", ".join(e.describe() for e in profile.entries))
        for entry in profile.entries:
            errors = sorted((m.cv_error, key) for key, m in entry.ops.items())
            median = errors[len(errors) // 2][0]
            print(f"  {entry.describe()}: CV error per op kind median {100 * median:.0f} %, "
                  f"largest {100 * errors[-1][0]:.0f} % ({errors[-1][1]})")
