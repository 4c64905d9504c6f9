"""`costmodel measure --workers P` / `--init ...` and `costmodel calibrate --network`: check,
run, render. Called by calib/commands.py."""

from __future__ import annotations

import sys
from pathlib import Path

from costmodel.errors import UsageError
from costmodel.present.report import fmt_fraction, fmt_seconds, human, render_table, to_csv, to_json

from calib.parallel.process_group import DEFAULT_TIMEOUT, GroupPlan, plan_group, quiet_torch_logs


def _log(line: str) -> None:
    print(f"costmodel: {line}", file=sys.stderr)


def group_options(*, workers, init, rank, world_size, threads, timeout, oversubscribe) -> GroupPlan | None:
    """The group the options ask for (calib.parallel.process_group.plan_group), None for none."""
    return plan_group(workers=workers, init=init, rank=rank, world_size=world_size, threads=threads,
                      timeout=DEFAULT_TIMEOUT if timeout is None else timeout, oversubscribe=oversubscribe)


# -- measure ---------------------------------------------------------------------------------

def cost_table(arch, impl: str, backend: str) -> dict:
    """(layer, op, phase) -> (FLOPs, bytes) of the compute rows at I/P, as `measure` gives them
    (the cost model; for torch its op groups). Made before the workers start: an architecture
    the cost model refuses fails at once."""
    if backend == "torch":
        from costmodel.machine.backends.torch import BYTES_IMPL, TorchBackend
        from costmodel.model.step import step_costs

        return {r.key: (r.flops, r.bytes) for r in TorchBackend().rows_of(step_costs(arch, BYTES_IMPL))}
    from costmodel.model.step import step_costs

    costs = step_costs(arch, impl)
    return {(ref.layer, ref.op, ref.phase): (int(costs.flops[i]), int(costs.bytes[i]))
            for i, ref in enumerate(costs.ops)}


def _with_costs(rows: list[dict], table: dict) -> None:
    """FLOPs and bytes onto the rows (None where the table has none, as torch's "other"); an
    allreduce row keeps its message bytes and has no FLOPs."""
    for row in rows:
        if row["phase"] == "communication":
            row["flops"] = None
        else:
            row["flops"], row["bytes"] = table.get((row["layer"], row["op"], row["phase"]), (None, None))


def measure_parallel(arch, plan: GroupPlan, *, backend: str, impl: str, steps: int, warmup: int, overlap: bool,
                     seed: int = 0, log=_log) -> dict:
    """Run the data-parallel steps in every worker; the measure JSON with one entry per rank."""
    from calib.allocator import warm_heap
    from calib.parallel.launch import run
    from calib.parallel.step import measure_numpy, per_worker
    from calib.parallel.ddp import measure_ddp

    allocator = warm_heap()  # this process may be a rank (--init); spawned workers set the same
    P = plan.world_size
    n = per_worker(arch.batch, P)
    local = arch.with_batch(n)
    table = cost_table(local, impl, backend)
    if backend == "torch":
        ranks = run(plan, measure_ddp, (arch, steps, warmup, overlap, seed), log=log)
        impl = "torch"
    else:
        from calib.memory import check_memory

        check_memory(arch.with_batch(n), impl)
        ranks = run(plan, measure_numpy, (arch, impl, steps, warmup, overlap, seed), log=log)
    for r in ranks:
        _with_costs(r["ops"], table)
    slowest = max(ranks, key=lambda r: r["step_seconds"])
    return {
        "arch": arch.name, "batch": arch.batch, "batch_per_worker": n, "workers": P, "dtype": arch.dtype,
        "threads": plan.threads, "impl": impl, "backend": backend, "overlap": overlap,
        "process_group": "gloo", "init_method": plan.init_method, "mode": plan.mode,
        "step_seconds": slowest["step_seconds"],
        "compute_seconds": slowest["compute_seconds"],
        "communication_seconds": slowest["communication_seconds"],
        "wait_seconds": slowest["wait_seconds"],
        "allocator": allocator,
        "ranks": ranks,
    }


def _layer_label(row: dict) -> str:
    if row.get("bucket") is not None:
        layers = row["layers"]
        span = f"{layers[0]}" if len(layers) == 1 else f"{layers[0]}..{layers[-1]}"
        return f"bucket {row['bucket']} ({span})"
    return str(row["layer"])


def render_parallel(result: dict, fmt: str) -> str:
    """The result as JSON, as CSV (one line per rank and row) or as one table: per row each
    rank's time (and wait, for allreduce rows), then rank 0's fraction, FLOPs and bytes."""
    ranks = result["ranks"]
    if fmt == "json":
        return to_json(result)
    csv_columns = ["rank", "layer", "layer_type", "op", "phase", "seconds", "wait_seconds", "fraction", "flops",
                   "bytes", "bucket"]
    if fmt == "csv":
        return to_csv([{"rank": r["rank"], **row} for r in ranks for row in r["ops"]], csv_columns)
    keyed = [{_key(row): row for row in r["ops"]} for r in ranks]
    rows = []
    for row in ranks[0]["ops"]:
        k = _key(row)
        out = {"label": _layer_label(row), "layer_type": row["layer_type"], "op": row["op"], "phase": row["phase"],
               "fraction": row["fraction"], "flops": row.get("flops"), "bytes": row.get("bytes")}
        for r, by_key in zip(ranks, keyed):
            other = by_key.get(k)
            out[f"s{r['rank']}"] = None if other is None else other["seconds"]
            out[f"w{r['rank']}"] = None if other is None else other.get("wait_seconds")
        rows.append(out)
    columns = [("layer", "label", str), ("type", "layer_type", str), ("op", "op", str), ("phase", "phase", str)]
    for r in ranks:
        columns.append((f"time r{r['rank']}", f"s{r['rank']}", fmt_seconds))
        columns.append((f"wait r{r['rank']}", f"w{r['rank']}", fmt_seconds))
    columns += [("fraction r0", "fraction", fmt_fraction), ("FLOPs", "flops", human),
                ("bytes", "bytes", lambda b: human(b, "B"))]
    footer = []
    for r in ranks:
        where = f"cores {','.join(map(str, r['cores']))}" if r.get("cores") else "not pinned"
        footer.append(f"rank {r['rank']} ({r['host']}, {where}): step {fmt_seconds(r['step_seconds'])} (median of "
                      f"whole steps); compute {fmt_seconds(r['compute_seconds'])}, communication "
                      f"{fmt_seconds(r['communication_seconds'])} of which waited {fmt_seconds(r['wait_seconds'])}; "
                      f"coverage {r['coverage']:.3f}")
    how = "asynchronous, waited for before the update" if result["overlap"] else "blocking"
    unit = "per bucket (DistributedDataParallel)" if result["backend"] == "torch" else "per layer (dW, db)"
    footer += [
        f"{result['arch']}: batch I={result['batch']} = {result['workers']} workers x {result['batch_per_worker']}, "
        f"{result['dtype']}, impl={result['impl']}, {result['threads']} thread(s) per worker, gloo ({result['mode']})",
        f"allreduce rows {unit}, {how}: time = in the collective call, wait = the step waiting for it; "
        "fraction = (time + wait) / rank 0's sum of rows",
    ]
    title = f"Measured data-parallel SG step: {result['arch']}, P={result['workers']}"
    return render_table(title, columns, rows, footer)


def _key(row: dict) -> tuple:
    return (row["layer"], row["op"], row["phase"], row.get("bucket"))


def measure_parallel_command(arch_path: Path, *, batch, steps, warmup, threads, impl, fmt, backend, workers,
                             overlap, init, rank, world_size, oversubscribe, timeout) -> str | None:
    """`measure` with --workers or --init (or torchrun's environment); None when the options ask
    for no group (the caller measures one process)."""
    from costmodel.model.arch import load_arch

    plan = group_options(workers=workers, init=init, rank=rank, world_size=world_size, threads=threads,
                         timeout=timeout, oversubscribe=oversubscribe)
    if plan is None:
        if overlap:
            raise UsageError("--overlap overlaps the allreduces of data-parallel SG: give --workers P or --init")
        return None
    from calib.backends.torch import import_torch

    quiet_torch_logs()
    import_torch()  # torch.distributed carries the NumPy reference's gradients too
    arch = load_arch(arch_path).with_batch(batch)
    from calib.parallel.step import per_worker

    per_worker(arch.batch, plan.world_size)  # refuse before starting anything
    if plan.oversubscribed:
        _oversubscribed(plan, _log)
    result = measure_parallel(arch, plan, backend=backend, impl=impl, steps=steps, warmup=warmup, overlap=overlap)
    return render_parallel(result, fmt)


# -- calibrate --network ---------------------------------------------------------------------

POINT_COLUMNS = [("message", "message_bytes", lambda b: human(b, "B")), ("measured", "seconds", fmt_seconds),
                 ("predicted", "predicted_seconds", fmt_seconds), ("error", "error", lambda e: f"{100 * e:+.1f} %"),
                 ("fitted", "fitted", lambda f: "yes" if f else "no: < 2P elements")]


def _oversubscribed(plan: GroupPlan, log) -> None:
    log(f"warning: {plan.world_size} worker(s) x {plan.threads} thread(s) share fewer cores (--oversubscribe): "
        "the times include waiting for a core")


def calibrate_network_command(*, workers, init, rank, world_size, threads, timeout, oversubscribe, link, latency,
                              bandwidth, quick, output, fmt, accept_noisy: bool = False, log=_log) -> str:
    """Measure (or take as given) alpha and beta of the ring allreduce and store them in the
    profile's network section; the points and errors, and alpha/beta as machine facts. The
    load on this machine while the benchmark runs is recorded (calib.noise.LoadMonitor; the
    workers' own time is this process's children's): other load refuses the section, nothing
    written, unless `accept_noisy`, which writes it marked."""
    from costmodel.machine.profile import Network, check_profile_output, default_profile_path

    from calib.parallel.network import QUICK_REPEATS, REPEATS, combine, facts, given_network, measured_network

    path = Path(output) if output else default_profile_path()
    check_profile_output(path, make_parents=not output)  # before any benchmark, not after it
    if link is not None or latency is not None or bandwidth is not None:
        if init is not None or rank is not None or world_size is not None:
            raise UsageError("--link, --latency and --bandwidth describe a link you do not have: leave out --init")
        if accept_noisy:
            raise UsageError("--accept-noisy is for a measured network; a given link (--link, --latency, "
                             "--bandwidth) measures nothing: leave it out")
        if workers is not None and workers < 1:
            raise UsageError(f"--workers: {workers} workers; give at least 1")
        network = given_network(link=link, latency=latency, bandwidth=bandwidth, workers=workers)
    else:
        plan = group_options(workers=2 if workers is None and init is None else workers, init=init, rank=rank,
                             world_size=world_size, threads=threads or 1, timeout=timeout, oversubscribe=oversubscribe)
        if plan is None:  # torchrun's environment with nothing else given still forms a group
            raise UsageError("calibrate --network: give --workers P (P >= 2) or --init")
        if plan.world_size < 2:
            raise UsageError(f"--workers {plan.world_size}: an allreduce among one worker moves nothing; "
                             "give 2 or more")
        if plan.oversubscribed:
            _oversubscribed(plan, log)
        from calib.backends.torch import import_torch

        quiet_torch_logs()
        import_torch()
        repeats = QUICK_REPEATS if quick else REPEATS
        from calib.noise import LoadMonitor

        with LoadMonitor() as monitor:
            per_worker = run_benchmark(plan, repeats, log)
        network = measured_network(combine(per_worker), plan.world_size,
                                   "loopback" if plan.mode == "local" else "measured", repeats)
        load = monitor.load
        if load.disturbed:
            reasons = "; ".join(load.reasons)
            if not accept_noisy:
                raise UsageError(f"the machine was disturbed while the allreduce benchmark ran ({reasons}): nothing "
                                 "written; calibrate again on a quiet machine, or pass --accept-noisy to write it "
                                 "marked noisy")
            log(f"warning: the machine was disturbed while the allreduce benchmark ran ({reasons}): "
                "the network section is written marked noisy (--accept-noisy)")
        network = Network.model_validate({**network.model_dump(), "load": load.as_dict(),
                                          "accepted_noisy": load.disturbed})
    _save_network(network, path, log)
    result = {"network": network.model_dump(mode="json"), "profile": str(path), "facts": facts(network)}
    if fmt == "json":
        return to_json(result)
    points = [p.model_dump() for p in network.points]
    if fmt == "csv":
        return to_csv(points, ["message_bytes", "seconds", "predicted_seconds", "error", "fitted"])
    where = {"loopback": f"{network.workers} workers on this machine", "measured": f"{network.workers} workers",
             "given": f"given link {network.name}"}[network.link]
    footer = [f"ring allreduce t(n) = 2 (P-1) alpha + 2 (P-1)/P n beta: {facts(network)} "
              f"(alpha = {network.alpha_seconds:.3g} s, beta = {network.beta_seconds_per_byte:.3g} s/B); gloo, {where}"]
    if network.points:
        worst = max((p for p in network.points if p.fitted), key=lambda p: abs(p.error))
        footer.append(f"fit error: median {100 * network.fit_error:.1f} %, largest {100 * network.max_error:.1f} % "
                      f"(at {human(worst.message_bytes, 'B')}); each size the median of {network.repeats} rounds of "
                      "the slowest worker; sizes under 2P elements take fewer of gloo's ring steps and are not fitted")
    footer.append(f"stored in the network section of {path}")
    title = "Allreduce microbenchmark (gloo)" if network.points else "Network (given)"
    return render_table(title, POINT_COLUMNS, points, footer)


def run_benchmark(plan: GroupPlan, repeats: int, log) -> list[dict]:
    """Every worker's allreduce times (calib.parallel.network.allreduce_benchmark)."""
    from calib.parallel.launch import run
    from calib.parallel.network import SIZES, allreduce_benchmark

    return run(plan, allreduce_benchmark, (SIZES, repeats), log=log)


def _save_network(network, path: Path, log):
    """Put the network section into the profile at `path` (made from this machine's fingerprint
    and ceilings, without op models, when there is none), atomically."""
    from datetime import datetime, timezone

    from costmodel.files import locked
    from costmodel.machine.profile import Profile, load_profile, save_profile

    with locked(path):  # a concurrent `calibrate` merges into the same file (issue 12)
        if path.exists():
            profile = load_profile(path).model_copy(update={"network": network})
        else:
            from calib.machine import ceilings, fingerprint

            log(f"no profile at {path}: measuring this machine's fingerprint and ceilings first (about 5 s); "
                "`costmodel calibrate` adds the op models")
            profile = Profile(created=datetime.now(timezone.utc), fingerprint=fingerprint(), ceilings=ceilings(),
                              network=network)
        save_profile(Profile.model_validate(profile.model_dump()), path)
    return profile
