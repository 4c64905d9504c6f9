"""`costmodel calibrate`: time the reference CNN's op kernels over the sweep, fit, write a profile.

Timing: every sweep network runs one untimed warm-up step, then `rounds` timed steps; the
networks of a chunk are visited in a new random order each round, so slow drift of the
machine (frequency, other load) spreads over all ops instead of biasing some. Garbage
collection is off while timing and BLAS threads are fixed with threadpoolctl. A sample is
the median over the rounds of one op of one network.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

import numpy as np

from costmodel.machine.backends import backend as get_backend
from costmodel.machine.timemodel import Machine, design_matrix
from costmodel.model.arch import Architecture

from calib.backends import machine_backend

from calib.design import QUICK_LIMITS, SweepLimits, design

if TYPE_CHECKING:
    from costmodel.machine.profile import Profile

IMPLS = ("index", "strided")
DTYPES = ("float32", "float64")
#: coverage points (calib.design._coverage_points) of a full plan and of a quick one of the
#: strided implementation or PyTorch. In a quick plan they are what its threaded and rarer
#: kernels are fitted on at all; in a full one the threaded tanh, sigmoid, grouped products,
#: residual addition and global average pooling had 3-6 samples for 5 coefficients, and 6
#: points give them 5-10 (2026-12-01)
COVERAGE_POINTS = 6


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
    coverage_points: int = 0  # the last of the points (calib.design._coverage_points)

    def sweep(self, dtype: str) -> list[Architecture]:
        """The sweep's networks in `dtype` (calib.design.design). With the strided
        implementation, points // 6 of them are pooling points (16 of 96): it shares a pooling
        among its threads only from SPLIT_BYTES on, which the drawn points reached 3-8 times per
        pooling variant in a 96-network sweep; the threaded overlapping pooling's gradient,
        fitted on 3 samples, predicted AlexNet's first one (34 MB) at 3.2 ms against 21 ms
        measured (2026-12-01). The index implementation and PyTorch have no such regime. The
        last `coverage_points` are coverage points (COVERAGE_POINTS), and the pooling points are
        (points - coverage_points) // 6 of the others."""
        return design(self.points, dtype=dtype, seed=self.seed, limits=self.limits,
                      first_kernel=self.backend == "torch",
                      pool_points=(self.points - self.coverage_points) // 6 if "strided" in self.impls else 0,
                      coverage_points=self.coverage_points)

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
            impls = tuple(impls or ("index",))
            # the strided implementation's threaded regime and PyTorch's rarer kernels need
            # points larger than the quick limits draw: COVERAGE_POINTS, beside 36 drawn
            coverage = COVERAGE_POINTS if backend == "torch" or "strided" in impls else 0
            return cls(tuple(dtypes or ("float32",)), impls, points or 36 + coverage, rounds=3,
                       limits=QUICK_LIMITS, backend=backend, coverage_points=coverage)
        # the peaks at one and at N threads bound the fit: a longer budget reaches the larger,
        # faster products. The coverage points come after the drawn and pooling points
        return cls(tuple(dtypes or DTYPES), tuple(impls or IMPLS), points or full_points + COVERAGE_POINTS,
                   backend=backend, ceilings_seconds=6.0, coverage_points=COVERAGE_POINTS)


def sample_rows(archs: list[Architecture], samples: list[dict], impl: str, threads: int, machine: Machine,
                backend: str = "numpy") -> list:
    """The row (costmodel.machine.backends.Row) of every sample, in their order: the same rows,
    keys and features that predict uses."""
    be = get_backend(backend)
    rows: dict[tuple, object] = {}
    for i, arch in enumerate(archs):
        for r in be.rows(arch, impl, threads, machine):
            rows[(i, r.layer, r.name, r.phase)] = r
    try:
        return [rows[(s["point"], s["layer"], s["op"], s["phase"])] for s in samples]
    except KeyError as exc:  # a measured op the cost model does not list: the two lists disagree
        raise RuntimeError(f"sweep network {exc.args[0][0]}: measured op {exc.args[0][1:]} is not in "
                           f"the {backend} step's op list") from None


def fit_entry(archs, samples, impl: str, threads: int, machine: Machine, backend: str = "numpy",
              ceilings: dict | None = None) -> dict:
    """Fit one (dtype, impl, threads, backend) entry: a model per model key, over the backend's
    features (costmodel.machine.timemodel), each within its ceiling (calib.fit.ceiling_of) from
    the measured `ceilings` (calib.machine.ceilings; None: only non-negative); and the step's
    interval from the cross-validated predictions of every network's samples (calib.fit.step_interval).
    Returns the entry's fields: {"ops": {key: model}, "step_interval", "step_cv_error", "step_networks",
    "step_intervals_by_size"}."""
    from .fit import ceiling_of, fit_op, flops_at_peak, step_interval
    from .machine import level_bandwidth

    be = get_backend(backend)
    rows = sample_rows(archs, samples, impl, threads, machine, backend)
    t = np.array([s["seconds"] for s in samples])
    groups = np.array([s["point"] for s in samples])
    if ceilings is not None:
        peaks = {(p["backend"], p["dtype"], p["threads"]): p["flops_per_second"] for p in ceilings.get("peaks", [])}
        levels = level_bandwidth(ceilings["bandwidth"], machine.caches)
    by_key: dict = {}
    for i, row in enumerate(rows):
        by_key.setdefault(row.model, []).append(i)
    ops = {}
    cv = np.empty(len(t))
    for key in sorted(by_key):
        sel = np.array(by_key[key])
        features = be.features(key, impl)
        X = design_matrix([rows[i] for i in sel], machine, features)
        ceiling = None if ceilings is None else ceiling_of(str(key), backend=backend, impl=impl, threads=threads,
                                                           peaks=peaks, dtype=archs[0].dtype, levels=levels)
        result = fit_op(X, t[sel], groups[sel], features=features, ceiling=ceiling,
                        pin_flops=flops_at_peak(str(key), backend))
        ops[str(key)] = result.as_profile_entry()
        cv[sel] = result.cv_predictions
    return {"ops": ops, **step_interval(t, cv, groups)}


def calibrate(plan: Plan, *, threads: int | None = None, progress=None, log=None) -> dict:
    """Run the whole calibration and return the profile (a dict in costmodel.machine.profile's
    format): the fingerprint, the ceilings (which bound the fit), the probe of this machine
    (for transfers), and the entries, each with the load on the machine while the calibration
    ran (calib.noise: other processes' CPU time, steal, the spread of the sweep's rounds);
    ``load`` is that record, its ``disturbed`` the verdict, which also judges each sweep's
    own share of other load (calib.noise.worst_of)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from calib.allocator import warm_heap
    from calib.machine import ceilings, fingerprint
    from calib.noise import LoadMonitor, handoff_seconds, worst_of

    warm_heap()  # the allocator's state of every measured step (calib.allocator)
    started = time.perf_counter()
    torch = plan.backend == "torch"
    with LoadMonitor(handoff=handoff_seconds) as monitor, threadpool_limits(limits=threads, user_api="blas"):
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
        sweep_loads = {}
        for dtype in plan.dtypes:
            archs = plan.sweep(dtype)
            for impl in plan.impls:
                t0 = time.perf_counter()
                versions = {}
                timing = machine_backend(plan.backend)
                versions.update(timing.versions())
                # a short sweep's burst of load is not averaged away; the monitor samples the cores'
                # hand-off, then settles the last sweep's or ceiling's spinning BLAS threads
                with LoadMonitor(handoff=handoff_seconds) as sweep_monitor:
                    samples = timing.time_sweep(archs, impl, threads=used_threads, rounds=plan.rounds,
                                                chunk=plan.chunk, seed=plan.seed, progress=progress)
                sweep_loads[f"{dtype}/{impl}"] = sweep_monitor.load
                monitor.add_spreads([s.get("spread", 0.0) for s in samples], [s["seconds"] for s in samples])
                fitted = fit_entry(archs, samples, impl, used_threads, Machine(caches, tuple(fp["cpu_flags"])),
                                   plan.backend, ceil)
                entries.append({"backend": plan.backend, "dtype": dtype, "impl": impl, "versions": versions,
                                "threads": used_threads, **fitted,
                                "sweep": {"points": plan.points, "rounds": plan.rounds,
                                          "samples": len(samples), "seed": plan.seed,
                                          "seconds": round(time.perf_counter() - t0, 2)}})
                if log:
                    log(f"{dtype}/{impl}: {len(samples)} samples from {plan.points} networks "
                        f"in {time.perf_counter() - t0:.1f} s")
    load = worst_of(monitor.load, sweep_loads).as_dict()
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
