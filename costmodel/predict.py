"""Predicted per-op time of an SG step: the symbolic costs combined with a machine profile.

For every op of the step, its features (costmodel.features) are evaluated from the symbolic
cost model and multiplied by the coefficients the profile fitted for that op kind, dtype,
implementation and thread count. The time composition is the sum of the terms (a per-call
overhead, compute time and memory time). The prediction interval of an op is its prediction
scaled by the 5 % and 95 % quantiles of measured/predicted that cross-validation found; the
step's interval sums the ops' bounds (no cancellation of errors assumed).
"""

from __future__ import annotations

import os

from .arch import Architecture
from .errors import CostModelError
from .features import FEATURES, feature_rows, model_key
from .ops import OP_KIND, op_regime, threaded_step
from .profile import Profile


def default_threads(profile: Profile, dtype: str, impl: str, backend: str = "numpy") -> int:
    """The thread count to predict for when none is given: this machine's core count if the
    profile has it, else the largest the profile has for (dtype, impl)."""
    have = sorted({e.threads for e in profile.entries
                   if (e.dtype, e.impl, e.backend) == (dtype, impl, backend)})
    cores = os.cpu_count() or 1
    if cores in have or not have:
        return cores
    return have[-1]


def predict(arch: Architecture, profile: Profile, *, impl: str = "index", threads: int | None = None,
            batch: int | None = None, backend: str = "numpy") -> dict:
    """The per-op prediction as DESIGN.md's JSON object (with `total_seconds`), each op with
    `seconds`, `fraction`, `seconds_low`/`seconds_high`, FLOPs, bytes and its kind."""
    from .evaluate import costs_report

    arch = arch.with_batch(batch)
    threads = threads or default_threads(profile, arch.dtype, impl, backend)
    entry = profile.entry(arch.dtype, impl, threads, backend)
    report = costs_report(arch, impl)
    ops = report["ops"]
    X = feature_rows({"flops": [o["flops"] for o in ops], "bytes": [o["bytes"] for o in ops]},
                     profile.fingerprint.caches)
    threaded = threaded_step(arch, impl, threads)
    for row, x in zip(ops, X):
        key = model_key(row["op"], arch.loss, op_regime(row["op"], row["flops"], row["bytes"], threaded))
        model = entry.ops.get(key)
        if model is None:
            raise CostModelError(f"the profile's {entry.describe()} calibration has no model for op "
                                 f"{key!r}: run `costmodel calibrate --dtype {arch.dtype} --impl {impl} "
                                 f"--threads {threads}` again")
        seconds = sum(c * x[FEATURES.index(f)] for f, c in zip(model.features, model.coef))
        lo, hi = model.interval
        row.update(kind=OP_KIND[row["op"]], seconds=seconds, seconds_low=seconds * lo,
                   seconds_high=seconds * hi, cv_error=model.cv_error)
    total = sum(o["seconds"] for o in ops)
    for row in ops:
        row["fraction"] = row["seconds"] / total if total > 0 else 0.0
    return {
        "arch": arch.name, "batch": arch.batch, "dtype": arch.dtype, "threads": threads, "impl": impl,
        "backend": backend,
        "total_seconds": total,
        "total_seconds_low": sum(o["seconds_low"] for o in ops),
        "total_seconds_high": sum(o["seconds_high"] for o in ops),
        "profile": {"cpu_model": profile.fingerprint.cpu_model, "created": profile.created.isoformat()},
        "flop_convention": report["flop_convention"], "byte_convention": report["byte_convention"],
        "ops": ops,
    }


def group(result: dict, by: str) -> list[dict]:
    """Sum the ops of a prediction (or measurement) by 'layer', 'phase' or 'kind'; 'op' keeps them."""
    if by == "op":
        return result["ops"]
    if by not in ("layer", "phase", "kind"):
        raise CostModelError(f"--by: {by!r} is not one of op, layer, phase, kind")
    total = result.get("total_seconds") or 0.0
    groups: dict = {}
    for row in result["ops"]:
        name = row[by] if by != "kind" else OP_KIND[row["op"]]
        g = groups.setdefault(name, {by: name, "ops": 0, "seconds": 0.0, "flops": 0, "bytes": 0,
                                     "seconds_low": 0.0, "seconds_high": 0.0})
        g["ops"] += 1
        for k in ("seconds", "flops", "bytes", "seconds_low", "seconds_high"):
            if row.get(k) is not None:
                g[k] += row[k]
    for g in groups.values():
        g["fraction"] = g["seconds"] / total if total else 0.0
    return list(groups.values())
