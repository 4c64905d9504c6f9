"""The workers of data-parallel SG and their gloo process group.

Two ways to form the group (docs/data-parallel.md):

- local: ``--workers P`` starts P processes on this machine with torch.multiprocessing (spawn),
  worker r pinned with os.sched_setaffinity to its T cores (``--threads T``, default: the cores
  this process may use, shared out), rendezvous on a free port of 127.0.0.1;
- joined: this process is rank R of a group given by ``--init tcp://HOST:PORT --rank R
  --world-size P`` (one command per machine, rank 0's HOST:PORT) or by torchrun's environment
  (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE; ``--init env://``, or nothing at all when those
  four are set).

Every collective, and the rendezvous, is bounded by ``timeout`` seconds (torch.distributed's
timeout of the gloo group). A worker that fails makes the others fail (gloo reports the closed
connection) or wait out the timeout; the launcher then stops the rest (SIGTERM, then SIGKILL)
and raises one ParallelError line naming the first cause. No process outlives the launcher.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Mapping

from costmodel.errors import CostModelError, UsageError

DEFAULT_TIMEOUT = 60.0
ENV_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")
_TCP = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[^:/\s]+):(\d{1,5})")


class ParallelError(CostModelError):
    """A data-parallel run that cannot go on: a worker failed, the group cannot be formed."""

    exit_code = 2


@dataclass(frozen=True)
class Placement:
    """Where one worker runs and how it joins the group."""

    rank: int
    world_size: int
    init_method: str
    timeout: float
    threads: int
    cores: tuple[int, ...] | None  # None: not pinned


@dataclass(frozen=True)
class GroupPlan:
    """``local``: start ``world_size`` workers here (placements, one per rank); ``joined``: this
    process is ``placements[0].rank`` of a group formed elsewhere."""

    mode: str
    world_size: int
    placements: tuple[Placement, ...]
    oversubscribed: bool = False

    @property
    def threads(self) -> int:
        return self.placements[0].threads

    @property
    def init_method(self) -> str:
        return self.placements[0].init_method


@dataclass(frozen=True)
class WorkerContext:
    """What a worker's task knows about itself."""

    rank: int
    world_size: int
    threads: int
    cores: tuple[int, ...] | None
    host: str
    pid: int


def quiet_torch_logs() -> None:
    """Keep torch's C++ log lines (a failed connection's retries, with C++ stack frames) off
    stderr: the command reports the cause in one line. Set before torch is imported (workers
    inherit it), and Kineto's per-step profiler lines (calib.backends.torch.KINETO_QUIET);
    TORCH_CPP_LOG_LEVEL and KINETO_LOG_LEVEL set by the user win."""
    from calib.backends.torch import KINETO_QUIET

    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
    os.environ.setdefault("KINETO_LOG_LEVEL", KINETO_QUIET)


def parse_init(text: str) -> str:
    """``tcp://HOST:PORT`` or ``env://`` as given, or a UsageError."""
    if text == "env://":
        return text
    match = _TCP.fullmatch(text)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise UsageError(f"--init: {text!r} is not tcp://HOST:PORT (a port 1-65535) or env://")
    return text


def plan_group(*, workers: int | None, init: str | None, rank: int | None, world_size: int | None,
               threads: int | None, timeout: float = DEFAULT_TIMEOUT, oversubscribe: bool = False,
               environ: Mapping[str, str] | None = None, cores: set[int] | None = None) -> GroupPlan | None:
    """The group a command asks for, checked; None when it asks for none (one process, no
    group). Errors are one UsageError line naming the option."""
    environ = os.environ if environ is None else environ
    available = sorted(os.sched_getaffinity(0) if cores is None else cores)
    if timeout is not None and not timeout > 0:
        raise UsageError(f"--timeout: {timeout} s; give a positive number of seconds")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads: {threads}; give at least 1 thread per worker")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers: {workers} workers; give at least 1")
    env_group = init is None and workers is None and rank is None and all(v in environ for v in ENV_VARS)
    if init is None and not env_group:
        if rank is not None or world_size is not None:
            raise UsageError("--rank and --world-size join a group given by --init tcp://HOST:PORT "
                             "(or torchrun's environment); on one machine use --workers P")
        if workers is None:
            if oversubscribe:
                raise UsageError("--oversubscribe goes with --workers P")
            return None
        return _local(workers, threads, timeout, oversubscribe, available)

    method = "env://" if env_group else parse_init(init)
    if workers is not None:
        raise UsageError("--workers starts every worker on this machine; with --init each machine "
                         "starts its own rank: leave --workers out and give --rank R --world-size P")
    if method == "env://":
        missing = [v for v in ENV_VARS if v not in environ]
        if missing:
            raise UsageError(f"--init env://: the environment lacks {', '.join(missing)} "
                             "(set by torchrun, or by hand)")
        rank = _env_int(environ, "RANK") if rank is None else rank
        world_size = _env_int(environ, "WORLD_SIZE") if world_size is None else world_size
        addr, port = environ["MASTER_ADDR"], environ["MASTER_PORT"]
        method = parse_init(f"tcp://{addr}:{port}")  # the same rendezvous, checked the same way
    if rank is None or world_size is None:
        raise UsageError(f"--init {init}: give --rank R and --world-size P too")
    if world_size < 1:
        raise UsageError(f"--world-size: {world_size}; give at least 1")
    if not 0 <= rank < world_size:
        raise UsageError(f"--rank: {rank} is not in 0..{world_size - 1} (--world-size {world_size})")
    T = threads or len(available)
    if T > len(available) and not oversubscribe:
        raise UsageError(f"--threads {T}: this process may run on {len(available)} cores "
                         "(os.sched_getaffinity); use fewer threads or --oversubscribe")
    return GroupPlan("joined", world_size, (Placement(rank, world_size, method, timeout, T, None),),
                     oversubscribed=T > len(available))


def _env_int(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise UsageError(f"{name}={environ[name]!r} in the environment is not an integer") from None


def _local(P: int, threads: int | None, timeout: float, oversubscribe: bool, available: list[int]) -> GroupPlan:
    n = len(available)
    T = threads or max(1, n // P)
    if P * T > n and not oversubscribe:
        raise UsageError(f"--workers {P} x --threads {T} needs {P * T} cores, but this process may run on {n} "
                         "(os.sched_getaffinity): use fewer workers or threads, or --oversubscribe to share cores")
    method = f"tcp://127.0.0.1:{free_port()}"
    placements = tuple(Placement(r, P, method, timeout, T, tuple(sorted({available[(r * T + j) % n] for j in range(T)})))
                       for r in range(P))
    return GroupPlan("local", P, placements, oversubscribed=P * T > n)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- joining the group -----------------------------------------------------------------------

#: whether this process joined a gloo group: it then ends by os._exit (exit_now), not by the
#: interpreter's shutdown, where torch 2.13's static destructors abort after DDP (SIGABRT,
#: "terminate called without an active exception"; calib/parallel/launch.py)
joined_here = False


def exit_now(status: int) -> None:
    """End this process with `status` after flushing stdout and stderr, without the
    interpreter's shutdown (see `joined_here`)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def join_group(p: Placement) -> WorkerContext:
    """init_process_group("gloo") for this placement, bounded by its timeout; the rendezvous's
    failure is one ParallelError line. Sets `joined_here`."""
    global joined_here
    from calib.backends.torch import import_torch

    quiet_torch_logs()
    import_torch()
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        raise ParallelError("this PyTorch has no torch.distributed with gloo")
    start = time.monotonic()
    try:
        joined_here = True
        dist.init_process_group("gloo", init_method=p.init_method, rank=p.rank, world_size=p.world_size,
                                timeout=timedelta(seconds=p.timeout))
    except Exception as exc:  # DistStoreError, RuntimeError, ValueError from the rendezvous
        waited = time.monotonic() - start
        raise ParallelError(f"--init {p.init_method}: rank {p.rank} of {p.world_size} could not join the gloo "
                            f"group after {waited:.0f} s (timeout {p.timeout:g} s): {first_line(exc)}") from None
    return WorkerContext(p.rank, p.world_size, p.threads, p.cores, socket.gethostname(), os.getpid())


def leave_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def first_line(exc: BaseException) -> str:
    """An exception as one short line: its first non-empty line, without gloo's [file:line]."""
    text = str(exc).strip() or exc.__class__.__name__
    line = next((s.strip() for s in text.splitlines() if s.strip()), text)
    line = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", line)
    return f"{exc.__class__.__name__}: {line}"[:300]


class pinned_threads:
    """BLAS (threadpoolctl) and torch intra-op threads limited to T inside."""

    def __init__(self, T: int):
        self.T = T

    def __enter__(self):
        from threadpoolctl import threadpool_limits

        import torch

        self.previous = torch.get_num_threads()
        torch.set_num_threads(self.T)
        self.limits = threadpool_limits(limits=self.T)
        return self

    def __exit__(self, *exc):
        import torch

        self.limits.restore_original_limits()
        torch.set_num_threads(self.previous)
        return False


def run_joined(plan: GroupPlan, task: Callable, args: tuple = (),
               log: Callable[[str], None] | None = None) -> list[Any]:
    """Run `task(ctx, *args)` as this process's rank of the group; every rank's result (rank
    order), gathered with all_gather_object."""
    import torch.distributed as dist

    p = plan.placements[0]
    ctx = join_group(p)
    if log is not None:
        log(f"rank {p.rank} joined the gloo group of {p.world_size} ({p.init_method})")
    try:
        with pinned_threads(p.threads):
            result = task(ctx, *args)
        gathered: list[Any] = [None] * p.world_size
        dist.all_gather_object(gathered, result)
    except CostModelError:
        raise
    except Exception as exc:  # a peer gone (gloo), a timeout
        raise ParallelError(f"rank {p.rank}: {first_line(exc)}") from None
    finally:
        leave_group()
    return gathered
