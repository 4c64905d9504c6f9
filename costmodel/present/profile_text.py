"""A machine profile for reading: its fingerprint, ceilings and the fitted models of every entry
as machine facts (`costmodel profile show`), as a table, JSON or CSV."""

from __future__ import annotations

from typing import Mapping

from costmodel.errors import UsageError
from costmodel.machine.profile import BlasInfo, Entry, Fingerprint, Profile
from costmodel.machine.timemodel import model_facts
from costmodel.present.report import FORMATS, render_table, to_csv, to_json
from costmodel.units import fmt_seconds, human, iec as _iec, threads_text as _threads


#: CPU flags shown in the fingerprint summary when present (x86 and Arm vector units)
SIMD_FLAGS = ("avx512f", "avx2", "fma", "avx", "sse4_2", "asimd", "sve", "sve2")


def _caches(caches: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {_iec(size)}" for name, size in sorted(caches.items())) or "unknown"


#: byte features whose coefficients add up to the effective cost per byte of a level, and the
#: level's name in OpCeiling.bytes_per_second
def _level(working_set: int, caches: Mapping[str, int]) -> str:
    """The smallest data cache a working set fits in, or 'memory'."""
    for name in ("L1d", "L2", "L3"):
        if name in caches and working_set <= caches[name]:
            return name
    return "memory" if caches else "-"


def _blas_line(b: BlasInfo) -> str:
    details = [d for d in (b.threading_layer, b.architecture and f"{b.architecture} kernels",
                           _threads(b.num_threads)) if d]
    return f"{b.internal_api} {b.version} ({', '.join(details)}) {b.filepath}"


def _fingerprint_lines(fp: Fingerprint) -> list[str]:
    physical = f", {fp.physical_cores} physical" if fp.physical_cores else ""
    return [
        f"CPU: {fp.cpu_model} ({fp.cores} logical cores{physical}); "
        f"SIMD: {' '.join(f for f in SIMD_FLAGS if f in fp.cpu_flags) or '-'}",
        f"caches: {_caches(fp.caches)}",
        f"BLAS: {'; '.join(_blas_line(b) for b in fp.blas) or 'none found'}",
        f"NumPy {fp.numpy_version}, Python {fp.python}, {fp.platform} ({fp.machine}), "
        f"fingerprint taken with {_threads(fp.threads)}",
    ]


def _op_rows(entry: Entry) -> list[dict]:
    return [{"op": op, "model": m.model, "features": m.features, "coef": m.coef,
             "name": ", ".join(model_facts(m)),  # "name": left-justified
             "cv_error": m.cv_error, "interval": m.interval, "n_samples": m.n_samples}
            for op, m in sorted(entry.ops.items())]


def _csv_rows(profile: Profile) -> list[dict]:
    return [{"dtype": entry.dtype, "impl": entry.impl, "threads": entry.threads, "backend": entry.backend,
             "op": row["op"], "model": row["model"], "feature": f, "coef_seconds_per_unit": c,
             "cv_error": row["cv_error"], "interval_lo": row["interval"][0], "interval_hi": row["interval"][1],
             "n_samples": row["n_samples"]}
            for entry in profile.entries for row in _op_rows(entry) for f, c in zip(row["features"], row["coef"])]


CSV_COLUMNS = ["dtype", "impl", "threads", "backend", "op", "model", "feature", "coef_seconds_per_unit",
               "cv_error", "interval_lo", "interval_hi", "n_samples"]


def render_profile(profile: Profile, fmt: str = "table") -> str:
    """The profile as text tables, as JSON (the file's content) or as CSV (one row per op and
    feature, coefficients in seconds per unit)."""
    if fmt == "json":
        return to_json(profile.model_dump(mode="json"))
    if fmt == "csv":
        return to_csv(_csv_rows(profile), CSV_COLUMNS)
    if fmt != "table":
        raise UsageError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    fp, ceil = profile.fingerprint, profile.ceilings
    created = profile.created.isoformat(timespec="seconds")
    header = [f"Machine profile (schema {profile.schema_version}, costmodel {profile.tool_version}, "
              f"created {created})\n" + "".join(f"  {line}\n" for line in _fingerprint_lines(fp))]
    if profile.transfer is not None:
        src = profile.transfer.source_fingerprint
        header.append(f"  transferred to this machine by rule {profile.transfer.rule} (docs/transfer.md) from: "
                      f"{src.cpu_model}, {_caches(src.caches)}, "
                      f"BLAS {'; '.join(_blas_line(b) for b in src.blas) or 'none found'}\n")
    if profile.probe is not None:
        header.append(f"  probe of this machine (for transfers): {len(profile.probe.products)} products, "
                      f"{len(profile.probe.bandwidth)} bandwidth levels, call times of "
                      f"{', '.join(sorted(profile.probe.call_seconds))}; taken in {profile.probe.seconds:.1f} s\n")
    parts = ["".join(header)]
    if ceil.peaks:
        parts.append(render_table(
            "Peak matrix product (the fit's FLOP ceilings)",
            [("dtype", "name", str), ("backend", "group", str), ("threads", "threads", str),
             ("peak", "flops", lambda v: human(v, "FLOP/s")),
             ("machine balance", "balance", lambda v: "-" if v is None else f"{v:.3g} FLOP/B")],
            [{"name": p.dtype, "group": p.backend, "threads": p.threads, "flops": p.flops_per_second,
              "balance": ceil.machine_balance.get(p.dtype)
              if (p.backend, p.threads) == ("numpy", ceil.threads) else None} for p in ceil.peaks]))
    else:
        parts.append(render_table(
            f"Peak matrix product ({_threads(ceil.threads)})",
            [("dtype", "name", str), ("peak", "flops", lambda v: human(v, "FLOP/s")),
             ("machine balance", "balance", lambda v: "-" if v is None else f"{v:.3g} FLOP/B")],
            [{"name": dt, "flops": v, "balance": ceil.machine_balance.get(dt)}
             for dt, v in ceil.matmul_flops_per_second.items()]))
    parts.append(render_table(
        "Bandwidth by working set",
        [("working set", "ws", _iec), ("fits in", "group", str), ("bandwidth", "bw", lambda v: human(v, "B/s"))],
        [{"ws": p.working_set_bytes, "group": _level(p.working_set_bytes, fp.caches), "bw": p.bytes_per_second}
         for p in ceil.bandwidth],
        ["np.add(a, b, out=c), 1 thread: bytes of a, b and c per second"]))
    if profile.network is not None:
        parts.append(_network_table(profile.network))
    columns = [("op", "op", str), ("model", "model", str), ("parameters", "name", str),
               ("CV error", "cv_error", lambda v: "-" if v is None else f"{100 * v:.1f} %"),
               ("measured/predicted", "interval", lambda v: f"{v[0]:.2f} .. {v[1]:.2f}"),
               ("samples", "n_samples", str)]
    parts += [render_table(f"Op models: {entry.describe()}"
                           + "".join(f", {name} {version}" for name, version in sorted(entry.versions.items())),
                           columns, _op_rows(entry), _entry_notes(entry)) for entry in profile.entries]
    return "\n".join(parts)


def _network_table(net) -> str:
    """The network section (calibrate --network, or a given link): alpha and beta read as machine
    facts, and the allreduce microbenchmark's points against the ring model."""
    from costmodel.present.report import fmt_seconds

    bandwidth = "no cost per byte" if net.beta_seconds_per_byte == 0 else human(1 / net.beta_seconds_per_byte, "B/s")
    who = f"{net.workers} workers, " if net.workers else ""
    title = (f"Network ({net.backend} allreduce, {who}{net.name or net.link}): latency "
             f"{fmt_seconds(net.alpha_seconds)}, {bandwidth}")
    notes = ["ring allreduce t(n) = 2 (P-1) alpha + 2 (P-1)/P n beta"]
    if net.fit_error is not None:
        notes.append(f"fit error: median {100 * net.fit_error:.1f} %, largest {100 * net.max_error:.1f} %")
    if net.load is not None:
        notes.append(_load_note(net.load, net.accepted_noisy, "benchmarked", "benchmarking"))
    rows = [{"n": p.message_bytes, "t": p.seconds, "p": p.predicted_seconds, "e": p.error,
             "fitted": "yes" if p.fitted else "no"} for p in net.points]
    return render_table(title, [("message", "n", lambda v: human(v, "B")), ("measured", "t", fmt_seconds),
                                ("predicted", "p", fmt_seconds), ("error", "e", lambda v: f"{100 * v:+.1f} %"),
                                ("fitted", "fitted", str)], rows, notes)


def _load_note(load, accepted_noisy: bool, done: str, doing: str) -> str:
    """The load while a part of the profile was made (`done` "calibrated", `doing`
    "calibrating"): NOISY with its reasons, or what was measured and whether it was quiet."""
    if load.disturbed:
        accepted = ": written with --accept-noisy" if accepted_noisy else ""
        return f"NOISY: {done} on a disturbed machine ({'; '.join(load.reasons)}){accepted}"
    spread = "" if load.spread is None else f", spread of repeated samples {100 * load.spread:.0f} %"
    measured = (f"other processes {100 * load.other_cpu:.0f} % of {load.cores_available} "
                f"core{'s' if load.cores_available > 1 else ''}, steal {100 * load.steal:.0f} %{spread}")
    if load.notes:
        return f"load while {doing}: {measured}: no other load, but {'; '.join(load.notes)}"
    return f"load while {doing}: {measured}: quiet"


def _step_interval_note(entry: Entry) -> str:
    """The 90 % interval of a whole step (measured/predicted) predict quotes with this entry:
    one for every step, or one per size class; '' for a profile made before step intervals."""
    def factors(interval) -> str:
        return f"x{interval[0]:.3g} to x{interval[1]:.3g}"

    def networks(n: int) -> str:
        return f"{n} calibration network{'s' if n != 1 else ''}"

    if entry.step_intervals_by_size:
        small, large = entry.step_intervals_by_size
        edge = fmt_seconds(small.below_seconds)
        return (f"step interval (90 %, measured/predicted): {factors(small.interval)} for steps predicted below {edge} "
                f"({networks(small.networks)}), {factors(large.interval)} from it ({large.networks})")
    if entry.step_interval is None:
        return ""
    count = f" ({networks(entry.step_networks)})" if entry.step_networks else ""
    return f"step interval (90 %, measured/predicted): {factors(entry.step_interval)}{count}"


def _entry_notes(entry: Entry) -> list[str]:
    """The entry's load while it was calibrated and, for a transfer, the factors applied."""
    notes = []
    if any(m.ceiling is not None for m in entry.ops.values()):
        notes.append("rates in parentheses: share of the ceiling the fit was bounded by (peak product, "
                     "bandwidth of the level, for the threads the op runs on)")
        # the fit's ceilings, measured by the calibration per thread count (not the tables above,
        # which are the probe's and the ceilings' own shapes): every one a rate above quotes
        seen: dict[int, dict[str, float]] = {}
        for m in entry.ops.values():
            if m.ceiling is not None:
                limits = seen.setdefault(m.ceiling.threads, {})
                if m.ceiling.flops_per_second:
                    limits["peak"] = max(limits.get("peak", 0.0), m.ceiling.flops_per_second)
                for level, rate in m.ceiling.bytes_per_second.items():
                    limits[level] = max(limits.get(level, 0.0), rate)
        for threads, limits in sorted(seen.items()):
            parts = ([f"peak {human(limits['peak'], 'FLOP/s')}"] if "peak" in limits else []) + [
                f"{level} {human(limits[level], 'B/s')}" for level in ("L2", "L3", "memory") if level in limits]
            notes.append(f"fit ceilings, {threads} thread{'s' if threads > 1 else ''} (the largest an op was bounded "
                         f"by): {', '.join(parts)}")
    step = _step_interval_note(entry)
    if step:
        notes.append(step)
    if entry.load is not None:
        notes.append(_load_note(entry.load, entry.accepted_noisy, "calibrated", "calibrating"))
    if entry.transfer_factors:
        factors = ", ".join(f"{name} x{factor:.2f}" for name, factor in sorted(entry.transfer_factors.items()))
        notes.append(f"transferred: time factors {factors}")
    return notes
