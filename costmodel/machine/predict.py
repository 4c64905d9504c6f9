"""Predicted per-op time of an SG step: the symbolic costs combined with a machine profile.

For every op of the step, its features (costmodel.machine.features) are evaluated from the symbolic
cost model and multiplied by the coefficients the profile fitted for that op kind, dtype,
implementation and thread count. The time composition is the sum of the terms (a per-call
overhead, compute time and memory time). The prediction interval of an op is its prediction
scaled by the 5 % and 95 % quantiles of measured/predicted that cross-validation found; the
step's interval sums the ops' bounds (no cancellation of errors assumed).
"""

from __future__ import annotations

import os

from costmodel.model.arch import Architecture
from costmodel.errors import CostModelError
from costmodel.machine.features import ALL_FEATURES, ROW_FEATURES, feature_rows, model_key, simd_lanes
from costmodel.model.ops import OP_KIND, op_regime, threaded_step
from costmodel.machine.profile import Profile, calibrate_command


def default_threads(profile: Profile, dtype: str, impl: str, backend: str = "numpy") -> int:
    """The thread count to predict for when none is given: this machine's core count if the
    profile has it, else the largest the profile has for (dtype, impl)."""
    have = sorted({e.threads for e in profile.entries
                   if (e.dtype, e.impl, e.backend) == (dtype, impl, backend)})
    cores = os.cpu_count() or 1
    if cores in have or not have:
        return cores
    return have[-1]


BACKENDS = ("numpy", "torch")


def step_rows(arch: Architecture, impl: str, threads: int, backend: str = "numpy", lanes: int = 1) -> list[dict]:
    """The rows whose times a profile models, for one step of `arch`: with the NumPy backend
    the contract's ops of `impl`, with the torch backend PyTorch's op groups
    (costmodel.machine.fused). Each row has layer, layer_type, op, phase, kind, flops, bytes and
    ``model``, the key of the op model that times it (model_key / group_model_key); a torch
    row also flops_lane_waste for a machine with `lanes` SIMD lanes (features.simd_lanes)."""
    from costmodel.model.evaluate import costs_report

    if backend == "numpy":
        threaded = threaded_step(arch, impl, threads)
        rows = costs_report(arch, impl)["ops"]
        for row in rows:
            row["kind"] = OP_KIND[row["op"]]
            row["model"] = model_key(row["op"], arch.loss,
                                     op_regime(row["op"], row["flops"], row["bytes"], threaded))
        return rows
    if backend != "torch":
        raise CostModelError(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    from costmodel.machine.fused import torch_rows

    return torch_rows(arch, lanes)


def row_features(rows: list[dict]) -> dict[str, list]:
    """The columns of step_rows that features.feature_rows reads: a row's FLOPs and bytes, or
    for PyTorch's "other" those of its scope (scope_flops, scope_bytes)."""
    out = {"flops": [r.get("scope_flops", r["flops"]) for r in rows],
           "bytes": [r.get("scope_bytes", r["bytes"]) for r in rows]}
    for name in ROW_FEATURES:
        if rows and name in rows[0]:
            out[name] = [r[name] for r in rows]
    return out


def predict(arch: Architecture, profile: Profile, *, impl: str = "index", threads: int | None = None,
            batch: int | None = None, backend: str = "numpy") -> dict:
    """The per-op prediction as DESIGN.md's JSON object (with `total_seconds`), each op with
    `seconds`, `fraction`, `seconds_low`/`seconds_high`, FLOPs, bytes and its kind.

    With backend "torch" the rows are PyTorch's op groups (costmodel.machine.fused) and `impl` is
    "torch"."""
    from costmodel.model.evaluate import conventions

    if backend == "torch":
        impl = "torch"
    arch = arch.with_batch(batch)
    threads = threads or default_threads(profile, arch.dtype, impl, backend)
    entry = profile.entry(arch.dtype, impl, threads, backend)
    ops = step_rows(arch, impl, threads, backend, simd_lanes(profile.fingerprint.cpu_flags, arch.itemsize))
    X = feature_rows(row_features(ops), profile.fingerprint.caches, ALL_FEATURES)
    for row, x in zip(ops, X):
        key = row.pop("model")
        model = entry.ops.get(key)
        if model is None:
            raise CostModelError(f"the profile's {entry.describe()} calibration has no model for "
                                 f"{'op' if backend == 'numpy' else 'op group'} {key!r}: "
                                 f"run `{calibrate_command(arch.dtype, impl, threads, backend)}` again")
        unknown = [f for f in model.features if f not in ALL_FEATURES]
        if unknown:
            raise CostModelError(f"the profile's {entry.describe()} model of {key!r} uses feature "
                                 f"{unknown[0]!r}, which this costmodel does not know: upgrade costmodel "
                                 "or calibrate again")
        seconds = sum(c * x[ALL_FEATURES.index(f)] for f, c in zip(model.features, model.coef))
        lo, hi = model.interval
        row.update(seconds=seconds, seconds_low=seconds * lo, seconds_high=seconds * hi, cv_error=model.cv_error)
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
        **conventions(),
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
        name = row[by] if by != "kind" else row.get("kind") or OP_KIND[row["op"]]
        g = groups.setdefault(name, {by: name, "ops": 0, "seconds": 0.0, "flops": 0, "bytes": 0,
                                     "seconds_low": 0.0, "seconds_high": 0.0})
        g["ops"] += 1
        for k in ("seconds", "flops", "bytes", "seconds_low", "seconds_high"):
            if row.get(k) is not None:
                g[k] += row[k]
    for g in groups.values():
        g["fraction"] = g["seconds"] / total if total else 0.0
    return list(groups.values())
