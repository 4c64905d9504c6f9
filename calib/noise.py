"""Noise detection: the load on the machine while `measure` or `calibrate` runs.

Three signs that a measurement was disturbed, each against a named limit:

- **other processes' CPU time**: the busy time of the CPUs this process may run on
  (/proc/stat, per CPU: user + nice + system + irq + softirq; guest time is already inside
  user) minus this process's own (/proc/self/stat: utime + stime, all its threads, BLAS's
  included), over the wall time times those CPUs. A busy core next to a calibration is
  the case of issue 11: conv_grad_W fitted at 1.13 GFLOP/s instead of 79.
- **steal time**: what the hypervisor gave other guests (/proc/stat's steal), over the same.
- **spread of repeated samples**: the caller passes one relative spread per sample (the
  rounds of a calibration sweep, the steps of `measure`) with a weight (the sample's time);
  their weighted median is compared with the limit, so a few noisy microsecond ops do not
  count. A spread above the limit is a *note*, not a disturbance: on a 2-vCPU VM with
  other processes at 0-0.4 % of the cores, six --quick sweeps spread 6-23 % between rounds
  (benchmarks/noise_floor.py, 2026-12-01), and three full calibrations in a row were refused
  on the spread alone. The medians over rounds and the fit over many networks absorb that
  jitter, and the cross-validated step interval measures what is left. Only what proves other
  load (other processes' time, steal) disturbs.

A fourth sign is a *note*: **the cores' hand-off** (handoff_seconds), the time of a two-thread
product so small that the hand-off between the threads decides it, sampled when a monitor that
asks for it starts and ends. On a 2-vCPU VM (AMD EPYC, 2026-12-01) it took 22 us or 42 us,
switching every 15-60 s as the hypervisor moved the vCPUs between cores that share an L3 and
cores that do not (a C ping-pong between the two cores: 75-100 ns against 380-450 ns a round
trip). Two-thread steps move with it: mnist-mlp 0.88 ms against 1.11 ms, one-thread steps not
at all (1.37-1.42 ms in both). A run whose samples differ by more than HANDOFF_CHANGE_LIMIT
ran in both placements, and says so.

The CPU times have the kernel's tick resolution (1/SC_CLK_TCK, 10 ms on Linux): a
difference of fewer than MIN_TICKS ticks is not read as load. Where /proc is not readable
(not Linux) only the spread is judged.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

PROC_STAT = Path("/proc/stat")
PROC_SELF_STAT = Path("/proc/self/stat")
#: other processes may use at most this share of the available cores' time
OTHER_CPU_LIMIT = 0.10
#: the hypervisor may steal at most this share
STEAL_LIMIT = 0.05
#: the time-weighted median relative spread of repeated samples may be at most this
SPREAD_LIMIT = 0.15
#: fewer ticks of other or steal time than this are not load (the tick is 10 ms)
MIN_TICKS = 5
#: the side of the square float32 product whose two-thread time is the cores' hand-off
HANDOFF_PRODUCT = 128
#: hand-off samples of one run further apart than this factor: it ran in two core placements
HANDOFF_CHANGE_LIMIT = 1.5


def handoff_seconds(reps: int = 64) -> float | None:
    """The cores' hand-off: the median seconds of `reps` HANDOFF_PRODUCT-square float32
    products by NumPy's BLAS on two threads (after 8 untimed), or None with fewer than two
    cores available. Its value is this machine's and BLAS's; what it is for is comparing
    samples of one run (module docstring). Takes ~5 ms; leaves the BLAS threads spinning
    (calib.workers.settle_blas)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    if cores < 2:
        return None
    import numpy as np
    from threadpoolctl import threadpool_limits

    a = np.ones((HANDOFF_PRODUCT, HANDOFF_PRODUCT), np.float32)
    c = np.empty_like(a)
    times = []
    with threadpool_limits(limits=2, user_api="blas"):
        for i in range(8 + reps):
            t0 = time.perf_counter_ns()
            np.matmul(a, a, out=c)
            if i >= 8:
                times.append(time.perf_counter_ns() - t0)
    return float(np.median(times)) * 1e-9


def handoff_note(samples: Iterable[float | None]) -> str | None:
    """The note on a run's hand-off samples (handoff_seconds) when they differ by more than
    HANDOFF_CHANGE_LIMIT, else None."""
    samples = [s for s in samples if s]
    if len(samples) < 2 or max(samples) <= HANDOFF_CHANGE_LIMIT * min(samples):
        return None
    return (f"the cores' hand-off changed during the run (a two-thread {HANDOFF_PRODUCT}^3 product took "
            f"{1e6 * min(samples):.0f}-{1e6 * max(samples):.0f} us: the cores moved to or from a shared cache, "
            "as a VM's vCPUs do; two-thread steps of small networks move up to 25 % with it)")


@dataclass(frozen=True)
class CpuTicks:
    """Clock ticks of a set of CPUs since boot (/proc/stat) and of this process (/proc/self/stat)."""

    busy: int
    steal: int
    own: int


def read_cpu_ticks(cpus: Iterable[int], stat_text: str | None = None,
                   self_text: str | None = None) -> CpuTicks | None:
    """Busy and steal ticks summed over `cpus` and this process's utime + stime with those of its
    children it has waited for (cutime + cstime: the workers of `calibrate --network`), or None
    when /proc is not readable."""
    try:
        stat_text = PROC_STAT.read_text() if stat_text is None else stat_text
        self_text = PROC_SELF_STAT.read_text() if self_text is None else self_text
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cpus}
    busy = steal = 0
    for line in stat_text.splitlines():
        name, *values = line.split()
        if name in wanted:
            user, nice, system, _idle, _iowait, irq, softirq, st = (int(v) for v in (values + ["0"] * 8)[:8])
            busy += user + nice + system + irq + softirq
            steal += st
    # the command name may hold spaces and parentheses: the fields start after the last ')'
    fields = self_text.rpartition(")")[2].split()
    own = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime (fields 14-17 of proc(5))
    return CpuTicks(busy, steal, own)


def weighted_median(values, weights) -> float:
    """The value at which the cumulative weight reaches half of the total."""
    pairs = sorted(zip(values, weights))
    total = sum(w for _, w in pairs)
    if not pairs or total <= 0:
        raise ValueError("weighted_median needs at least one positive weight")
    acc = 0.0
    for value, weight in pairs:
        acc += weight
        if acc >= total / 2:
            return float(value)
    return float(pairs[-1][0])


def relative_spread(samples) -> float:
    """(max - min) / median of repeated samples of one quantity; 0 for a single sample or a
    zero median."""
    samples = sorted(float(s) for s in samples)
    if len(samples) < 2:
        return 0.0
    mid = len(samples) // 2
    median = samples[mid] if len(samples) % 2 else (samples[mid - 1] + samples[mid]) / 2
    return (samples[-1] - samples[0]) / median if median > 0 else 0.0


@dataclass(frozen=True)
class Load:
    """The load measured over one run and the verdict on it (validates as
    costmodel.machine.profile.LoadRecord)."""

    wall_seconds: float
    cores_available: int
    other_cpu: float
    steal: float
    spread: float | None
    disturbed: bool
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    handoff_seconds: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """'other processes 48 % of 2 cores, steal 0 %, spread 3 %'."""
        spread = "" if self.spread is None else f", spread {100 * self.spread:.0f} %"
        return (f"other processes {100 * self.other_cpu:.0f} % of {self.cores_available} "
                f"core{'s' if self.cores_available > 1 else ''}, steal {100 * self.steal:.0f} %{spread}")


class LoadMonitor:
    """Context manager recording the load while its block runs.

    >>> with LoadMonitor() as monitor:
    ...     samples = run_the_measurement()
    ...     monitor.add_spreads(spreads, weights)
    >>> monitor.load.disturbed, monitor.load.reasons

    `cpus`: the CPUs to watch (default: those this process may run on); `clock` and `read`
    (CPU ticks of the CPUs) are replaceable for tests. `handoff` (e.g. handoff_seconds): sampled
    as the block starts, then the BLAS threads are settled (calib.workers.settle_blas, 0.25 s),
    and as it ends; samples further apart than HANDOFF_CHANGE_LIMIT give a note."""

    def __init__(self, cpus: Iterable[int] | None = None, *, other_limit: float = OTHER_CPU_LIMIT,
                 steal_limit: float = STEAL_LIMIT, spread_limit: float = SPREAD_LIMIT,
                 clock: Callable[[], float] = time.monotonic,
                 read: Callable[[], CpuTicks | None] | None = None,
                 handoff: Callable[[], float | None] | None = None):
        if cpus is None:
            try:
                cpus = os.sched_getaffinity(0)
            except (AttributeError, OSError):
                cpus = range(os.cpu_count() or 1)
        self.cpus = sorted(cpus)
        self.other_limit, self.steal_limit, self.spread_limit = other_limit, steal_limit, spread_limit
        self.clock = clock
        self.read = read or (lambda: read_cpu_ticks(self.cpus))
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.spreads: list[float] = []
        self.weights: list[float] = []
        self.handoff = handoff
        self.handoffs: list[float] = []
        self.load: Load | None = None

    def __enter__(self) -> "LoadMonitor":
        if self.handoff is not None:
            from calib.workers import settle_blas

            self._sample_handoff()
            settle_blas()  # the probe's BLAS threads would share the cores with what is timed
        self._start = (self.clock(), self.read())
        return self

    def __exit__(self, *exc) -> bool:
        end = (self.clock(), self.read())
        if self.handoff is not None and exc[0] is None:
            self._sample_handoff()
        self.load = self.verdict(*end)
        return False

    def _sample_handoff(self) -> None:
        sample = self.handoff()
        if sample:
            self.handoffs.append(sample)

    def add_spreads(self, spreads: Iterable[float], weights: Iterable[float] | None = None) -> None:
        """Relative spreads of repeated samples (e.g. relative_spread of each op's rounds), each
        with a weight (default 1; pass the sample's time so that large ops count more)."""
        spreads = [float(s) for s in spreads]
        weights = [1.0] * len(spreads) if weights is None else [float(w) for w in weights]
        if len(weights) != len(spreads):
            raise ValueError(f"{len(spreads)} spreads but {len(weights)} weights")
        self.spreads += spreads
        self.weights += weights

    def verdict(self, end_time: float, end_ticks: CpuTicks | None) -> Load:
        start_time, start_ticks = self._start
        wall = max(end_time - start_time, 0.0)
        cores = len(self.cpus)
        capacity = wall * self.tick * cores  # ticks the watched CPUs had
        other = steal = 0.0
        if start_ticks is not None and end_ticks is not None and capacity > 0:
            other_ticks = (end_ticks.busy - start_ticks.busy) - (end_ticks.own - start_ticks.own)
            steal_ticks = end_ticks.steal - start_ticks.steal
            other = max(other_ticks, 0) / capacity if other_ticks >= MIN_TICKS else 0.0
            steal = max(steal_ticks, 0) / capacity if steal_ticks >= MIN_TICKS else 0.0
        spread = (weighted_median(self.spreads, self.weights)
                  if self.spreads and sum(self.weights) > 0 else None)
        reasons = []
        if other > self.other_limit:
            whose = f"the {cores} available cores'" if cores > 1 else "the one available core's"
            reasons.append(f"other processes used {100 * other:.0f} % of {whose} time "
                           f"(limit {100 * self.other_limit:.0f} %)")
        if steal > self.steal_limit:
            reasons.append(f"steal time {100 * steal:.0f} % (limit {100 * self.steal_limit:.0f} %)")
        notes = []
        if spread is not None and spread > self.spread_limit:
            notes.append(f"repeated samples spread {100 * spread:.0f} % (limit {100 * self.spread_limit:.0f} %)")
        if (note := handoff_note(self.handoffs)) is not None:
            notes.append(note)
        return Load(wall_seconds=wall, cores_available=cores, other_cpu=min(other, 1.0), steal=min(steal, 1.0),
                    spread=spread, disturbed=bool(reasons), reasons=reasons, notes=notes,
                    handoff_seconds=list(self.handoffs))


def worst_of(whole: Load, parts: dict[str, Load]) -> Load:
    """The load of a run made of parts (a calibration's sweeps), each with its own monitor:
    `whole`'s figures, disturbed when it or any part is, with each disturbed part's reasons
    named by the part ('float32/strided: other processes used 31 % ...'); the hand-off samples
    of the whole and every part, judged together (handoff_note). A short part can be
    disturbed while the whole run's average is not: a 2 s burst of another process during
    a 7 s strided sweep made it predict the examples 20-37 % slow, while the calibration's
    57 s averaged 7 % of other load (2026-12-01)."""
    reasons = list(whole.reasons) + [f"{name}: {reason}" for name, part in parts.items() for reason in part.reasons]
    handoffs = list(whole.handoff_seconds) + [h for part in parts.values() for h in part.handoff_seconds]
    notes = [note for note in whole.notes if note != handoff_note(whole.handoff_seconds)]
    if (note := handoff_note(handoffs)) is not None:
        notes.append(note)
    return Load(wall_seconds=whole.wall_seconds, cores_available=whole.cores_available, other_cpu=whole.other_cpu,
                steal=whole.steal, spread=whole.spread, disturbed=bool(reasons), reasons=reasons,
                notes=notes, handoff_seconds=handoffs)
