"""`costmodel calibrate`: time the reference CNN's op kernels over the sweep, fit, write a profile.

Timing: every sweep network runs one untimed warm-up step, then `rounds` timed steps; the
networks of a chunk are visited in a new random order each round, so slow drift of the
machine (frequency, other load) spreads over all ops instead of biasing some. Garbage
collection is off while timing and BLAS threads are fixed with threadpoolctl. A sample is
the median over the rounds of one op of one network.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from costmodel.model.arch import Architecture
from costmodel.machine.features import ALL_FEATURES, feature_rows, features_of, simd_lanes

from calib.design import QUICK_LIMITS, SweepLimits, design
from calib.noise import relative_spread

IMPLS = ("index", "strided")
DTYPES = ("float32", "float64")
#: networks whose step takes less than this get an untimed step before each timed one
WARM_VISIT_SECONDS = 0.02


@dataclass(frozen=True)
class Plan:
    """What one calibration measures: the (dtype, impl) pairs and the sweep of each. With
    backend "torch" the one impl is "torch": PyTorch's op groups (costmodel.machine.fused)."""

    dtypes: tuple[str, ...]
    impls: tuple[str, ...]
    points: int  # sweep architectures per (dtype, impl)
    rounds: int = 3
    chunk: int = 8
    limits: SweepLimits = SweepLimits()
    seed: int = 0
    ceilings_seconds: float = 4.0
    backend: str = "numpy"

    @classmethod
    def make(cls, *, quick: bool, dtypes: Iterable[str] | None, impls: Iterable[str] | None,
             points: int | None = None, backend: str = "numpy") -> "Plan":
        full_points = 96
        if backend == "torch":
            # one entry (impl "torch"); twice the networks: PyTorch's kernels vary more with
            # the shapes than the reference's (measured: 96 networks gave a worst step error
            # of 20-22 % on the examples from one sweep to another, 192 gave 18 %), and its
            # sweep is three times quicker per network
            impls, full_points = ("torch",), 192
        if quick:
            return cls(tuple(dtypes or ("float32",)), tuple(impls or ("index",)),
                       points or 36, rounds=3, limits=QUICK_LIMITS, backend=backend)
        return cls(tuple(dtypes or DTYPES), tuple(impls or IMPLS), points or full_points, backend=backend)


def chunked_sweep(archs: list[Architecture], *, chunk: int, rounds: int, seed: int,
                  build: Callable[[int, Architecture], object],
                  run_round: Callable[[list[tuple[int, object]]], dict[int, dict[tuple, float]]],
                  progress: Callable[[int], None] | None = None) -> list[dict]:
    """The sweep's timing loop, shared by both backends: networks in chunks of `chunk`
    (`build(i, arch)` makes network i, warm); in each of `rounds` rounds a chunk's networks are
    visited in a new random order and `run_round(visits)` returns, per network, its seconds per
    (layer, op, phase); gc is off while timing. A sample is the median over the rounds, with
    the rounds' relative spread (calib.noise.relative_spread)."""
    rng = np.random.default_rng(seed)
    samples: list[dict] = []
    for first in range(0, len(archs), chunk):
        nets = [(i, build(i, arch)) for i, arch in enumerate(archs[first:first + chunk], start=first)]
        laps: dict[int, list[dict]] = {i: [] for i, _ in nets}
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for _ in range(rounds):
                for i, seconds in run_round([nets[j] for j in rng.permutation(len(nets))]).items():
                    laps[i].append(seconds)
        finally:
            if gc_was_enabled:
                gc.enable()
        for i, _ in nets:
            for layer, op, phase in laps[i][0]:
                rounds_seconds = [lap.get((layer, op, phase), 0.0) for lap in laps[i]]
                samples.append({"point": i, "layer": layer, "op": op, "phase": phase,
                                "seconds": float(np.median(rounds_seconds)),
                                "spread": relative_spread(rounds_seconds)})
            if progress:
                progress(1)
        del nets
        gc.collect()
    return samples


def time_sweep(archs: list[Architecture], impl: str, *, threads: int, rounds: int, chunk: int, seed: int,
               progress: Callable[[int], None] | None = None) -> list[dict]:
    """Samples {"point", "layer", "op", "phase", "seconds"} of every op of every sweep
    network (median over `rounds` steps)."""
    from calib.cnn import ReferenceCNN
    from calib.measure import synthetic_batch
    from calib.timer import OpTimer

    def build(i: int, arch: Architecture):
        cnn = ReferenceCNN(arch, impl=impl, seed=i, threads=threads)
        X, Y = synthetic_batch(arch, seed=i)
        start = [w.copy() for w in cnn.W + cnn.b + cnn.vW + cnn.vb]
        t0 = time.perf_counter()
        cnn.step(X, Y)  # warm-up: first touches of every buffer, lazily built index arrays
        # a small network's ops are dominated by per-call costs that depend on how warm the
        # caches are: each visit runs one untimed step first, as a training loop would
        small = time.perf_counter() - t0 < WARM_VISIT_SECONDS
        return cnn, X, Y, start, small

    def run_round(visits):
        out = {}
        for i, (cnn, X, Y, start, small) in visits:
            if small:
                cnn.step(X, Y)
            # every step starts from the same weights, so no sweep network diverges
            for w, w0 in zip(cnn.W + cnn.b + cnn.vW + cnn.vb, start):
                np.copyto(w, w0)
            timer = OpTimer()
            cnn.step(X, Y, timer)
            out[i] = {(k.layer, k.op, k.phase): sec for k, sec in timer.seconds().items()}
        return out

    return chunked_sweep(archs, chunk=chunk, rounds=rounds, seed=seed, build=build, run_round=run_round,
                         progress=progress)


def sample_features(archs: list[Architecture], samples: list[dict], impl: str, threads: int,
                    caches: dict, backend: str = "numpy", cpu_flags=()) -> tuple[np.ndarray, list[str]]:
    """The feature matrix (columns costmodel.machine.features.ALL_FEATURES) and the model key of every
    sample, in their order, from the symbolic cost model (costmodel.machine.predict.step_rows: the same rows and keys that predict uses)."""
    from costmodel.machine.predict import row_features, step_rows

    rows: dict[tuple, tuple[np.ndarray, str]] = {}
    for i, arch in enumerate(archs):
        table = step_rows(arch, impl, threads, backend, simd_lanes(cpu_flags, arch.itemsize))
        feats = feature_rows(row_features(table), caches, ALL_FEATURES)
        for r, f in zip(table, feats):
            rows[(i, r["layer"], r["op"], r["phase"])] = (f, r["model"])
    try:
        picked = [rows[(s["point"], s["layer"], s["op"], s["phase"])] for s in samples]
    except KeyError as exc:  # a measured op the cost model does not list: the two lists disagree
        raise RuntimeError(f"sweep network {exc.args[0][0]}: measured op {exc.args[0][1:]} is not in "
                           f"the {backend} step's op list") from None
    return np.array([f for f, _ in picked]), [k for _, k in picked]


def fit_entry(archs, samples, impl: str, threads: int, caches: dict, backend: str = "numpy",
              cpu_flags=()) -> dict:
    """Fit one (dtype, impl, threads, backend) entry: a model per op kind, over the backend's
    features (costmodel.machine.features.features_of)."""
    from calib.fit import fit_op

    X, keys = sample_features(archs, samples, impl, threads, caches, backend, cpu_flags)
    keys = np.array(keys)
    t = np.array([s["seconds"] for s in samples])
    groups = np.array([s["point"] for s in samples])
    ops = {}
    for key in sorted(set(keys)):
        sel = keys == key
        features = features_of(backend, key)
        columns = [ALL_FEATURES.index(f) for f in features]
        ops[key] = fit_op(X[sel][:, columns], t[sel], groups[sel], features=features).as_profile_entry()
    return ops


def calibrate(plan: Plan, *, threads: int | None = None, progress=None, log=None) -> dict:
    """Run the whole calibration and return the profile (a dict in costmodel.machine.profile's format)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from calib.machine import ceilings, fingerprint

    started = time.perf_counter()
    with threadpool_limits(limits=threads, user_api="blas"):
        used_threads = threads or max([i["num_threads"] for i in threadpool_info()
                                       if i.get("user_api") == "blas"] or [1])
        fp = fingerprint(used_threads)
        caches = fp["caches"]
        ceil = ceilings(dtype_list=plan.dtypes, threads=used_threads, budget_seconds=plan.ceilings_seconds)
        entries = []
        for dtype in plan.dtypes:
            archs = design(plan.points, dtype=dtype, seed=plan.seed, limits=plan.limits,
                           first_kernel=plan.backend == "torch")
            for impl in plan.impls:
                t0 = time.perf_counter()
                versions = {}
                if plan.backend == "torch":
                    from calib.backends.torch import import_torch, time_sweep_torch

                    versions["torch"] = import_torch().__version__
                    samples = time_sweep_torch(archs, threads=used_threads, rounds=plan.rounds,
                                               chunk=plan.chunk, seed=plan.seed, progress=progress)
                else:
                    samples = time_sweep(archs, impl, threads=used_threads, rounds=plan.rounds,
                                         chunk=plan.chunk, seed=plan.seed, progress=progress)
                ops = fit_entry(archs, samples, impl, used_threads, caches, plan.backend, fp["cpu_flags"])
                entries.append({"backend": plan.backend, "dtype": dtype, "impl": impl, "versions": versions,
                                "threads": used_threads, "ops": ops,
                                "sweep": {"points": plan.points, "rounds": plan.rounds,
                                          "samples": len(samples), "seed": plan.seed,
                                          "seconds": round(time.perf_counter() - t0, 2)}})
                if log:
                    log(f"{dtype}/{impl}: {len(samples)} samples from {plan.points} networks "
                        f"in {time.perf_counter() - t0:.1f} s")
    return {"fingerprint": fp, "ceilings": ceil, "entries": entries,
            "calibration_seconds": round(time.perf_counter() - started, 2)}


def to_profile(result: dict, merge_into: "Profile | None" = None) -> "Profile":
    """The calibration as a Profile; entries of `merge_into` made on the same machine for other
    settings are kept (calibrating 1 thread after 2 adds to the profile instead of replacing it)."""
    from datetime import datetime, timezone

    from costmodel.machine.profile import Profile

    entries = list(result["entries"])
    if merge_into is not None and merge_into.fingerprint.model_dump() == result["fingerprint"] | {}:
        fresh = {(e["dtype"], e["impl"], e["threads"], e["backend"]) for e in entries}
        entries = [e.model_dump() for e in merge_into.entries if e.key not in fresh] + entries
    return Profile(created=datetime.now(timezone.utc), fingerprint=result["fingerprint"],
                   ceilings=result["ceilings"], entries=entries,
                   calibration_seconds=result["calibration_seconds"])
