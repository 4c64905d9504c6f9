"""The same SG step in PyTorch on the CPU, timed per op with torch.profiler and mapped onto the
op names of the contract (docs/torch-mapping.md).

torch is optional (`pip install 'costmodel[torch]'`): it is imported inside the functions
only, and a missing torch is a one-line CostModelError, never a traceback.

Layer attribution: every layer's forward runs inside a record_function range
``costmodel:layer{m}:forward``, the loss inside ``costmodel:loss``, ``loss.backward()`` inside
``costmodel:backward`` and every layer's update inside ``costmodel:layer{m}:update``. A
backward event (``autograd::engine::evaluate_function: XBackward0``) carries the sequence
number of the forward op that created its node, so it is attributed to the layer (or the
loss) that ran that forward op.
"""

from __future__ import annotations

from time import perf_counter_ns
from typing import Callable

import numpy as np

from costmodel.model.arch import Architecture
from costmodel.errors import CostModelError
from costmodel.machine.backends import OTHER
from costmodel.model.ops import OpKey

from calib.measure import summarize
from calib.backends.torch_events import classify, event_children, layer_type, ordered

INSTALL_HINT = "PyTorch is not installed; install the extra with: pip install 'costmodel[torch]'"


class TorchMissing(CostModelError):
    """--backend torch without torch installed."""

    exit_code = 2


#: Kineto (torch.profiler's engine, torch 2.13) prints a "USDT: ... profiler_start" and a
#: "profiler_stop" line on stderr around every profiled step; levels above 5 silence them.
#: A KINETO_LOG_LEVEL the user set wins.
KINETO_QUIET = "6"


def import_torch():
    """torch, or a one-line CostModelError saying how to install it. Silences Kineto's per-step
    lines on stderr first (KINETO_QUIET), as the profiler is how the torch backend is timed."""
    import os

    os.environ.setdefault("KINETO_LOG_LEVEL", KINETO_QUIET)
    try:
        import torch
    except ImportError:
        raise TorchMissing(INSTALL_HINT) from None
    return torch


# ---------------------------------------------------------------------------------------------
# The network (also used by benchmarks/vs_torch.py)

def _modules(torch):
    """The small modules torch has no ready form of, made once torch is imported."""
    from torch import nn

    class ResidualAdd(nn.Module):
        """A residual block's addition F(X) + shortcut(X), then its activation."""

        def __init__(self, activation: nn.Module | None):
            super().__init__()
            self.activation = activation

        def forward(self, f, x):
            s = f + x
            return s if self.activation is None else self.activation(s)

    class FixedDropout(nn.Module):
        """Inverted dropout with a given mask (tests): x * keep / (1 - rate)."""

        def __init__(self, keep: np.ndarray, rate: float):
            super().__init__()
            self.register_buffer("keep", torch.from_numpy(np.ascontiguousarray(keep)))
            self.scale = 1.0 / (1.0 - rate)

        def forward(self, x):
            return x * self.keep * self.scale

    return ResidualAdd, FixedDropout


def _activation(nn, name: str):
    return {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[name]() if name != "none" else None


def _to_nchw(keep: np.ndarray) -> np.ndarray:
    """A dropout mask in the reference CNN's layout ((d, I, a, b) or (n, I)) in torch's."""
    return keep.transpose(1, 0, 2, 3) if keep.ndim == 4 else keep.T


def torch_layers(arch: Architecture, cnn=None, dropout_masks: dict | None = None) -> list:
    """One module per layer m = 1..L of the flat list, with the reference CNN's parameters and
    batch norm's running averages (cnn None: torch's own initial values):

    - conv: [nn.ZeroPad2d for an asymmetric 'same' padding,] nn.Conv2d (stride, symmetric
      padding, groups), [nn.BatchNorm2d,] [nn.ReLU | nn.Tanh | nn.Sigmoid,] [nn.MaxPool2d |
      nn.AvgPool2d (window, stride, ceil_mode),] [nn.Dropout];
    - full: [nn.Flatten when its input is an image,] nn.Linear, [nn.BatchNorm1d,] [activation,]
      [nn.Dropout];
    - global_avg_pool: nn.AdaptiveAvgPool2d((1, 1));
    - residual_add: a module of two inputs, F(X) + shortcut(X), then the activation.

    Batch norm has eps 1e-5 and momentum 0.1 and runs in training mode. ``dropout_masks``
    ({m: bool mask in the reference CNN's layout}) replaces nn.Dropout by a fixed mask."""
    torch = import_torch()
    from torch import nn

    ResidualAdd, FixedDropout = _modules(torch)
    dtype = torch.float64 if arch.dtype == "float64" else torch.float32
    layers = []
    sizes = arch.sizes()
    for sz in sizes:
        ref = None if cnn is None else cnn.layers[sz.m - 1]
        if sz.kind == "global_avg_pool":
            layers.append(nn.AdaptiveAvgPool2d((1, 1)))
            continue
        if sz.kind == "residual_add":
            layers.append(ResidualAdd(_activation(nn, sz.activation)))
            continue
        modules = []
        if sz.kind == "conv":
            if sz.p is None:  # padding: same, with the extra row/column at the bottom/right
                modules.append(nn.ZeroPad2d((sz.p_left, sz.p_right, sz.p_top, sz.p_bottom)))
            layer = nn.Conv2d(sz.d, sz.d_next, sz.h, stride=sz.s, padding=sz.p or 0, groups=sz.g)
            shape = (sz.d_next, sz.d // sz.g, sz.h, sz.h)
            norm = nn.BatchNorm2d(sz.d_next, eps=1e-5, momentum=0.1) if sz.batch_norm else None
        else:
            previous = sizes[sz.inputs[0] - 1] if sz.inputs[0] > 0 else None
            if previous is not None and previous.kind != "full":
                modules.append(nn.Flatten())
            layer = nn.Linear(sz.n_in, sz.n_out)
            shape = (sz.n_out, sz.n_in)
            norm = nn.BatchNorm1d(sz.n_out, eps=1e-5, momentum=0.1) if sz.batch_norm else None
        if ref is not None:
            layer.weight.data = torch.from_numpy(ref.W.reshape(shape).copy())
            layer.bias.data = torch.from_numpy(ref.b.copy())
        modules.append(layer)
        if norm is not None:
            norm.to(dtype)
            if ref is not None:
                norm.weight.data = torch.from_numpy(ref.gamma.copy())
                norm.bias.data = torch.from_numpy(ref.beta.copy())
                norm.running_mean.copy_(torch.from_numpy(ref.running_mean))
                norm.running_var.copy_(torch.from_numpy(ref.running_var))
            modules.append(norm)
        activation = _activation(nn, sz.activation)
        if activation is not None:
            modules.append(activation)
        if sz.pooled:
            pool = nn.AvgPool2d if sz.pool_type == "avg" else nn.MaxPool2d
            modules.append(pool(sz.pool, stride=sz.pool_stride, ceil_mode=sz.pool_ceil))
        if sz.dropout:
            keep = (dropout_masks or {}).get(sz.m)
            modules.append(nn.Dropout(sz.dropout) if keep is None
                           else FixedDropout(_to_nchw(np.asarray(keep, dtype=bool)), sz.dropout))
        layers.append(nn.Sequential(*modules).to(dtype))
    return layers


def torch_net(arch: Architecture, cnn=None, dropout_masks: dict | None = None):
    """The network of torch_layers as one module: forward(x) runs the layers m = 1..L, each on
    the outputs of its ``inputs`` (x is the network's input, NCHW or (I, n))."""
    torch = import_torch()

    class TorchNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(torch_layers(arch, cnn, dropout_masks))
            self.inputs = [sz.inputs for sz in arch.sizes()]

        def forward(self, x):
            outputs = [x]
            for layer, inputs in zip(self.layers, self.inputs):
                outputs.append(layer(*(outputs[i] for i in inputs)))
            return outputs[-1]

    return TorchNet()


class TorchStep:
    """One SG step in PyTorch with simpleNN's update: Grad = dW/I + W/C, v = mu v - lr Grad,
    on every parameter (batch norm's gamma and beta too).

    With ``ranges`` the step marks its layers, loss, backward and updates with
    record_function ranges for the profiler (see the module's docstring)."""

    def __init__(self, arch: Architecture, cnn, X: np.ndarray, Y: np.ndarray, ranges: bool = False,
                 dropout_masks: dict | None = None):
        torch = import_torch()

        self.torch = torch
        self.arch = arch
        self.ranges = ranges
        self.layers = torch_layers(arch, cnn, dropout_masks)
        self.inputs = [sz.inputs for sz in arch.sizes()]
        self.net = torch.nn.ModuleList(self.layers)
        self.params = list(self.net.parameters())
        self.buffers = [b for b in self.net.buffers() if b.is_floating_point()]
        self.layer_params = [list(layer.parameters()) for layer in self.layers]
        self.start = [p.detach().clone() for p in self.params]
        self.start_buffers = [b.detach().clone() for b in self.buffers]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.layer_v = []
        i = 0
        for ps in self.layer_params:
            self.layer_v.append(self.v[i:i + len(ps)])
            i += len(ps)
        x = X.transpose(1, 0, 2, 3) if X.ndim == 4 else X.T
        self.x = torch.from_numpy(np.ascontiguousarray(x))
        self.y = torch.from_numpy(np.ascontiguousarray(Y.T))
        self.labels = self.y.argmax(dim=1)
        self.update_batch: int | None = None  # data-parallel SG: the whole mini-batch (calib/parallel)

    def restore(self) -> None:
        with self.torch.no_grad():
            for p, p0, v in zip(self.params, self.start, self.v):
                p.copy_(p0)
                v.zero_()
            for b, b0 in zip(self.buffers, self.start_buffers):
                b.copy_(b0)

    def _range(self, name: str):
        if self.ranges:
            return self.torch.autograd.profiler.record_function(f"costmodel:{name}")
        from contextlib import nullcontext

        return nullcontext()

    def forward(self, x):
        """The layers' forward, each in its profiler range (DistributedDataParallel wraps it:
        calib/parallel)."""
        outputs = [x]
        for m, (layer, inputs) in enumerate(zip(self.layers, self.inputs), start=1):
            with self._range(f"layer{m}:forward"):
                outputs.append(layer(*(outputs[i] for i in inputs)))
        return outputs[-1]

    def step(self) -> None:
        torch, opt, I = self.torch, self.arch.optimizer, self.update_batch or self.x.shape[0]
        for p in self.params:
            p.grad = None
        z = self.forward(self.x)
        with self._range("loss"):
            if self.arch.loss == "mse":
                loss = ((z - self.y) ** 2).sum()
            else:
                loss = torch.nn.functional.cross_entropy(z, self.labels, reduction="sum")
        with self._range("backward"):
            loss.backward()
        with torch.no_grad():
            for m, (ps, vs) in enumerate(zip(self.layer_params, self.layer_v), start=1):
                if not ps:  # global average pooling, a residual addition: nothing to update
                    continue
                with self._range(f"layer{m}:update"):
                    for p, v in zip(ps, vs):
                        v.mul_(opt.momentum).sub_(opt.lr * (p.grad / I + p / opt.C))
                        p.add_(v)


# ---------------------------------------------------------------------------------------------
# Profiling steps (the mapping of the events onto the contract: calib.backends.torch_events)


def profile_steps(runs: list[tuple[int, "TorchStep"]]) -> list[tuple[int, dict, float]]:
    """Run the steps of `runs` ((label, step) pairs, in that order, each from its starting
    weights) under one torch.profiler session; per run, its label, its seconds per (layer, op
    group, phase) (classify) and its wall-clock seconds with the profiler on."""
    torch = import_torch()
    from torch.profiler import ProfilerActivity, profile

    wall = []
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i, (label, ts) in enumerate(runs):
            ts.restore()
            with torch.autograd.profiler.record_function(f"costmodel:step{i}"):
                t0 = perf_counter_ns()
                ts.step()
                t1 = perf_counter_ns()
            wall.append((t1 - t0) * 1e-9)
    out = []
    for e in prof.events():
        if e.cpu_parent is None and e.name.startswith("costmodel:step"):
            i = int(e.name.removeprefix("costmodel:step"))
            label, ts = runs[i]
            out.append((i, label, classify(event_children(e), ts.arch), wall[i]))
    return [(label, sec, w) for _, label, sec, w in sorted(out, key=lambda r: r[0])]


def measure_torch(arch: Architecture, *, steps: int = 10, warmup: int = 2, threads: int | None = None,
                  seed: int = 0, progress: Callable[[int, int], None] | None = None) -> dict:
    """Run warmup + steps SG steps in PyTorch on the CPU (the reference CNN's weights, batch,
    dtype, loss and update) and return the median seconds of every op group (DESIGN.md's
    per-op JSON; ``impl`` is "torch").

    Every timed step runs under torch.profiler; ``step_seconds`` is the median wall-clock of
    these whole steps, timed around them with the profiler on; ``coverage`` is the median over the
    steps of a step's summed group times / its wall clock (time between profiler events is in no row).
    ``unprofiled_step_seconds`` is the median of as many steps without the profiler, to show
    its overhead. ``threads`` sets torch.set_num_threads for the run (None keeps torch's).
    ``allocator`` is the C allocator's state the steps ran in (calib.allocator.warm_heap: it
    decides whether PyTorch's large buffers are faulted in anew every step)."""
    from calib.allocator import warm_heap
    from calib.workers import settle_blas

    torch = import_torch()

    from calib.cnn import ReferenceCNN
    from calib.measure import synthetic_batch

    if steps < 1 or warmup < 0:
        raise ValueError("steps must be >= 1 and warmup >= 0")
    allocator = warm_heap()
    settle_blas()  # NumPy's BLAS threads would share the cores with PyTorch's
    with torch_threads(threads) as used_threads:
        X, Y = synthetic_batch(arch, seed)
        ts = TorchStep(arch, ReferenceCNN(arch, seed=seed), X, Y, ranges=True)
        total = warmup + 2 * steps
        done = 0
        for _ in range(warmup):
            ts.restore()
            ts.step()
            done += 1
            if progress is not None:
                progress(done, total)
        plain: list[float] = []
        for _ in range(steps):
            ts.restore()
            t0 = perf_counter_ns()
            ts.step()
            plain.append((perf_counter_ns() - t0) * 1e-9)
            done += 1
            if progress is not None:
                progress(done, total)
        runs = profile_steps([(i, ts) for i in range(steps)])
        if progress is not None:
            progress(total, total)

    def key(m: int, grp: str, phase: str) -> OpKey:
        return OpKey(m, layer_type(arch, m), grp, phase)

    order = [key(*k) for k in ordered(arch, set().union(*(sec for _, sec, _ in runs)))]
    per_step = [{key(*k): sec for k, sec in s.items()} for _, s, _ in runs]
    return {"arch": arch.name, "batch": arch.batch, "dtype": arch.dtype, "threads": used_threads,
            "impl": "torch", "torch_version": torch.__version__,
            "unprofiled_step_seconds": float(np.median(plain)), "allocator": allocator,
            **summarize(per_step, [w for _, _, w in runs], order)}


class torch_threads:
    """Context: torch.set_num_threads(threads) inside (None keeps torch's), restored after;
    yields the thread count in effect."""

    def __init__(self, threads: int | None):
        self.threads = threads

    def __enter__(self) -> int:
        torch = import_torch()
        self.previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        return torch.get_num_threads()

    def __exit__(self, *exc) -> bool:
        import_torch().set_num_threads(self.previous)
        return False


def with_costs(result: dict, arch) -> dict:
    """FLOPs and bytes of each row, as predict --backend torch counts them
    (costmodel.machine.backends.torch: a fused kernel's own traffic); None for "other"."""
    from costmodel.machine.backends.torch import BYTES_IMPL, TorchBackend
    from costmodel.model.step import step_costs

    table = {r.key: r for r in TorchBackend().rows_of(step_costs(arch, BYTES_IMPL))}
    for row in result["ops"]:
        cost = table.get((row["layer"], row["op"], row["phase"]))
        if row["op"] == OTHER or cost is None:
            row["flops"] = row["bytes"] = None
        else:
            row["flops"], row["bytes"] = cost.flops, cost.bytes
    return result


# ---------------------------------------------------------------------------------------------
# Calibration: the same sweep as the NumPy backend, timed per op group

def versions() -> dict[str, str]:
    """The torch version an entry was calibrated with."""
    return {"torch": import_torch().__version__}


def time_sweep(archs: list[Architecture], impl: str = "torch", *, threads: int, rounds: int, chunk: int, seed: int,
                     progress: Callable[[int], None] | None = None) -> list[dict]:
    """Samples {"point", "layer", "op", "phase", "seconds"} of every op group of every sweep
    network in PyTorch (median over `rounds` profiled steps), as calib.calibrate.time_sweep
    does for the NumPy reference: networks in chunks, each chunk's networks visited in a new
    random order every round, every step from the same starting weights, gc off.

    Every visit runs one unprofiled step before the profiled one, as a training loop (and
    `measure`) has the same network's step before: PyTorch's allocator and oneDNN's
    primitive cache are then warm (measured: the median step error of the examples went from
    14.4 % to 11.6 % on the same 96 networks). Not the NumPy sweep's 20 ms of them
    (calib.backends.timing.warm_steps): under the profiler they doubled the sweep's time
    (48 networks: 17.7 s against 33.5 s) and moved the small examples' predictions by 0-8 %."""
    from calib.backends.timing import chunked_sweep
    from calib.cnn import ReferenceCNN
    from calib.measure import synthetic_batch

    def build(i: int, arch: Architecture) -> TorchStep:
        X, Y = synthetic_batch(arch, seed=i)
        ts = TorchStep(arch, ReferenceCNN(arch, seed=i), X, Y, ranges=True)
        ts.restore()
        ts.step()  # first touches, allocator warm-up
        return ts

    def run_round(visits):
        runs = [run for i, ts in visits for run in ((-1, ts), (i, ts))]  # label -1: the warm step, not kept
        return {i: seconds for i, seconds, _ in profile_steps(runs) if i >= 0}

    with torch_threads(threads):
        return chunked_sweep(archs, chunk=chunk, rounds=rounds, seed=seed, build=build, run_round=run_round,
                             progress=progress)
