"""The data-parallel wrapper backend (DESIGN.md "Data-parallel SG"; docs/extending.md, "Adding a
backend"): one worker's SG step out of P, predicted. Pure: no clock, no torch.

With P workers each takes I/P instances of the mini-batch I. A worker's rows are the wrapped
backend's rows at I/P ("numpy" or "torch", timed by the profile exactly as a single-machine step
of I/P instances), then one ``allreduce`` row per collective (phase and kind "communication")
timed by the ring model with the link's alpha and beta (costmodel.machine.parallel):

- NumPy reference: one row per layer with weights, in the order the backward produces them
  (L down to 1), one collective call per gradient of the layer (dW^m, db^m, and dgamma^m,
  dbeta^m with batch normalization), as `measure --workers P` runs them;
- torch: one row per DistributedDataParallel bucket (25 MiB, the first 1 MiB), layer 0.

The step is the named composition (costmodel.machine.parallel.compose) of the compute rows and
the allreduces: ``sum`` (blocking allreduces) or ``overlap`` (each allreduce starts when its
gradients are final and the ring is free; the update waits for the last one).

What the numbers of the result (a `Prediction` with its `data_parallel`) mean:

- a row's `seconds` are one worker's; a communication row's `bytes` are the gradients it sums
  (the ring model's n, counted as read; each worker sends and receives 2 (P-1)/P n of them:
  ``extra["sent_bytes"]``), its `terms` the ring model's ``latency`` (2 (P-1) alpha per message)
  and ``bandwidth`` (2 (P-1)/P n beta) terms;
- `total_seconds` is the composed step, and a row's `fraction` is its seconds over that step.
  Under ``sum`` the fractions add up to 1. Under ``overlap`` the communication the backward
  hides runs at the same time as compute rows and is counted in both, so the fractions add up
  to 1 + hidden / step: a row's fraction is then "its time against the step", not a slice of it;
- the step's interval is the single-machine interval of the worker's compute at I/P (a factor on
  every compute row: the profile's step interval, or the rows' bounds summed), composed with the
  allreduces; an allreduce row has no interval of its own (seconds_low = seconds_high = seconds);
- P = 1: nothing is allreduced, so there are NO communication rows (an op that does not run is
  absent, never a row of 0 s), and the rows and totals are the single-machine prediction's,
  exactly; speedup and efficiency are 1.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

from costmodel.errors import UsageError
from costmodel.machine.backends import backend as get_backend
from costmodel.machine.backends.base import Backend, ModelKey, Row
from costmodel.machine.parallel import (COMMUNICATION, COMPOSITIONS, COMPUTE_PHASES, Collective, GradTensor,
                                        Row as ComputeRow, Scheduled, bucket_collectives, compose, efficiency,
                                        gradient_tensors, layer_collectives, ring_features, speedup)
from costmodel.machine.links import Link, given_link, network_link
from costmodel.machine.predict import PredictedRow, Prediction, predict

if TYPE_CHECKING:
    from costmodel.machine.profile import Profile
    from costmodel.machine.timemodel import Machine
    from costmodel.model.arch import Architecture

ALLREDUCE = "allreduce"
#: the key of the allreduce rows: timed by the ring model (the link's alpha and beta), not by a
#: model of the profile's entries
ALLREDUCE_MODEL = ModelKey((ALLREDUCE,))
#: the ring model's features: t = alpha * ring_latency + beta * ring_bytes (ring_features)
RING_FEATURES = ("ring_latency", "ring_bytes")

_GRAD_TEXT = {"W": ("dW$m", "dW$m"), "b": ("db$m", "db$m"), "gamma": ("dgamma$m", r"d\gamma$m"),
              "beta": ("dbeta$m", r"d\beta$m")}


@dataclass(frozen=True)
class Setting:
    """How the step is spread: P workers over a link, composed as ``sum`` or ``overlap``."""

    workers: int
    link: Link
    composition: str = "sum"

    def __post_init__(self):
        check_workers(self.workers)
        if self.composition not in COMPOSITIONS:
            raise UsageError(f"composition: {self.composition!r} is not one of {', '.join(COMPOSITIONS)}")


def check_workers(workers) -> int:
    """P as an int >= 1; a one-line UsageError otherwise."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"--workers: {workers!r} workers; give a whole number, at least 1")
    return workers


def worker_batch(batch: int, workers: int) -> int:
    """I/P, the instances each worker takes; a UsageError naming a batch that works when P does
    not divide I."""
    check_workers(workers)
    if batch % workers:
        lower = batch - batch % workers
        works = f"--batch {lower} or {lower + workers}" if lower else f"--batch {workers}"
        raise UsageError(f"--workers {workers} does not divide the mini-batch I={batch}: every worker takes I/P "
                         f"instances; give {works}")
    return batch // workers


def given_options(*, workers: int | None, link: str | None = None, latency: str | None = None,
                  bandwidth: str | None = None, overlap: bool = False, sweep_workers: bool = False) -> Link | None:
    """The command line's data-parallel options, checked before anything is predicted: P >= 1,
    the given link (costmodel.machine.parallel.given_link, None when none is given), and that
    --link, --latency, --bandwidth and --overlap come with --workers P (or a sweep of workers)."""
    if workers is not None:
        check_workers(workers)
    given = given_link(link=link, latency=latency, bandwidth=bandwidth)
    if workers is None and not sweep_workers:
        named = [name for name, value in (("--link", link), ("--latency", latency), ("--bandwidth", bandwidth),
                                          ("--overlap", overlap or None)) if value is not None]
        if named:
            raise UsageError(f"{named[0]} goes with --workers P (data-parallel SG)")
    return given


def setting_for(profile: "Profile", workers: int, given: Link | None = None, overlap: bool = False) -> Setting:
    """The Setting of P workers over the `given` link, else the profile's network section (a
    UsageError when it has none), composed as ``overlap`` or ``sum``."""
    return Setting(workers, network_link(profile.network, given), "overlap" if overlap else "sum")


@dataclass(frozen=True)
class DataParallel:
    """The step-level numbers of a data-parallel prediction (seconds of one worker's step).

    compute_seconds: the compute rows (forward, backward, update at I/P); communication_seconds:
    every allreduce; exposed_communication_seconds: what the step takes beyond its compute (all
    of the communication under ``sum``, what the backward does not hide under ``overlap``);
    one_worker_seconds: the single-machine step on the whole I, against which speedup and
    efficiency are taken; latency_seconds and bandwidth_seconds: the ring model's two terms
    summed over the allreduces; gradient_bytes: the bytes of all gradients (allreduced once per
    step)."""

    workers: int
    worker_batch: int
    composition: str
    link: Link
    compute_seconds: float
    backward_seconds: float
    communication_seconds: float
    exposed_communication_seconds: float
    step_seconds: float
    one_worker_seconds: float
    gradient_bytes: int
    latency_seconds: float
    bandwidth_seconds: float
    collectives: int
    schedule: tuple[Scheduled, ...] = ()

    @property
    def hidden_communication_seconds(self) -> float:
        """Communication the backward hides (0 under ``sum``)."""
        return self.communication_seconds - self.exposed_communication_seconds

    @property
    def speedup(self) -> float:
        """T(1) / T(P) (costmodel.machine.parallel.speedup)."""
        return speedup(self.one_worker_seconds, self.step_seconds)

    @property
    def efficiency(self) -> float:
        """speedup / P."""
        return efficiency(self.one_worker_seconds, self.step_seconds, self.workers)

    @property
    def communication_bound(self) -> bool:
        """The allreduces take at least as long as a worker's compute: no overlap can hide them
        (under ``sum``: the exposed communication is at least the compute). False at P = 1."""
        return self.collectives > 0 and self.communication_seconds >= self.compute_seconds


def _grad_text(tensors: Sequence[GradTensor]) -> tuple[str, str]:
    names = [_GRAD_TEXT.get(t.name, (f"d{t.name}$m", f"d{t.name}$m")) for t in tensors]
    return (f"allreduce({', '.join(n for n, _ in names)})",
            r"\mathrm{allreduce}(" + ", ".join(m for _, m in names) + ")")


def communication_row(c: Collective, P: int, tensors: Sequence[GradTensor] = ()) -> Row:
    """The allreduce row of a collective (module docstring): its bytes are the gradients it sums;
    `tensors` (of its layer) name them in its notation."""
    if c.bucket is None:
        text, mathtext = _grad_text([t for t in tensors if t.layer == c.layer])
    else:
        text = f"allreduce(bucket {c.bucket}: layers {', '.join(map(str, c.layers))})"
        mathtext = r"\mathrm{allreduce}(\mathrm{bucket}\ " + str(c.bucket) + ")"
    n = c.nbytes
    return Row(c.layer, c.layer_type, (ALLREDUCE,), COMMUNICATION, COMMUNICATION, 0, n, 0, 0, ALLREDUCE_MODEL,
               text, mathtext, basis={"messages": len(c.messages), "message_bytes": n},
               extra={"messages": len(c.messages), "sent_bytes": 2 * (P - 1) / P * n})


def ring_terms(c: Collective, P: int, link: Link) -> dict[str, float]:
    """The ring model's two terms of a collective, summed over its messages: latency
    (2 (P-1) alpha each) and bandwidth (2 (P-1)/P n beta each)."""
    features = [ring_features(n, P) for n in c.messages]
    return {"latency": link.alpha_seconds * sum(f[0] for f in features),
            "bandwidth": link.beta_seconds_per_byte * sum(f[1] for f in features)}


class DataParallelBackend:
    """The wrapper as a backend: the rows of one worker of P running `inner` ("numpy" or
    "torch") on I/P instances, then its allreduces over `link`. Not registered under a name of
    its own: it wraps whichever backend is chosen (`--backend`) when `--workers` is given."""

    def __init__(self, inner: Backend, workers: int, link: Link):
        self.inner, self.workers, self.link = inner, check_workers(workers), link
        self.name, self.impls = inner.name, inner.impls

    def collectives(self, arch: "Architecture") -> list[Collective]:
        """The allreduces of a step of `arch`, in the order they are issued (none for P = 1)."""
        if self.workers == 1:
            return []
        tensors = gradient_tensors(arch)
        alpha, beta = self.link.alpha_seconds, self.link.beta_seconds_per_byte
        if self.inner.name == "torch":
            return bucket_collectives(tensors, self.workers, alpha, beta)
        return layer_collectives(tensors, self.workers, alpha, beta)

    def communication_rows(self, arch: "Architecture") -> list[Row]:
        tensors = gradient_tensors(arch)
        return [communication_row(c, self.workers, tensors) for c in self.collectives(arch)]

    def rows(self, arch: "Architecture", impl: str, threads: int, machine: "Machine") -> list[Row]:
        """One worker's rows: the wrapped backend's at I/P, then the allreduce rows."""
        worker = arch.with_batch(worker_batch(arch.batch, self.workers))
        return self.inner.rows(worker, impl, threads, machine) + self.communication_rows(arch)

    def features(self, model: ModelKey, impl: str = "") -> tuple[str, ...]:
        return RING_FEATURES if model == ALLREDUCE_MODEL else self.inner.features(model, impl)

    def calibration_hint(self, dtype: str, impl: str, threads: int) -> str:
        return self.inner.calibration_hint(dtype, impl, threads)

    def setting(self, impl: str) -> str:
        return f"{self.inner.setting(impl)}, {self.workers} worker{'s' if self.workers != 1 else ''}"


def _compute_rows(rows: Sequence[PredictedRow], scale: float = 1.0) -> list[ComputeRow]:
    """The compute rows as costmodel.machine.parallel.Row, in phase order (stable), their seconds
    times `scale`."""
    rank = {phase: i for i, phase in enumerate(COMPUTE_PHASES)}
    ordered = sorted(rows, key=lambda r: rank.get(r.phase, len(rank)))
    return [ComputeRow(r.layer, r.name, r.phase, r.seconds * scale) for r in ordered]


def data_parallel(arch: "Architecture", worker: Prediction, one_worker_seconds: float, setting: Setting) -> Prediction:
    """One worker's predicted step (`worker`: the single-machine prediction at I/P) with the
    allreduces of `arch` (at the whole I) added and composed (module docstring); speedup and
    efficiency against `one_worker_seconds` (the single-machine step on the whole I)."""
    P = setting.workers
    be = DataParallelBackend(get_backend(worker.backend), P, setting.link)
    collectives = be.collectives(arch)
    tensors = gradient_tensors(arch)
    step = compose(_compute_rows(worker.rows), collectives, setting.composition, P)
    if collectives:
        total = step.step_seconds
        # the compute's interval (the worker's step bounds, as a factor on every compute row), composed
        bounds = []
        for bound in (worker.total_seconds_low, worker.total_seconds_high):
            scale = bound / worker.total_seconds if worker.total_seconds > 0 else 1.0
            bounds.append(compose(_compute_rows(worker.rows, scale), collectives, setting.composition, P).step_seconds)
        low, high = bounds
        share = 1 / total if total > 0 else 0.0
        comm = tuple(PredictedRow(communication_row(c, P, tensors), c.seconds, c.seconds, c.seconds, None,
                                  c.seconds * share, ring_terms(c, P, setting.link)) for c in collectives)
        rows = tuple(replace(r, fraction=r.seconds * share) for r in worker.rows) + comm
        exposed = step.exposed_communication_seconds
    else:  # P = 1: the single-machine prediction, exactly
        total, low, high, rows, comm, exposed = (worker.total_seconds, worker.total_seconds_low,
                                                 worker.total_seconds_high, worker.rows, (), 0.0)
    terms = [r.terms for r in comm]
    dp = DataParallel(workers=P, worker_batch=worker.batch, composition=setting.composition, link=setting.link,
                      compute_seconds=step.compute_seconds, backward_seconds=step.backward_seconds,
                      communication_seconds=step.communication_seconds, exposed_communication_seconds=exposed,
                      step_seconds=total, one_worker_seconds=one_worker_seconds,
                      gradient_bytes=sum(t.nbytes for t in tensors),
                      latency_seconds=sum(t["latency"] for t in terms),
                      bandwidth_seconds=sum(t["bandwidth"] for t in terms), collectives=len(collectives),
                      schedule=step.schedule)
    interval = worker.interval if not collectives else (f"{worker.interval}, of one worker's compute at I/P, "
                                                           "composed with the allreduces")
    return Prediction(arch, worker.backend, worker.impl, worker.threads, rows, total, low, high, worker.profile_info,
                      interval=interval, data_parallel=dp)


def predict_data_parallel(arch: "Architecture", profile: "Profile", setting: Setting, *, impl: str = "index",
                          threads: int | None = None, batch: int | None = None, backend: str = "numpy",
                          provenance=None, one_worker: Prediction | None = None) -> Prediction:
    """The predicted step of one worker of `setting.workers` on the mini-batch of `arch` (or
    `batch`): the single-machine prediction (costmodel.machine.predict.predict) at I/P, the
    allreduces, the composition, and speedup and efficiency against the single-machine
    prediction on the whole I (`one_worker`, predicted here when not given). Each worker is a
    machine like the profile's, with `threads` threads.

    Errors: UsageError when P does not divide I (naming a batch that works), or for P < 1; the
    errors of `predict`."""
    arch = arch.with_batch(batch)
    n = worker_batch(arch.batch, setting.workers)
    if one_worker is None:
        one_worker = predict(arch, profile, impl=impl, threads=threads, backend=backend, provenance=provenance)
    worker = one_worker if n == arch.batch else predict(arch.with_batch(n), profile, impl=impl,
                                                        threads=one_worker.threads, backend=backend,
                                                        provenance=provenance)
    return data_parallel(arch, worker, one_worker.total_seconds, setting)
