"""Running a task on every worker of a data-parallel group: spawned local workers (one process
per rank, pinned to its share of the cores; results or errors left in a folder), or this
process joined to a group across machines (calib.parallel.process_group)."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from costmodel.errors import CostModelError

from calib.allocator import warm_heap
from calib.parallel.process_group import (GroupPlan, ParallelError, Placement, exit_now, first_line, join_group,
                                          leave_group, pinned_threads, quiet_torch_logs, run_joined)


@dataclass(frozen=True)
class _Job:
    placements: tuple[Placement, ...]
    task: Callable
    args: tuple
    outdir: str


def _write(outdir: str, rank: int, record: tuple) -> None:
    path = Path(outdir) / f"{rank}.pkl"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(record))
    os.replace(tmp, path)


def _worker_main(rank: int, job: _Job) -> None:
    """A spawned worker: pin, join, run the task, leave its result (or its error) in outdir."""
    p = job.placements[rank]
    try:
        warm_heap()  # as every process that times steps (calib.allocator)
        if p.cores is not None:
            os.sched_setaffinity(0, p.cores)
        ctx = join_group(p)
        import torch.distributed as dist

        dist.barrier()
        if rank == 0:
            Path(job.outdir, "joined").touch()
        with pinned_threads(p.threads):
            result = job.task(ctx, *job.args)
        _write(job.outdir, rank, ("ok", result))
        leave_group()
    except KeyboardInterrupt:
        os._exit(130)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one line for the launcher
        message = str(exc) if isinstance(exc, CostModelError) else first_line(exc)
        try:
            _write(job.outdir, rank, ("error", message, time.time()))
        finally:
            sys.stderr.flush()
            os._exit(2)  # no interpreter shutdown with a broken gloo group
    # Not the interpreter's shutdown either: after DistributedDataParallel, torch 2.13's static
    # destructors abort the process ("terminate called without an active exception", SIGABRT)
    # in 4 of 6 runs on a 2-core VM (2026-12-01), after the result is written.
    exit_now(0)



def run_local(plan: GroupPlan, task: Callable, args: tuple = (),
              log: Callable[[str], None] | None = None) -> list[Any]:
    """Start the plan's workers, run `task(ctx, *args)` in each, and return their results in rank
    order. When one fails, the others get `timeout` seconds to stop by themselves (gloo tells
    them their peer is gone), then SIGTERM, then SIGKILL; the first cause is one ParallelError
    line. ^C stops every worker. No worker outlives this call."""
    from calib.backends.torch import import_torch

    quiet_torch_logs()
    import_torch()
    import multiprocessing.connection

    import torch.multiprocessing as mp

    outdir = tempfile.mkdtemp(prefix="costmodel-parallel-")
    job = _Job(plan.placements, task, tuple(args), outdir)
    procs = []
    try:
        context = mp.start_processes(_worker_main, args=(job,), nprocs=plan.world_size, join=False,
                                     start_method="spawn")
        procs = list(context.processes)
        grace = plan.placements[0].timeout
        joined = False
        deadline = None
        while True:
            if not joined and Path(outdir, "joined").exists():
                joined = True
                if log is not None:
                    who = "1 worker" if plan.world_size == 1 else f"{plan.world_size} workers"
                    log(f"{who} joined the gloo group ({plan.init_method}): pids "
                        + " ".join(str(p.pid) for p in procs) + ", cores "
                        + " ".join(",".join(map(str, p.cores)) for p in plan.placements))
            alive = [p for p in procs if p.exitcode is None]
            if deadline is None and any(p.exitcode not in (None, 0) for p in procs):
                deadline = time.monotonic() + grace
            if not alive or (deadline is not None and time.monotonic() > deadline):
                break
            multiprocessing.connection.wait([p.sentinel for p in alive], timeout=0.2)
        stopped = {r for r, p in enumerate(procs) if p.exitcode is None}  # still running at the deadline
        _stop(procs)
        records = {}
        for r in range(plan.world_size):
            path = Path(outdir, f"{r}.pkl")
            if path.exists():
                records[r] = pickle.loads(path.read_bytes())
        failed = [r for r, p in enumerate(procs) if p.exitcode != 0 or records.get(r, ("",))[0] != "ok"]
        if failed:
            raise ParallelError(_cause(procs, records, [r for r in failed if r not in stopped] or failed))
        return [records[r][1] for r in range(plan.world_size)]
    except KeyboardInterrupt:
        _stop(procs, grace=2.0)
        raise
    finally:
        _stop(procs, grace=2.0)
        shutil.rmtree(outdir, ignore_errors=True)


def _stop(procs: list, grace: float = 5.0) -> None:
    """Terminate the processes still alive, then kill those that ignore it; reap them all."""
    for p in procs:
        if p.exitcode is None:
            p.terminate()
    end = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, end - time.monotonic()))
    for p in procs:
        if p.exitcode is None:
            p.kill()
            p.join()


def _cause(procs: list, records: dict, failed: list[int]) -> str:
    """The first cause of a failed run, one line: a worker killed by a signal, else the earliest
    error a worker reported, else a worker that ended without a result."""
    P = len(procs)
    for r in failed:
        code = procs[r].exitcode
        if code is not None and code < 0 and r not in records:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return (f"worker {r} of {P} (pid {procs[r].pid}) was killed by {name}; "
                    "the other workers stopped")
    errors = sorted((rec[2], r, rec[1]) for r, rec in records.items() if rec[0] == "error")
    if errors:
        _, r, message = errors[0]
        return f"worker {r} of {P}: {message}"
    r = failed[0]
    after = "after writing its result" if records.get(r, ("",))[0] == "ok" else "and no result"
    return f"worker {r} of {P} (pid {procs[r].pid}) ended with exit status {procs[r].exitcode} {after}"


def run(plan: GroupPlan, task: Callable, args: tuple = (), log: Callable[[str], None] | None = None) -> list[Any]:
    """Every rank's result of `task(ctx, *args)`, in rank order, whichever way the group forms."""
    if plan.mode == "local":
        return run_local(plan, task, args, log=log)
    return run_joined(plan, task, args, log=log)
