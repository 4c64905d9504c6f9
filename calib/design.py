"""The microbenchmark sweep: small architectures whose SG steps time every op kernel.

Each point of the sweep is a small network, built so that its second layer is the conv layer
under study (the first, a 1x1 convolution, gives it the wanted channels and makes it a layer
with an input gradient), followed by a hidden and an output full layer; a fifth of the points
are MLPs. The kernels timed are therefore the reference CNN's own, called exactly as a
training step calls them, in the same buffers and layouts.

A third of the points (`is_vocab`, spread over the large and small ones) use the extended
vocabulary of ARCH_FORMAT.md, so that every new op and kernel variant gets samples in both
backends: their conv layer under study and their hidden full layer take tanh or sigmoid, batch
norm, dropout, groups (depthwise too), a `same` padding (asymmetric with stride 2), average,
overlapping and ceil-mode pooling, in turns (`_decorate`); every third of them is a residual
network instead (`_residual_point`: a conv layer, a ResNet basic block with an identity or a
projection shortcut, global average pooling, the output layer). The shapes are drawn as for the
other points, so the ops of the course's vocabulary keep their coverage.

The sweep of a calibration of the strided implementation ends with pooling points
(`_pool_points`, calib.calibrate.Plan.sweep): networks whose pooling moves at least
SPLIT_BYTES (every third less, in the calling thread), taking the four poolings of
POOL_POINT_POOLINGS in turns, so that the strided implementation's threaded poolings are fitted
on more than the few drawn points that reach it. They come from a generator of their own and
take the sweep's last places, so the points before them are those of a sweep without them.
After them come coverage points (`_coverage_points`, calib.calibrate.COVERAGE_POINTS): a 1x1
first layer whose S^1 is shared among the threads, then a depthwise, a 2-group strided
same-padded or a residual block of 1x1 convolutions, so that the threaded variants of the
extended vocabulary, which the drawn points reach a few times (and a quick plan's never), are
fitted on more samples.

The shapes are drawn log-uniformly over the ranges real layers span (channels 1-512, kernels
1-11, strides 1 and 2, spatial sizes 4-128, batches 1-512, full layers up to 4096 units), two
thirds of the channel counts rounded to a multiple of 8 as real layers' are (`_channels`), and
points whose largest array or FLOP count would not fit the time budget are redrawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from costmodel.errors import ArchError
from costmodel.machine.backends.numpy import SPLIT_BYTES
from costmodel.model.arch import Architecture, parse_arch


KERNELS = (1, 3, 3, 5, 5, 7, 9, 11)
#: every third sweep point has a phi(pad(Z)) at least this large, as the examples at I = 128
LARGE_PHI_BYTES = 1 << 24


@dataclass(frozen=True)
class SweepLimits:
    max_elements: float = 12e6  # largest array of a step (phi, usually), in elements
    max_flops: float = 3e9  # FLOPs of one step's matrix products
    max_weights: float = 4e6  # elements of one full layer's W


QUICK_LIMITS = SweepLimits(max_elements=3e6, max_flops=6e8, max_weights=2e6)


def _log_uniform_int(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


#: the share of drawn channel counts rounded to a multiple of CHANNEL_MULTIPLE, as real
#: networks choose them (the examples' conv layers: 87 of 88 have 16 to 1024 filters, all multiples of 8)
ALIGNED_CHANNELS_SHARE = 2 / 3
CHANNEL_MULTIPLE = 8


def _channels(rng: np.random.Generator, lo: int, hi: int) -> int:
    """A layer's channel count, log-uniform in [lo, hi]; ALIGNED_CHANNELS_SHARE of them
    rounded to a multiple of CHANNEL_MULTIPLE (the SIMD width of float32 with AVX), so that the
    sweep samples the layers real networks have. With log-uniform counts only, 145 of the 161
    conv backward samples of a 192-network torch sweep had unaligned channel counts on both
    sides; in a sweep with aligned ones, oneDNN's convolutions with multiples of 16 on both
    sides ran 0.80-0.83x what the one model of all of them predicted (2026-12-01)."""
    n = _log_uniform_int(rng, lo, hi)
    if rng.random() < ALIGNED_CHANNELS_SHARE:
        n = min(max(CHANNEL_MULTIPLE, CHANNEL_MULTIPLE * round(n / CHANNEL_MULTIPLE)), hi)
    return n


def _conv_point(rng: np.random.Generator, dtype: str, loss: str, name: str, first_kernel: bool = False) -> dict:
    h = int(rng.choice(KERNELS))
    s = int(rng.choice((1, 1, 2)))
    p = int(rng.integers(0, h // 2 + 1))
    a = _log_uniform_int(rng, max(4, h), 128)
    b = a if rng.random() < 0.7 else _log_uniform_int(rng, max(4, h), 128)
    pool = int(rng.choice((1, 2, 2, 3)))
    h1 = int(rng.choice(KERNELS)) if first_kernel else 1
    return {
        "name": name, "dtype": dtype, "loss": loss,
        "input": {"height": a, "width": b, "channels": int(rng.choice((1, 3)))},
        "batch": _log_uniform_int(rng, 1, 512),
        "layers": [
            {"type": "conv", "filters": _channels(rng, 1, 512), "kernel": h1, "padding": h1 // 2},
            {"type": "conv", "filters": _channels(rng, 1, 512), "kernel": h, "padding": p,
             "stride": s, "pool": pool},
            {"type": "full", "units": _log_uniform_int(rng, 8, 4096)},
            {"type": "full", "units": 10},
        ],
    }


def _mlp_point(rng: np.random.Generator, dtype: str, loss: str, name: str) -> dict:
    side = _log_uniform_int(rng, 4, 64)
    hidden = [{"type": "full", "units": _log_uniform_int(rng, 8, 4096)}
              for _ in range(int(rng.integers(1, 3)))]
    return {
        "name": name, "dtype": dtype, "loss": loss,
        "input": {"height": side, "width": side, "channels": int(rng.choice((1, 3)))},
        "batch": _log_uniform_int(rng, 1, 512),
        "layers": hidden + [{"type": "full", "units": 10}],
    }


def is_vocab(i: int) -> bool:
    """Point i uses the extended vocabulary: three points in nine, one of each residue mod 3,
    so that large points (i % 3 == 1, threaded in the strided implementation) have them too."""
    return i % 9 in (2, 4, 6)


def is_residual(i: int) -> bool:
    """Point i is a residual network: one of the three points of the extended vocabulary in
    27, taking turns between residues mod 3 (large and small)."""
    return i % 27 in (6, 13, 20)


def _choice(rng: np.random.Generator, values):
    return values[int(rng.integers(len(values)))]


#: the pooling of the k-th decorated conv point: (type, overlapping windows, ceil mode)
POOLINGS = (("avg", False, True), ("max", True, False), ("avg", True, False), ("max", True, True))


def _decorate(data: dict, k: int, rng: np.random.Generator) -> dict:
    """The k-th point of the extended vocabulary of its kind (large or small) made from a drawn
    point: its layer under study (the second conv layer; an MLP's first layer) and its hidden
    full layer take the new fields in turns, so that every op and variant is sampled within a
    few points: tanh or sigmoid, batch norm or dropout, depthwise, 2 or 1 groups, a `same`
    padding, and the poolings of POOLINGS."""
    layers = [dict(layer) for layer in data["layers"]]
    hidden = layers[-2]
    hidden.update(activation=("sigmoid", "tanh", "relu")[k % 3], batch_norm=k % 2 == 1,
                  dropout=0.25 if k % 2 == 0 else 0.0)
    if layers[0]["type"] != "conv":
        layers[0].update(activation=("sigmoid", "tanh")[k % 2], batch_norm=True, dropout=0.2)
        return {**data, "layers": layers}
    conv, first = layers[1], layers[0]
    conv.update(activation=("tanh", "sigmoid")[k % 2], batch_norm=k % 2 == 0, dropout=0.25 if k % 2 else 0.0)
    first["activation"] = ("sigmoid", "relu", "tanh")[k % 3]  # a larger S: tanh and sigmoid on many threads
    groups = (0, 2, 1)[k % 3]  # 0: depthwise
    if groups == 0:
        conv["filters"] = first["filters"] * _choice(rng, (1, 1, 2))
        conv["groups"] = first["filters"]
    elif groups == 2:
        first["filters"] += first["filters"] % 2
        conv["filters"] += conv["filters"] % 2
        conv["groups"] = 2
    if k % 3 == 2:  # TensorFlow's same padding: asymmetric with an even kernel or stride 2
        conv["padding"] = "same"
        if conv["kernel"] > 1 and rng.random() < 0.5:
            conv["kernel"] -= 1
    pool_type, overlap, ceil = POOLINGS[k % len(POOLINGS)]
    pool = conv["pool"] = max(conv.get("pool", 1), int(_choice(rng, (2, 2, 3))))
    conv.update(pool_type=pool_type, pool_stride=pool - 1 if overlap else pool, pool_ceil=ceil)
    return {**data, "layers": layers}


def _batch_for(arch: Architecture, size, target: float) -> Architecture:
    """`arch` at the batch (1-512) whose `size(arch)` (bytes, proportional to the batch) is
    closest above `target`."""
    per_instance = size(arch) / arch.batch
    return arch.with_batch(int(min(512, max(1, math.ceil(target / per_instance)))))


#: the poolings of the pooling points, in turns: (window, stride, type, ceil mode)
POOL_POINT_POOLINGS = ((3, 2, "max", True), (2, 2, "avg", False), (2, 2, "max", False), (3, 2, "avg", True))


def _pool_point(rng: np.random.Generator, dtype: str, k: int) -> dict:
    """The data of a network for a pooling point: a 1x1 convolution to d channels, a 3x3 one
    to d' channels with the k-th pooling of POOL_POINT_POOLINGS, a hidden and an output full
    layer, at batch 1 (_pool_points sizes its batch by S^m; design() names it and gives its
    loss by its place, as the drawn points')."""
    window, stride, kind, ceil = POOL_POINT_POOLINGS[k % len(POOL_POINT_POOLINGS)]
    a = _log_uniform_int(rng, 8, 64)
    return {
        "name": "pool", "dtype": dtype, "loss": "mse",
        "input": {"height": a, "width": a, "channels": int(rng.choice((1, 3)))},
        "batch": 1,
        "layers": [
            {"type": "conv", "filters": _channels(rng, 4, 64), "kernel": 1},
            {"type": "conv", "filters": _channels(rng, 16, 256), "kernel": 3, "padding": 1,
             "pool": window, "pool_stride": stride, "pool_type": kind, "pool_ceil": ceil},
            {"type": "full", "units": _log_uniform_int(rng, 8, 256)},
            {"type": "full", "units": 10},
        ],
    }


#: draws of a pooling or coverage point before it is given up (the quick limits reject most
#: pooling draws: S^m of 1.2 SPLIT_BYTES within their FLOPs needs few input channels)
POINT_DRAWS = 200


#: every third pooling point pools in the calling thread, S^m between these bytes (past a 256
#: KiB L2, below SPLIT_BYTES with the positions and Z^{m+1}): LeNet-5's first pooling gradient
#: (3 MB) was predicted at 2.0 ms against 0.48 ms measured by a model fitted on 5 samples, none
#: of them between L2 and SPLIT_BYTES (2026-12-01)
CALLING_THREAD_S = (384 << 10, SPLIT_BYTES // 5 * 2)


def _pool_points(n: int, dtype: str, seed: int, limits: SweepLimits) -> list[dict]:
    """The data of up to `n` pooling points (_pool_point, named by design()), drawn from a
    generator of their own so that the other points stay as drawn; the batch of each makes its
    S^m (what its pooling moves) log-uniform between 1.2 SPLIT_BYTES and the limit on arrays,
    so that the strided implementation shares the pooling among its threads, or for every third
    point within CALLING_THREAD_S; a draw that breaks `limits` is redrawn. None when the limits
    allow no array of 1.5 SPLIT_BYTES; fewer when POINT_DRAWS draws do not find them."""
    rng = np.random.default_rng((seed, 1))
    itemsize = np.dtype(dtype).itemsize
    high = limits.max_elements * itemsize
    points: list[dict] = []
    if high < 1.5 * SPLIT_BYTES:  # no array that large: the pooling would not be shared
        return points
    for _ in range(POINT_DRAWS * n):
        if len(points) == n:
            break
        data = _pool_point(rng, dtype, len(points))
        low, top = CALLING_THREAD_S if len(points) % 3 == 2 else (1.2 * SPLIT_BYTES, high)
        target = math.exp(rng.uniform(math.log(low), math.log(top)))
        arch = _batch_for(parse_arch(data), s_bytes, target)
        if _within(arch, limits) and low / 1.2 <= s_bytes(arch) <= top:
            points.append({**data, "batch": arch.batch})
    return points


def _coverage_point(rng: np.random.Generator, dtype: str, k: int) -> dict:
    """The data of the k-th coverage point, at batch 1 (_coverage_points sizes it by the S^1 of
    its first layer, a 1x1 convolution from 1-3 channels to d), in turns:

    0. tanh, batch norm and a 2x2/2 max pooling on the first layer, then a depthwise 3x3
       convolution: the threaded tanh, batch norm, max pooling and grouped products;
    1. sigmoid on the first layer, then a 3x3 convolution in 2 groups with stride 2 and `same`
       padding (asymmetric on an even input: pad(Z) of the first layer's S^1): the threaded sigmoid, pad and
       grouped products, and PyTorch's explicit padding;
    2. a residual network of 1x1 convolutions with batch norm (identity shortcut), global
       average pooling: the threaded residual addition, its gradient and global average pooling.
    """
    a = _log_uniform_int(rng, 16, 64)
    d = _channels(rng, 8, 64)
    data = {"name": "coverage", "dtype": dtype, "loss": "mse", "batch": 1,
            "input": {"height": a, "width": a, "channels": int(rng.choice((1, 3)))}}
    head = [{"type": "full", "units": _log_uniform_int(rng, 8, 256)}, {"type": "full", "units": 10}]
    if k % 3 == 0:
        layers = [{"type": "conv", "filters": d, "kernel": 1, "activation": "tanh", "batch_norm": True,
                   "pool": 2},
                  {"type": "conv", "filters": d, "kernel": 3, "padding": 1, "groups": d}, *head]
    elif k % 3 == 1:
        d += d % 2
        data["input"].update(height=a + a % 2, width=a + a % 2)  # even: `same` pads one side more
        layers = [{"type": "conv", "filters": d, "kernel": 1, "activation": "sigmoid"},
                  {"type": "conv", "filters": _channels(rng, 2, 32) * 2, "kernel": 3, "stride": 2,
                   "padding": "same", "groups": 2}, *head]
    else:
        block = {"type": "residual", "layers": [
            {"type": "conv", "filters": d, "kernel": 1, "batch_norm": True},
            {"type": "conv", "filters": d, "kernel": 1, "batch_norm": True, "activation": "none"}]}
        layers = [{"type": "conv", "filters": d, "kernel": 1, "batch_norm": True}, block,
                  {"type": "global_avg_pool"}, {"type": "full", "units": 10}]
    return {**data, "layers": layers}


#: the limits of a coverage point: the full plan's, since a quick plan's (3e6 elements) leave
#: no room for an S^1 of 1.2 SPLIT_BYTES followed by a 3x3 layer (phi: 2.25 S^1)
COVERAGE_LIMITS = SweepLimits()
#: the largest S^1 of a coverage point: the second layer's phi (2.25 S^1) and products then
#: reach past a 32 MiB L3, as held-out depthwise layers do (depthwise-separable's: 39 MB)
COVERAGE_S_MAX = 4 * SPLIT_BYTES


def _coverage_points(n: int, dtype: str, seed: int) -> list[dict]:
    """The data of `n` coverage points (_coverage_point, named by design()), drawn from a
    generator of their own; the batch of each makes the S^1 of its first layer log-uniform
    between 1.2 SPLIT_BYTES and COVERAGE_S_MAX, so that its elementwise ops, the pad of its second layer and
    its grouped products are shared among the strided implementation's threads, within
    COVERAGE_LIMITS. A quick plan's drawn points are too small for that regime: a quick
    strided calibration had no model for the threaded max pooling gradient, tanh, sigmoid,
    grouped products or residual addition, and could not predict 12 of the 13 examples; a quick
    PyTorch one had no sample of an explicit padding (2026-12-01). Their first layer is 1x1 in
    a PyTorch sweep too (design's `first_kernel` is for the drawn points): what they are for is
    after it, and they are 6 of the 198 first layers PyTorch's layer-1 models are fitted on."""
    rng = np.random.default_rng((seed, 2))
    points: list[dict] = []
    for _ in range(POINT_DRAWS * n):
        if len(points) == n:
            break
        data = _coverage_point(rng, dtype, len(points))
        target = math.exp(rng.uniform(math.log(1.2 * SPLIT_BYTES), math.log(COVERAGE_S_MAX)))
        arch = _batch_for(parse_arch(data), _first_s_bytes, target)
        if arch.batch >= 2 and _within(arch, COVERAGE_LIMITS) and _first_s_bytes(arch) >= SPLIT_BYTES:
            points.append({**data, "batch": arch.batch})
    return points


def _residual_point(rng: np.random.Generator, dtype: str, loss: str, name: str, k: int) -> dict:
    """A conv layer, a ResNet basic block (two 3x3 convs with batch norm; identity shortcut, or a
    projection with stride 2 and twice the filters), global average pooling and the output
    layer: the residual addition, the sum of the block input's two gradients, global average
    pooling and batch norm in one network."""
    a = _log_uniform_int(rng, 4, 64)
    f = _channels(rng, 1, 256)
    project = k % 2 == 1
    g = 2 * f if project else f
    block = {"type": "residual", "layers": [
        {"type": "conv", "filters": g, "kernel": 3, "padding": 1, "stride": 2 if project else 1, "batch_norm": True},
        {"type": "conv", "filters": g, "kernel": 3, "padding": 1, "batch_norm": True, "activation": "none"}]}
    return {
        "name": name, "dtype": dtype, "loss": loss,
        "input": {"height": a, "width": a, "channels": int(rng.choice((1, 3)))},
        "batch": _log_uniform_int(rng, 1, 512),
        "layers": [{"type": "conv", "filters": f, "kernel": int(_choice(rng, (1, 3))), "padding": "same",
                    "batch_norm": True},
                   block, {"type": "global_avg_pool"}, {"type": "full", "units": 10}],
    }


def _within(arch: Architecture, limits: SweepLimits) -> bool:
    largest = 0.0
    flops = 0.0
    for sz in arch.sizes():
        if sz.kind == "conv":
            K, N = sz.h * sz.h * sz.d, arch.batch * sz.a_conv * sz.b_conv
            largest = max(largest, K * N, sz.d_next * N, sz.d * arch.batch * sz.a_pad * sz.b_pad)
            flops += 3 * 2 * sz.d_next * K * N // sz.g
        elif sz.kind in ("global_avg_pool", "residual_add"):
            largest = max(largest, sz.d * arch.batch * sz.a * sz.b)
        else:
            if sz.n_in * sz.n_out > limits.max_weights:
                return False
            largest = max(largest, sz.n_in * arch.batch)
            flops += 3 * 2 * sz.n_in * sz.n_out * arch.batch
    return largest <= limits.max_elements and flops <= limits.max_flops


def s_bytes(arch: Architecture, which: int = -1) -> int:
    """Bytes of S^m (d' x I a_conv b_conv) of the `which`-th conv layer (-1: the last, the layer
    under study of a point of the extended vocabulary; 0: the first, a coverage point's); 0
    without conv layers."""
    conv = [sz for sz in arch.sizes() if sz.kind == "conv"]
    return arch.itemsize * conv[which].d_next * arch.batch * conv[which].a_conv * conv[which].b_conv if conv else 0


def _first_s_bytes(arch: Architecture) -> int:
    """s_bytes of the first conv layer."""
    return s_bytes(arch, 0)



def _phi_bytes(arch: Architecture) -> int:
    return arch.itemsize * max((sz.h * sz.h * sz.d * arch.batch * sz.a_conv * sz.b_conv
                                for sz in arch.sizes() if sz.kind == "conv"), default=0)


def design(n: int, *, dtype: str, seed: int = 0, limits: SweepLimits = SweepLimits(),
           first_kernel: bool = False, pool_points: int = 0, coverage_points: int = 0) -> list[Architecture]:
    """`n` sweep architectures in `dtype`, reproducible from `seed`, all within `limits`,
    named sweep-0 ... sweep-(n-1); the last `coverage_points` of them are coverage points
    (_coverage_points, within COVERAGE_LIMITS), and the `pool_points` before them pooling
    points (_pool_points), fewer when the limits leave none; the others are drawn as without
    them. Raises ValueError unless 0 <= pool_points + coverage_points <= n.

    With `first_kernel` the first conv layer's kernel is drawn as the second's (with "same"
    padding), else it is 1x1. The torch backend needs it: PyTorch runs layer 1's convolution
    on its own path (no input gradient, 1-3 input channels in plain layout), whose model
    must see the kernels real first layers have; the NumPy reference's layer 1 runs the same
    kernels as any other layer.

    Every third point is a large conv network (phi(pad(Z)) of at least LARGE_PHI_BYTES,
    as the examples' first layers at I = 128): the strided implementation runs those on its
    own threads (costmodel.machine.backends.numpy.threaded_step), so both regimes get samples, and the working
    sets reach main memory."""
    rng = np.random.default_rng(seed)
    itemsize = np.dtype(dtype).itemsize
    large_fits = limits.max_elements * itemsize >= 2 * LARGE_PHI_BYTES
    if not (0 <= pool_points and 0 <= coverage_points and pool_points + coverage_points <= n):
        raise ValueError(f"pool_points {pool_points} and coverage_points {coverage_points} are not "
                         f"within 0 .. n = {n} together")
    pooling = _pool_points(pool_points, dtype, seed, limits) if pool_points else []
    pooling += _coverage_points(coverage_points, dtype, seed) if coverage_points else []
    points: list[Architecture] = []
    while len(points) < n - len(pooling):
        i = len(points)
        loss = ("mse", "softmax_ce")[i % 2]
        make = _mlp_point if i % 5 == 4 else _conv_point
        if is_residual(i) and make is _conv_point:
            data = _residual_point(rng, dtype, loss, f"sweep-{i}", sum(map(is_residual, range(i))))
        else:
            data = (_conv_point(rng, dtype, loss, f"sweep-{i}", first_kernel) if make is _conv_point
                    else make(rng, dtype, loss, f"sweep-{i}"))
            if is_vocab(i):
                # the how-many-th decorated point of its kind (large or small, conv or MLP)
                same = [j for j in range(i) if is_vocab(j) and not is_residual(j) and (j % 3 == 1) == (i % 3 == 1)
                        and (j % 5 == 4) == (i % 5 == 4)]
                data = _decorate(data, len(same), rng)
        try:
            arch = parse_arch(data)
        except ArchError:  # a drawn shape that breaks a rule (kernel larger than the input ...)
            continue
        large = large_fits and i % 3 == 1 and make is _conv_point
        # a large point of the extended vocabulary is large by the S^m of its last conv layer, so that the
        # elementwise ops (tanh, batch norm, dropout, the residual addition) run threaded too
        size, threshold = (s_bytes, SPLIT_BYTES) if is_vocab(i) else (_phi_bytes, LARGE_PHI_BYTES)
        if large and arch.n_conv:
            # choose I so that phi(pad(Z)) (or S) lands between the threshold and the limit
            target = math.exp(rng.uniform(math.log(threshold), math.log(limits.max_elements * itemsize)))
            arch = _batch_for(arch, size, target)
        if arch.batch == 1 and any(sz.batch_norm for sz in arch.sizes()):
            # batch norm of a full layer over one instance normalizes a single value, which
            # PyTorch refuses in training mode
            arch = arch.with_batch(2)
        if _within(arch, limits) and (not large or size(arch) >= threshold):
            points.append(arch)
    for data in pooling:
        i = len(points)
        points.append(parse_arch({**data, "name": f"sweep-{i}", "loss": ("mse", "softmax_ce")[i % 2]}))
    return points
