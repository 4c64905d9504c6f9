"""One data-parallel SG step of PyTorch on a worker (docs/data-parallel.md): DistributedDataParallel
with its buckets (25 MiB, the first 1 MiB), through a communication hook that times each
bucket's allreduce (SUM) and, without overlap, waits for it in the hook; the step's rows as
calib.parallel.step's NumPy worker's."""

from __future__ import annotations

from time import perf_counter_ns

import numpy as np

from costmodel.model.arch import Architecture
from costmodel.model.ops import OpKey

from calib.parallel.step import worker_identity, per_worker, shard, worker_summary


class BucketHook:
    """A DDP communication hook: allreduce (SUM) of each bucket, timed; without `overlap` it waits
    inside the hook, so the backward does not go on meanwhile.

    Per step (``start()``, then the step, then ``finish()``): per bucket the time in the call,
    the time its allreduce completed, and the time the autograd graph was done and DDP's
    finalization (which waits for every bucket) returned, from two final callbacks of the
    autograd engine (the first queued by the first bucket, before DDP's own; it queues the
    second, which runs after DDP's)."""

    def __init__(self, overlap: bool, layer_of: dict[int, int]):
        import torch
        import torch.distributed as dist

        self.torch, self.dist, self.overlap, self.layer_of = torch, dist, overlap, layer_of
        self.start()

    def start(self) -> None:
        self.buckets: dict[int, dict] = {}  # DDP rebuilds its buckets after the first step
        self.calls: dict[int, int] = {}
        self.done: dict[int, int] = {}
        self.graph_done = self.finalized = None

    def _graph_done(self) -> None:
        self.graph_done = perf_counter_ns()
        self.torch.autograd.Variable._execution_engine.queue_callback(self._finalized)

    def _finalized(self) -> None:
        self.finalized = perf_counter_ns()

    def __call__(self, bucket):
        i = bucket.index()
        if not self.calls:
            self.torch.autograd.Variable._execution_engine.queue_callback(self._graph_done)
        buffer = bucket.buffer()
        t0 = perf_counter_ns()
        work = self.dist.all_reduce(buffer, async_op=True)
        if not self.overlap:
            work.wait()
        self.calls[i] = perf_counter_ns() - t0
        self.buckets[i] = {"bytes": buffer.numel() * buffer.element_size(),
                           "layers": sorted({self.layer_of[p.data_ptr()] for p in bucket.parameters()}, reverse=True)}

        def completed(fut):
            self.done[i] = perf_counter_ns()
            return fut.value()[0]

        return work.get_future().then(completed)

    def finish(self) -> dict[int, tuple[float, float]]:
        """{bucket: (seconds in the call, seconds the step waited for it)}: the waits follow DDP's
        order, from the moment the graph was done."""
        t = self.graph_done if self.graph_done is not None else max(self.done.values(), default=0)
        out = {}
        for i in sorted(self.calls):
            end = self.done.get(i, t)
            out[i] = (self.calls[i] * 1e-9, max(0, end - t) * 1e-9)
            t = max(t, end)
        return out


def _bucket_hook(state: BucketHook, bucket):
    """DDP's communication hook signature (state, bucket) -> Future[Tensor]."""
    return state(bucket)


class DDPStep:
    """calib.backends.torch.TorchStep at I/P under DistributedDataParallel (default buckets)
    with a BucketHook; the layers keep their profiler ranges inside DDP's forward."""

    def __init__(self, arch: Architecture, seed: int, rank: int, P: int, overlap: bool):
        from calib.backends.torch import TorchStep, import_torch
        from calib.cnn import ReferenceCNN
        from calib.measure import synthetic_batch

        torch = import_torch()
        from torch.nn.parallel import DistributedDataParallel

        local = arch.with_batch(per_worker(arch.batch, P))
        X, Y = synthetic_batch(arch, seed)
        Xr, Yr = shard(X, Y, rank, P)
        ts = TorchStep(local, ReferenceCNN(local, seed=seed), Xr, Yr, ranges=True)
        ts.update_batch = arch.batch

        class Ranged(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.layers = torch.nn.ModuleList(ts.layers)

            def forward(self, x):
                return type(ts).forward(ts, x)

        self.ts = ts
        self.ddp = DistributedDataParallel(Ranged())  # broadcasts rank 0's weights
        ts.forward = self.ddp
        layer_of = {p.data_ptr(): m for m, ps in enumerate(ts.layer_params, start=1) for p in ps}
        self.hook = BucketHook(overlap, layer_of)
        self.ddp.register_comm_hook(self.hook, _bucket_hook)
        with torch.no_grad():  # the starting weights are now rank 0's
            for p, p0 in zip(ts.params, ts.start):
                p0.copy_(p)

    def step(self) -> dict[int, tuple[float, float]]:
        self.hook.start()
        self.ts.step()
        return self.hook.finish()


def _classify_ddp(step_event, arch: Architecture) -> dict:
    """calib.backends.torch.classify of one profiled step whose layer ranges sit inside DDP's
    forward range: the ranges are lifted out; what DDP's range spends outside them is the
    forward's "other" of layer 0."""
    from calib.backends.torch import OTHER
    from calib.backends.torch_events import classify

    ranges, outside = [], 0.0

    def lift(event) -> float:
        inside = 0.0
        for child in event.cpu_children:
            if child.name.startswith("costmodel:"):
                ranges.append(child)
                inside += child.cpu_time_total
            else:
                inside += lift(child)
        return inside

    for child in step_event.cpu_children:
        if child.name.startswith("costmodel:"):
            ranges.append(child)
        else:
            outside += (child.cpu_time_total - lift(child)) * 1e-6
    seconds = classify(ranges, arch)
    if outside > 0:
        seconds[(0, OTHER, "forward")] = seconds.get((0, OTHER, "forward"), 0.0) + outside
    return seconds


def measure_ddp(ctx, arch: Architecture, steps: int, warmup: int, overlap: bool, seed: int = 0) -> dict:
    """Task of a worker: warmup + steps unprofiled DDP steps, then `steps` steps under
    torch.profiler, each from the same weights and after a barrier. Rows: the op groups of
    `measure --backend torch` from the profiled steps, and one allreduce row per bucket. The
    time of the hook's calls and waits is taken out of the backward's "other" (the autograd
    engine's time), where the profiler puts it."""
    from calib.backends.torch import OTHER, import_torch
    from calib.backends.torch_events import layer_type, ordered

    torch = import_torch()
    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile

    s = DDPStep(arch, seed, ctx.rank, ctx.world_size, overlap)
    plain = []
    for i in range(warmup + steps):
        s.ts.restore()
        dist.barrier()
        t0 = perf_counter_ns()
        s.step()
        if i >= warmup:
            plain.append((perf_counter_ns() - t0) * 1e-9)
    comm, walls = [], []
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            s.ts.restore()
            dist.barrier()
            with torch.autograd.profiler.record_function(f"costmodel:step{i}"):
                t0 = perf_counter_ns()
                comm.append(s.step())
                walls.append((perf_counter_ns() - t0) * 1e-9)
    events = sorted((int(e.name.removeprefix("costmodel:step")), e) for e in prof.events()
                    if e.cpu_parent is None and e.name.startswith("costmodel:step"))
    local = s.ts.arch
    compute = []
    for (i, e), step_comm in zip(events, comm):
        seconds = _classify_ddp(e, local)
        other = (0, OTHER, "backward")
        seconds[other] = max(0.0, seconds.get(other, 0.0) - sum(c + w for c, w in step_comm.values()))
        compute.append({OpKey(m, layer_type(local, m), grp, phase): v for (m, grp, phase), v in seconds.items()})
    keys = set().union(*compute)
    order = [OpKey(m, layer_type(local, m), g, p) for m, g, p in ordered(local, {(k.layer, k.op, k.phase) for k in keys})]
    rows = {i: {"layer": 0, "layer_type": "bucket", "bucket": i, "layers": b["layers"], "bytes": b["bytes"], "calls": 1}
            for i, b in sorted(s.hook.buckets.items())}
    return {**worker_identity(ctx), "batch": local.batch, "impl": "torch", "torch_version": torch.__version__,
            "unprofiled_step_seconds": float(np.median(plain)),
            **worker_summary(compute, comm, walls, order, rows)}


def ddp_grads_after_allreduce(ctx, arch: Architecture, overlap: bool, steps: int, seed: int = 0) -> dict:
    """Task: the same for PyTorch under DDP (gradients as PyTorch lays them out: conv W as
    (d', d, h, h))."""
    s = DDPStep(arch, seed, ctx.rank, ctx.world_size, overlap)
    s.step()
    grads = [p.grad.detach().numpy().copy() for p in s.ts.params]
    for _ in range(steps):
        s.step()
    return {"grads": grads, "params": [p.detach().numpy().copy() for p in s.ts.params]}
