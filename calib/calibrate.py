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
    probe_seconds: float = 2.5  # calib.probe, stored in the profile for transfers (0: no probe)

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
        # the peaks at one and at N threads bound the fit: a longer budget reaches the larger,
        # faster products
        return cls(tuple(dtypes or DTYPES), tuple(impls or IMPLS), points or full_points, backend=backend,
                   ceilings_seconds=6.0)


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
              cpu_flags=(), ceilings: dict | None = None) -> dict:
    """Fit one (dtype, impl, threads, backend) entry: a model per op kind, over the backend's
    features (costmodel.machine.features.features_of), each within its ceiling
    (calib.fit.ceiling_of) from the measured `ceilings` (calib.machine.ceilings; None: only
    non-negative)."""
    from calib.fit import ceiling_of, fit_op
    from calib.machine import level_bandwidth

    X, keys = sample_features(archs, samples, impl, threads, caches, backend, cpu_flags)
    keys = np.array(keys)
    t = np.array([s["seconds"] for s in samples])
    groups = np.array([s["point"] for s in samples])
    if ceilings is not None:
        peaks = {(p["backend"], p["dtype"], p["threads"]): p["flops_per_second"] for p in ceilings.get("peaks", [])}
        levels = level_bandwidth(ceilings["bandwidth"], caches)
    ops = {}
    for key in sorted(set(keys)):
        sel = keys == key
        features = features_of(backend, key)
        columns = [ALL_FEATURES.index(f) for f in features]
        ceiling = None if ceilings is None else ceiling_of(key, backend=backend, impl=impl, threads=threads,
                                                           peaks=peaks, dtype=archs[0].dtype, levels=levels)
        ops[key] = fit_op(X[sel][:, columns], t[sel], groups[sel], features=features,
                          ceiling=ceiling).as_profile_entry()
    return ops


def calibrate(plan: Plan, *, threads: int | None = None, progress=None, log=None) -> dict:
    """Run the whole calibration and return the profile (a dict in costmodel.machine.profile's
    format): the fingerprint, the ceilings (which bound the fit), the probe of this machine
    (for transfers), and the entries, each with the load on the machine while the calibration
    ran (calib.noise: other processes' CPU time, steal, the spread of the sweep's rounds);
    ``load`` is that record, its ``disturbed`` the verdict."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from calib.machine import ceilings, fingerprint
    from calib.noise import LoadMonitor

    started = time.perf_counter()
    torch = plan.backend == "torch"
    with LoadMonitor() as monitor, threadpool_limits(limits=threads, user_api="blas"):
        used_threads = threads or max([i["num_threads"] for i in threadpool_info()
                                       if i.get("user_api") == "blas"] or [1])
        fp = fingerprint(used_threads)
        caches = fp["caches"]
        ceil = ceilings(dtype_list=plan.dtypes, threads=used_threads, budget_seconds=plan.ceilings_seconds,
                        torch=torch)
        probed = None
        if plan.probe_seconds > 0:
            from calib.probe import probe

            # the products at one thread too when a threaded step has :serial products
            probe_threads = {used_threads} | ({1} if "strided" in plan.impls and used_threads > 1 else set())
            probed = probe(probe_threads, plan.dtypes, torch=torch, caches=caches,
                           budget_seconds=plan.probe_seconds).model_dump()
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
                monitor.add_spreads([s.get("spread", 0.0) for s in samples], [s["seconds"] for s in samples])
                ops = fit_entry(archs, samples, impl, used_threads, caches, plan.backend, fp["cpu_flags"], ceil)
                entries.append({"backend": plan.backend, "dtype": dtype, "impl": impl, "versions": versions,
                                "threads": used_threads, "ops": ops,
                                "sweep": {"points": plan.points, "rounds": plan.rounds,
                                          "samples": len(samples), "seed": plan.seed,
                                          "seconds": round(time.perf_counter() - t0, 2)}})
                if log:
                    log(f"{dtype}/{impl}: {len(samples)} samples from {plan.points} networks "
                        f"in {time.perf_counter() - t0:.1f} s")
    load = monitor.load.as_dict()
    for entry in entries:
        entry["load"] = load
    return {"fingerprint": fp, "ceilings": ceil, "entries": entries, "probe": probed, "load": load,
            "calibration_seconds": round(time.perf_counter() - started, 2)}


def _merge_probes(old, new: dict | None) -> dict | None:
    """The new probe, with the old one's products at thread counts, dtypes or backends it lacks."""
    if old is None or new is None:
        return new
    old = old.model_dump() if hasattr(old, "model_dump") else old
    have = {(p["backend"], p["dtype"], p["threads"], p["shape"]) for p in new["products"]}
    kept = [p for p in old["products"] if (p["backend"], p["dtype"], p["threads"], p["shape"]) not in have]
    return {**new, "products": kept + new["products"],
            "call_seconds": {**old["call_seconds"], **new["call_seconds"]}}


def to_profile(result: dict, merge_into: "Profile | None" = None, accept_noisy: bool = False) -> "Profile":
    """The calibration as a Profile; entries of `merge_into` made on the same machine for other
    settings are kept (calibrating 1 thread after 2 adds to the profile instead of replacing it),
    and so are the products of its probe that the new probe lacks. With `accept_noisy`, the new
    entries of a disturbed calibration are marked ``accepted_noisy`` (the caller decides whether
    a disturbed calibration is written at all: calib.commands.calibrate_command)."""
    from datetime import datetime, timezone

    from costmodel.machine.profile import Profile

    disturbed = bool(result.get("load", {}) and result["load"]["disturbed"])
    entries = [{**e, "accepted_noisy": disturbed and accept_noisy} for e in result["entries"]]
    probe = result.get("probe")
    if merge_into is not None and merge_into.fingerprint.model_dump() == result["fingerprint"] | {}:
        fresh = {(e["dtype"], e["impl"], e["threads"], e["backend"]) for e in entries}
        entries = [e.model_dump() for e in merge_into.entries if e.key not in fresh] + entries
        probe = _merge_probes(merge_into.probe, probe)
    return Profile(created=datetime.now(timezone.utc), fingerprint=result["fingerprint"],
                   ceilings=result["ceilings"], entries=entries, probe=probe,
                   calibration_seconds=result["calibration_seconds"])
