"""Data-parallel SG on P workers: the allreduce's time and how it composes with a worker's step
(DESIGN.md, "Data-parallel SG"). Pure: no clock, no torch; every time comes in as a number.

With P workers each takes I/P instances of the mini-batch and runs the step on them; the
gradients are summed by an allreduce and every worker applies the same update. A worker's step is
then its compute (the single-machine rows at I/P: phases forward, backward, update) plus the
allreduces (phase ``communication``), composed in one of two named ways, as PALEO names its
compositions (Qi, Sparks, Talwalkar, "Paleo: a performance model for deep neural networks",
ICLR 2017):

- ``sum``: compute + communication (every allreduce blocks the backward: ``measure --workers P``
  without ``--overlap``);
- ``overlap``: the backward and the allreduces overlap: each allreduce starts when its gradients
  are final and the ring is free (one collective at a time, in issue order); the update starts
  when the backward and the last allreduce are done (``--overlap``, and DDP as shipped).

The allreduce is the ring algorithm's (a reduce-scatter then an allgather, each P - 1 steps of
n/P bytes: Thakur, Rabenseifner and Gropp, "Optimization of collective communication operations
in MPICH", IJHPCA 2005; Patarasuk and Yuan, "Bandwidth optimal all-reduce algorithms for
clusters of workstations", JPDC 2009):

    t(n) = 2 (P - 1) alpha + 2 (P - 1)/P n beta

alpha: seconds per message (latency), beta: seconds per byte (the link's and the reduction's).
Units: seconds and bytes throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Sequence

from costmodel.model.arch import Architecture

COMPOSITIONS = ("sum", "overlap")
Composition = Literal["sum", "overlap"]
COMPUTE_PHASES = ("forward", "backward", "update")
COMMUNICATION = "communication"

#: DistributedDataParallel's buckets (torch/nn/parallel/distributed.py: bucket_cap_mb=25, MiB;
#: torch.distributed._DEFAULT_FIRST_BUCKET_BYTES for the first bucket)
DDP_BUCKET_CAP_BYTES = 25 * 1024 * 1024
DDP_FIRST_BUCKET_BYTES = 1024 * 1024


def ring_allreduce_seconds(nbytes: float, P: int, alpha: float, beta: float) -> float:
    """Seconds of one ring allreduce of `nbytes` bytes among P workers:
    2 (P-1) alpha + 2 (P-1)/P nbytes beta (module docstring); 0 for P = 1 (nothing to sum).

    Errors: ValueError for P < 1, a negative size, alpha or beta."""
    if P < 1:
        raise ValueError(f"P must be >= 1, not {P}")
    if nbytes < 0 or alpha < 0 or beta < 0:
        raise ValueError("nbytes, alpha and beta must be >= 0")
    return 2 * (P - 1) * alpha + 2 * (P - 1) / P * nbytes * beta


def ring_features(nbytes: float, P: int) -> tuple[float, float]:
    """The two columns the ring model is linear in: (2 (P-1), 2 (P-1)/P nbytes), so that
    t = alpha * first + beta * second (what a fit of alpha and beta regresses on)."""
    return 2.0 * (P - 1), 2.0 * (P - 1) / P * nbytes


# -- gradients and collectives ---------------------------------------------------------------

@dataclass(frozen=True)
class GradTensor:
    """One gradient the allreduce sums: dW^m (name "W") or db^m (name "b") of layer m."""

    layer: int
    layer_type: str
    name: str
    numel: int
    nbytes: int


def gradient_tensors(arch: Architecture) -> list[GradTensor]:
    """The gradients of a step in forward order (W^1, b^1, [gamma^1, beta^1,] W^2, ...), as the
    reference CNN and PyTorch hold them: W^m of LayerSizes.weight_shape (conv d^{m+1} x
    h^m h^m d^m/g, full n_out x n_in), b^m one value per output, and with batch normalization
    gamma^m and beta^m one each; layers without weights have none. Bytes at the architecture's
    dtype."""
    width = arch.itemsize
    out: list[GradTensor] = []
    for sz in arch.sizes():
        shape = sz.weight_shape
        if shape is None:
            continue
        n_out = shape[0]
        names = [("W", shape[0] * shape[1]), ("b", n_out)]
        if sz.batch_norm:
            names += [("gamma", n_out), ("beta", n_out)]
        out += [GradTensor(sz.m, sz.kind, name, n, n * width) for name, n in names]
    return out


@dataclass(frozen=True)
class Collective:
    """One allreduce row: the gradients of `layers`, summed in one collective call per entry of
    `messages` (bytes each), taking `seconds` in all.

    ``layer`` is the row's layer (the reference CNN: one row per layer) or 0 (a DDP bucket,
    ``bucket`` its index in DDP's order)."""

    layer: int
    layer_type: str
    layers: tuple[int, ...]
    messages: tuple[int, ...]
    seconds: float
    bucket: int | None = None

    @property
    def nbytes(self) -> int:
        return sum(self.messages)


def layer_collectives(tensors: Sequence[GradTensor], P: int, alpha: float, beta: float) -> list[Collective]:
    """The reference CNN's allreduces (calib/parallel): one row per layer with weights, in the
    order the backward produces them (L down to 1), one collective per gradient of the layer
    (dW^m, db^m, and dgamma^m, dbeta^m with batch normalization), each of the ring model's time."""
    by_layer: dict[int, list[GradTensor]] = {}
    for t in tensors:
        by_layer.setdefault(t.layer, []).append(t)
    rows = []
    for m in sorted(by_layer, reverse=True):
        ts = by_layer[m]
        messages = tuple(t.nbytes for t in ts)
        rows.append(Collective(m, ts[0].layer_type, (m,), messages,
                               sum(ring_allreduce_seconds(n, P, alpha, beta) for n in messages)))
    return rows


def ddp_buckets(tensors: Sequence[GradTensor], cap_bytes: int = DDP_BUCKET_CAP_BYTES,
                first_cap_bytes: int = DDP_FIRST_BUCKET_BYTES) -> list[tuple[GradTensor, ...]]:
    """DistributedDataParallel's buckets after its first step: the gradients in the order they
    become ready (the reverse of the forward order), filled greedily; a bucket closes as soon as
    it holds at least its limit (the first bucket's limit is `first_cap_bytes`, every later one
    `cap_bytes`), so a bucket may exceed its limit by its last tensor
    (torch.distributed._compute_bucket_assignment_by_size, one dtype)."""
    buckets: list[tuple[GradTensor, ...]] = []
    current: list[GradTensor] = []
    size = 0
    for t in reversed(tensors):
        current.append(t)
        size += t.nbytes
        if size >= (first_cap_bytes if not buckets else cap_bytes):
            buckets.append(tuple(current))
            current, size = [], 0
    if current:
        buckets.append(tuple(current))
    return buckets


def bucket_collectives(tensors: Sequence[GradTensor], P: int, alpha: float, beta: float,
                       cap_bytes: int = DDP_BUCKET_CAP_BYTES,
                       first_cap_bytes: int = DDP_FIRST_BUCKET_BYTES) -> list[Collective]:
    """DDP's allreduces: one row (one collective of the bucket's bytes) per bucket of
    ddp_buckets, in DDP's order."""
    rows = []
    for i, bucket in enumerate(ddp_buckets(tensors, cap_bytes, first_cap_bytes)):
        n = sum(t.nbytes for t in bucket)
        layers = tuple(sorted({t.layer for t in bucket}, reverse=True))
        rows.append(Collective(0, "bucket", layers, (n,), ring_allreduce_seconds(n, P, alpha, beta), bucket=i))
    return rows


# -- the step --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One compute row of a worker's step (an op, or an op group), in the order the step runs."""

    layer: int
    op: str
    phase: str
    seconds: float


#: an op whose end makes its layer's dW^m or db^m final (a torch group contains one of them)
GRAD_OPS = ("conv_grad_W", "full_grad_W", "bias_grad")


def grads_ready(rows: Sequence[Row]) -> dict[int, float]:
    """Per layer with weights, the time from the start of the step at which its gradients are
    final: the end of its last backward row that computes dW^m or db^m (an op of GRAD_OPS, or a
    group "a+b+..." containing one)."""
    t = 0.0
    ready: dict[int, float] = {}
    for row in rows:
        t += row.seconds
        if row.phase == "backward" and any(op in GRAD_OPS for op in row.op.split("+")):
            ready[row.layer] = t
    return ready


@dataclass(frozen=True)
class Scheduled:
    """A collective placed in time (seconds from the start of the step)."""

    collective: Collective
    ready: float
    start: float
    end: float


@dataclass(frozen=True)
class DataParallelStep:
    """A worker's step under one composition.

    compute_seconds: the compute rows' sum; communication_seconds: the collectives' sum;
    exposed_communication_seconds: what the step takes beyond its compute (all of it for
    ``sum``; what the backward does not hide for ``overlap``); step_seconds: the step."""

    composition: str
    workers: int
    compute_seconds: float
    backward_seconds: float
    communication_seconds: float
    exposed_communication_seconds: float
    step_seconds: float
    schedule: tuple[Scheduled, ...]

    @property
    def hidden_communication_seconds(self) -> float:
        """Communication the backward hides (0 for ``sum``)."""
        return self.communication_seconds - self.exposed_communication_seconds

    @property
    def communication_bound(self) -> bool:
        """True when the allreduces take at least as long as the worker's compute: no overlap
        could hide them."""
        return self.communication_seconds >= self.compute_seconds


def compose(rows: Sequence[Row], collectives: Sequence[Collective], composition: Composition,
            workers: int) -> DataParallelStep:
    """A worker's step from its compute rows (forward, then backward, then update, in the order
    they run) and the collectives (in the order they are issued), composed as ``sum`` or
    ``overlap`` (module docstring).

    Overlap: a collective is ready when the gradients of all its layers are final (grads_ready);
    it starts at max(ready, end of the previous collective) and lasts its seconds; the update
    starts at max(end of the backward, end of the last collective).

    Errors: ValueError for an unknown composition, a row of another phase, rows out of phase
    order, a negative time, or (overlap) a collective of a layer no row makes ready."""
    if composition not in COMPOSITIONS:
        raise ValueError(f"composition must be one of {', '.join(COMPOSITIONS)}, not {composition!r}")
    rank = {phase: i for i, phase in enumerate(COMPUTE_PHASES)}
    last = 0
    for row in rows:
        if row.phase not in rank:
            raise ValueError(f"row {row.layer}/{row.op} has phase {row.phase!r}, not one of "
                             f"{', '.join(COMPUTE_PHASES)}")
        if rank[row.phase] < last:
            raise ValueError(f"row {row.layer}/{row.op} ({row.phase}) after a later phase: rows must run "
                             "forward, backward, update")
        if row.seconds < 0:
            raise ValueError(f"row {row.layer}/{row.op}: negative seconds")
        last = rank[row.phase]
    for c in collectives:
        if c.seconds < 0:
            raise ValueError(f"collective of layers {c.layers}: negative seconds")
    compute = sum(r.seconds for r in rows)
    forward = sum(r.seconds for r in rows if r.phase == "forward")
    backward = sum(r.seconds for r in rows if r.phase == "backward")
    update = compute - forward - backward
    communication = sum(c.seconds for c in collectives)

    if composition == "sum":
        # blocking collectives: each runs where the backward issues it, and delays the rest
        shift, schedule, ready_at = 0.0, [], grads_ready(rows)
        for c in collectives:
            ready = max((ready_at.get(m, forward + backward) for m in c.layers), default=forward + backward) + shift
            schedule.append(Scheduled(c, ready, ready, ready + c.seconds))
            shift += c.seconds
        step = compute + communication
    else:
        ready_at = grads_ready(rows)
        schedule, free = [], 0.0
        for c in collectives:
            missing = [m for m in c.layers if m not in ready_at]
            if missing:
                raise ValueError(f"no backward row computes the gradients of layer {missing[0]}")
            ready = max(ready_at[m] for m in c.layers)
            start = max(ready, free)
            free = start + c.seconds
            schedule.append(Scheduled(c, ready, start, free))
        update_start = max(forward + backward, free)
        step = update_start + update
    return DataParallelStep(composition=composition, workers=workers, compute_seconds=compute,
                            backward_seconds=backward, communication_seconds=communication,
                            exposed_communication_seconds=communication if composition == "sum" else step - compute,
                            step_seconds=step,
                            schedule=tuple(schedule))


def speedup(step_one_worker: float, step_P: float) -> float:
    """Speedup of P workers over one worker on the same mini-batch I: T(1) / T(P)."""
    if step_one_worker <= 0 or step_P <= 0:
        raise ValueError("step times must be > 0")
    return step_one_worker / step_P


def efficiency(step_one_worker: float, step_P: float, P: int) -> float:
    """Parallel efficiency: speedup / P (1 is perfect scaling)."""
    if P < 1:
        raise ValueError(f"P must be >= 1, not {P}")
    return speedup(step_one_worker, step_P) / P


def communication_bound_batch(compute_seconds: Callable[[int], float], communication_seconds: float,
                              P: int, max_batch: int = 1 << 20) -> int | None:
    """The smallest mini-batch I (a multiple of P, up to max_batch) at which a worker's compute on
    I/P instances takes at least as long as the allreduces: below it the step is
    communication-bound (no overlap can hide the allreduces). The allreduces' time does not
    depend on I (they carry the gradients, whose size is the parameters'); the compute grows with
    I/P and is assumed non-decreasing in it.

    compute_seconds(n): seconds of a worker's compute rows at n instances. Returns P when even one
    instance per worker is compute-bound, None when max_batch is still communication-bound.
    Errors: ValueError for P < 1."""
    if P < 1:
        raise ValueError(f"P must be >= 1, not {P}")
    hi_n = max_batch // P
    if hi_n < 1:
        return None

    def compute_bound(n: int) -> bool:
        return compute_seconds(n) >= communication_seconds

    if compute_bound(1):
        return P
    lo, hi = 1, 2  # invariant: lo communication-bound; search hi by doubling, then bisect
    while not compute_bound(hi):
        if hi >= hi_n:
            return None
        lo, hi = hi, min(2 * hi, hi_n)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if compute_bound(mid):
            hi = mid
        else:
            lo = mid
    return hi * P


def rows_from(records: Iterable[dict]) -> list[Row]:
    """Compute rows from per-op records (dicts with layer, op, phase, seconds, as in the JSON of
    `measure` and `predict`); rows of phase ``communication`` are left out."""
    return [Row(int(r["layer"]), str(r["op"]), str(r["phase"]), float(r["seconds"]))
            for r in records if r["phase"] != COMMUNICATION]


def bandwidth_of(beta: float) -> float:
    """beta (seconds per byte) read as bytes per second (math.inf for beta = 0)."""
    return math.inf if beta == 0 else 1.0 / beta
