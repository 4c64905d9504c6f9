"""One data-parallel SG step on a worker, timed per op, with its allreduces.

Worker r of P takes instances r I/P .. (r+1) I/P - 1 of the mini-batch (P must divide I), runs the
step on them and sums the gradients with the other workers through torch.distributed; the update
divides the summed gradient by the whole I, so every worker applies the update of the whole
mini-batch (simpleNN's loss is a sum over instances: the allreduce SUMs).

- NumPy reference (LayerAllreduce): as soon as the backward has a layer's dW^m and db^m (after its
  bias_grad), both are allreduced in place: torch.from_numpy shares their memory, no copy. Without
  overlap each call blocks; with overlap it is asynchronous (async_op=True) and the backward goes
  on; the step waits for all of them before the update.
- PyTorch (calib.parallel.ddp.DDPStep): DistributedDataParallel with its buckets (25 MiB, the first 1 MiB), through a
  communication hook that times each bucket's allreduce (SUM) and, without overlap, waits for it
  in the hook.

Rows: the backend's compute rows (phases forward, backward, update; calib.measure.summarize), and
one ``allreduce`` row (phase ``communication``) per layer (NumPy) or per bucket (DDP): ``seconds``
is the time in the collective call, ``wait_seconds`` the time the step waited for it before the
update; the row's fraction counts both, so the fractions of a worker sum to 1.
"""

from __future__ import annotations

from time import perf_counter_ns

import numpy as np

from costmodel.errors import UsageError
from costmodel.model.arch import Architecture
from costmodel.model.ops import OpKey

ALLREDUCE = "allreduce"
WAIT = "allreduce_wait"  # a timer key only: folded into the allreduce row's wait_seconds
COMMUNICATION = "communication"


def per_worker(I: int, P: int) -> int:
    """I/P, the instances of each worker; a UsageError when P does not divide I."""
    if I % P:
        raise UsageError(f"--workers {P} does not divide the mini-batch I={I}: every worker takes I/P "
                         f"instances; choose a --batch that {P} divides (e.g. {max(P, I - I % P)})")
    return I // P


def shard(X: np.ndarray, Y: np.ndarray, rank: int, P: int) -> tuple[np.ndarray, np.ndarray]:
    """Worker `rank`'s instances of the mini-batch (axis 1 of both layouts: (d, I, a, b) or
    (n, I), and Y (n_classes, I)), contiguous."""
    n = per_worker(X.shape[1], P)
    part = slice(rank * n, (rank + 1) * n)
    return np.ascontiguousarray(X[:, part]), np.ascontiguousarray(Y[:, part])


def broadcast_(arrays: list[np.ndarray], src: int = 0) -> None:
    """Overwrite every array with rank `src`'s, in place (torch.from_numpy, no copy)."""
    import torch
    import torch.distributed as dist

    for a in arrays:
        dist.broadcast(torch.from_numpy(a), src)


# -- the summary of a worker's steps ---------------------------------------------------------

def worker_summary(compute: list[dict], comm: list[dict], step_seconds: list[float], order: list[OpKey],
                   comm_rows: dict) -> dict:
    """A worker's measure JSON: the compute rows (calib.measure.summarize of `compute`, one dict
    OpKey -> seconds per step), then the allreduce rows: `comm` holds per step {key: (call
    seconds, wait seconds)}, `comm_rows` per key the row's fixed fields (layer, layer_type,
    bytes, calls, ...). total_seconds sums every row's median seconds and waits; compute_seconds,
    communication_seconds (calls and waits) and wait_seconds are medians over the steps, and
    wait_seconds_per_step lists what each step waited before its update."""
    from calib.measure import summarize

    base = summarize(compute, step_seconds, order)
    rows = []
    for key, fixed in comm_rows.items():
        rows.append({**fixed, "op": ALLREDUCE, "phase": COMMUNICATION,
                     "seconds": float(np.median([s[key][0] if key in s else 0.0 for s in comm])),
                     "wait_seconds": float(np.median([s[key][1] if key in s else 0.0 for s in comm]))})
    total = base["total_seconds"] + sum(r["seconds"] + r["wait_seconds"] for r in rows)
    ops = [r for r in base["ops"] if r["phase"] != "update"] + rows + [r for r in base["ops"] if r["phase"] == "update"]
    for r in ops:
        r["fraction"] = (r["seconds"] + r.get("wait_seconds", 0.0)) / total if total > 0 else 0.0
    per_step_compute = [sum(s.values()) for s in compute]
    per_step_comm = [sum(c + w for c, w in s.values()) for s in comm]
    per_step_wait = [sum(w for _, w in s.values()) for s in comm]
    return {
        "total_seconds": total,
        "step_seconds": base["step_seconds"],
        "coverage": float(np.median([(a + b) / t for a, b, t in zip(per_step_compute, per_step_comm, step_seconds)])),
        "compute_seconds": float(np.median(per_step_compute)),
        "communication_seconds": float(np.median(per_step_comm)),
        "wait_seconds": float(np.median(per_step_wait)),
        "wait_seconds_per_step": per_step_wait,
        "ops": ops,
    }


def worker_identity(ctx) -> dict:
    return {"rank": ctx.rank, "host": ctx.host, "pid": ctx.pid,
            "cores": list(ctx.cores) if ctx.cores is not None else None}


# -- the NumPy reference -----------------------------------------------------------------------

class LayerAllreduce:
    """The reference CNN's hooks (ReferenceCNN.hook_grads): allreduce (SUM) every gradient of a
    layer (dW^m, db^m; dgamma^m, dbeta^m with batch normalization: layer.parameters()) in place
    as soon as the backward has them; with `overlap` asynchronously, waited for before the update.

    Timer laps: OpKey(m, kind, "allreduce", "communication") closes after the calls,
    OpKey(m, kind, "allreduce_wait", "communication") after waiting for layer m's."""

    def __init__(self, overlap: bool):
        import torch
        import torch.distributed as dist

        self.torch, self.dist, self.overlap = torch, dist, overlap
        self.pending: list[tuple] = []

    def grads_ready(self, layer, tm) -> None:
        tensors = [self.torch.from_numpy(grad) for _, grad in layer.parameters().values()]
        if self.overlap:
            self.pending.append((layer, [self.dist.all_reduce(t, async_op=True) for t in tensors]))
        else:
            for t in tensors:
                self.dist.all_reduce(t)
        tm.lap(layer.key(ALLREDUCE, COMMUNICATION))

    def before_update(self, tm) -> None:
        for layer, works in self.pending:
            for work in works:
                work.wait()
            tm.lap(layer.key(WAIT, COMMUNICATION))
        self.pending.clear()


def numpy_worker(arch: Architecture, impl: str, seed: int, threads: int, rank: int, P: int, overlap: bool):
    """(cnn, X_r, Y_r): worker `rank`'s reference CNN at I/P with rank 0's weights and the
    allreduce hooks installed, and its share of the seeded synthetic mini-batch."""
    from calib.cnn import ReferenceCNN
    from calib.measure import synthetic_batch
    from calib.memory import check_memory

    local = arch.with_batch(per_worker(arch.batch, P))
    check_memory(local, impl)
    X, Y = synthetic_batch(arch, seed)
    Xr, Yr = shard(X, Y, rank, P)
    cnn = ReferenceCNN(local, impl=impl, seed=seed, threads=threads)
    broadcast_(list(cnn.parameters().values()))
    comm = LayerAllreduce(overlap)
    cnn.hook_grads(comm.grads_ready, comm.before_update, update_batch=arch.batch)
    return cnn, Xr, Yr


def measure_numpy(ctx, arch: Architecture, impl: str, steps: int, warmup: int, overlap: bool, seed: int = 0) -> dict:
    """Task of a worker (calib.parallel.launch.run): warmup + steps data-parallel steps of the
    reference CNN on this worker's share of a synthetic batch, each from the same weights and
    after a barrier; the worker's rows (worker_summary)."""
    import torch.distributed as dist

    from calib.timer import OpTimer

    cnn, Xr, Yr = numpy_worker(arch, impl, seed, ctx.threads, ctx.rank, ctx.world_size, overlap)
    params = cnn.state()
    start = [a.copy() for a in params]
    timer = OpTimer()
    compute, comm, walls = [], [], []
    for i in range(warmup + steps):
        for a, a0 in zip(params, start):
            np.copyto(a, a0)
        dist.barrier()
        timer.reset()
        t0 = perf_counter_ns()
        cnn.step(Xr, Yr, timer)
        t1 = perf_counter_ns()
        if i < warmup:
            continue
        walls.append((t1 - t0) * 1e-9)
        seconds = timer.seconds()
        compute.append({k: s for k, s in seconds.items() if k.phase != COMMUNICATION})
        comm.append({k.layer: (s, seconds.get(k._replace(op=WAIT), 0.0))
                     for k, s in seconds.items() if k.op == ALLREDUCE})
    rows = {layer.m: {"layer": layer.m, "layer_type": layer.sz.kind,
                      "bytes": sum(grad.nbytes for _, grad in layer.parameters().values()),
                      "calls": len(layer.parameters())}
            for layer in reversed(cnn.layers) if layer.parameters()}
    order = [k for k in timer.keys() if k.phase != COMMUNICATION]
    return {**worker_identity(ctx), "batch": cnn.I, "impl": impl,
            **worker_summary(compute, comm, walls, order, rows)}


# -- PyTorch under DistributedDataParallel -----------------------------------------------------


# -- checks (tests and the benchmark) ----------------------------------------------------------

def numpy_grads_after_allreduce(ctx, arch: Architecture, impl: str, overlap: bool, steps: int, seed: int = 0) -> dict:
    """Task: one data-parallel step of the reference CNN, then its gradients by name (the sums over
    the whole mini-batch: ReferenceCNN.gradients), then `steps` more steps; the parameters at the
    end by name."""
    cnn, Xr, Yr = numpy_worker(arch, impl, seed, ctx.threads, ctx.rank, ctx.world_size, overlap)
    cnn.step(Xr, Yr)
    grads = cnn.gradients()
    for _ in range(steps):
        cnn.step(Xr, Yr)
    return {"grads": grads, "params": {name: a.copy() for name, a in cnn.parameters().items()}}


