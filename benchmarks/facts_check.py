"""Are a profile's facts physical? Every fitted rate beside the ceiling it was fitted under: the
FLOP rate of each model against its peak, the effective byte rate of each level against that
level's bandwidth; the largest shares and any rate above its ceiling.

    python benchmarks/facts_check.py PROFILE.json [--all]

Prints figures; exits 1 when a rate is above its ceiling.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from calib.fit import LEVEL_FEATURES, over_ceiling  # noqa: E402
from costmodel.machine.profile import load_profile  # noqa: E402


def shares(model) -> dict[str, tuple[float, float]]:
    """name -> (rate, ceiling) of a model's FLOP rate and effective byte rate per level."""
    coef = dict(zip(model.features, model.coef))
    c = model.ceiling
    out = {}
    if c.flops_per_second and coef.get("flops", 0) > 0:
        out["flops"] = (1 / coef["flops"], c.flops_per_second)
    for level, bw in c.bytes_per_second.items():
        terms = [f for f in LEVEL_FEATURES[level] if f in coef]
        cost = sum(coef[f] for f in terms)
        if terms and terms[-1] == LEVEL_FEATURES[level][-1] and cost > 0:
            out[f"bytes {level}"] = (1 / cost, bw)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--all", action="store_true", help="print every model's shares")
    args = parser.parse_args()
    profile = load_profile(args.profile)
    bad = unbounded = 0
    for entry in profile.entries:
        rows = []
        for key, model in sorted(entry.ops.items()):
            if model.ceiling is None:
                unbounded += 1
                continue
            for name, (rate, roof) in shares(model).items():
                rows.append((rate / roof, key, name, rate, roof))
            for violation in over_ceiling(model):
                bad += 1
                print(f"ABOVE CEILING: {entry.describe()} {key}: {violation}")
        rows.sort(reverse=True)
        print(f"{entry.describe()}: {len(rows)} rates with a ceiling; the largest shares:")
        for share, key, name, rate, roof in rows if args.all else rows[:5]:
            unit = "FLOP/s" if name == "flops" else "B/s"
            print(f"  {key:32} {name:13} {rate / 1e9:9.2f} G{unit} = {100 * share:5.1f} % of {roof / 1e9:.2f} G{unit}")
    for p in profile.ceilings.peaks:
        print(f"peak: {p.backend} {p.dtype} {p.threads} thread(s): {p.flops_per_second / 1e9:.1f} GFLOP/s")
    print(f"{bad} rate(s) above their ceiling; {unbounded} model(s) without a ceiling (PyTorch's 'other' "
          "or a profile fitted before ceilings)")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
