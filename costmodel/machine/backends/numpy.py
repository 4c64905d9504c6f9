"""The NumPy backend: the reference CNN's step (calib.cnn), one row per op of the contract.

Implementations "index" (simpleNN's gathers and scatter-adds; one thread, products with
BLAS's own threads) and "strided" (sliding windows into preallocated buffers, with threads of
its own for large networks). The strided implementation's threading rule lives here because
the cost model must fit and predict its regimes apart: with more than one thread it shares
every large op among its threads while BLAS runs single-threaded (calib.workers.Workers), and
an op's model is keyed by the regime it runs in (`regime`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from costmodel.machine.backends.base import ModelKey, Row, register
from costmodel.machine.timemodel import FEATURES
from costmodel.model.ops import MATMUL
from costmodel.model.sizes import window_count

if TYPE_CHECKING:
    from costmodel.machine.timemodel import Machine
    from costmodel.model.arch import Architecture
    from costmodel.model.costs import OpSpec
    from costmodel.model.sizes import LayerSizes
    from costmodel.model.step import StepCosts

#: in a threaded step, an op moving at least SPLIT_BYTES, or a product of at least SPLIT_FLOPS,
#: is shared among the threads; a smaller one runs in the calling thread (a product with
#: single-threaded BLAS): handing work to a sleeping thread costs more than it saves
SPLIT_BYTES = 1 << 22
SPLIT_FLOPS = 1 << 24

LOSS_OPS = ("loss", "loss_grad")
#: the products that run one np.matmul on a stack of groups when g > 1 (calib.kernels.grouped_matmul)
GROUPED_PRODUCTS = ("conv_matmul", "conv_grad_W", "conv_grad_input")
#: ops whose strided kernel runs in the calling thread in every step (dropout's draws use the
#: network's one generator)
CALLING_THREAD = ("dropout", "dropout_grad")


def threaded_step(impl: str, threads: int) -> bool:
    """Whether `impl` runs a step on threads of its own: the strided implementation does with
    more than one thread, sharing every large op among them while BLAS runs single-threaded
    (calib.workers.Workers). One way for every network: switching BLAS's thread count between
    networks made op times depend on what ran before (measured: up to +45 % in calibration
    against a training loop)."""
    return impl == "strided" and threads >= 2


def regime(kind: str, flops: int, nbytes: int, threaded: bool, op: str = "", grouped: bool = False) -> str:
    """How an op runs: "" as in the index implementation (one thread; products with BLAS's own
    threads), "threaded" (shared among the strided implementation's threads) or "serial" (a
    product of a threaded step too small to share: single-threaded BLAS). A grouped product is
    shared by groups, as the other ops, when it moves SPLIT_BYTES (calib.workers.Workers.run);
    dropout and its gradient always run in the calling thread."""
    if not threaded or op in CALLING_THREAD:
        return ""
    if kind == MATMUL:
        if grouped:
            return "threaded" if nbytes >= SPLIT_BYTES else "serial"
        return "threaded" if flops >= SPLIT_FLOPS else "serial"
    return "threaded" if nbytes >= SPLIT_BYTES else ""


def kernel_variant(op: str, spec: "OpSpec") -> tuple[str, ...]:
    """The variant of an op whose kernel depends on its layer (the issue's "pool variants stay
    pool/pool_grad with their own cost models"): average pooling and its gradient ("avg"), the
    gradient of overlapping max pooling ("overlap": a scatter-add instead of a scatter), tanh
    and sigmoid and their gradients, the products of a grouped convolution ("grouped": one
    np.matmul on a stack of g products). Max pooling of non-overlapping windows, ReLU and
    ungrouped products have none, so a file of the course's vocabulary keeps its keys."""
    if op in ("pool", "pool_grad") and spec.pool_type == "avg":
        return ("avg",)
    if op == "pool_grad" and spec.pool_overlap:
        return ("overlap",)
    if op in ("activation", "activation_grad") and spec.activation in ("tanh", "sigmoid"):
        return (spec.activation,)
    if op in GROUPED_PRODUCTS and spec.grouped:
        return ("grouped",)
    return ()


def inner_dimension(op: str, sz: "LayerSizes", batch: int) -> int | None:
    """The dimension K that a product of `op` sums over, per group and per np.matmul call (a
    grouped product is one np.matmul on a stack of g products), for a layer of sizes `sz` at
    mini-batch `batch`; None for an op that is no product. h h d/g for conv_matmul
    (W^m phi(pad(Z^m))), d'/g for conv_grad_input ((W^m)^T dS), I a_conv b_conv for conv_grad_W
    (dS phi^T), n_in for full_matmul, n_out for full_grad_input and I for full_grad_W.
    tests/test_outer_products.py checks it against every np.matmul a real step calls."""
    dims = {"conv_matmul": lambda: sz.h * sz.h * sz.d // sz.g, "conv_grad_input": lambda: sz.d_next // sz.g,
            "conv_grad_W": lambda: batch * sz.a_conv * sz.b_conv, "full_matmul": lambda: sz.n_in,
            "full_grad_input": lambda: sz.n_out, "full_grad_W": lambda: batch}
    return dims[op]() if op in dims else None


#: the model key (op part) of every outer product: a product whose inner dimension
#: (inner_dimension) is 1, whatever its op: the input gradient of a depthwise convolution
#: (d'/g = 1), the forward product of a 1x1 convolution of a one-channel input, the weight
#: gradient of a full layer at I = 1. np.matmul runs those in its own loop, not BLAS, at about
#: 1.7 ns per output element in one thread, float32 and float64 alike, where BLAS (an inner
#: dimension of 2) moves 10-30 GB/s: 2.4 GB/s against 16-33 GB/s for a (512, K) x (K, 4096)
#: product. One loop, one model for all of them (per regime): fitted per op, the 1x1
#: convolutions' (40 sweep networks) and the full layers' weight gradients' (7) cost per byte
#: came within 6 % of each other, while the other ops' outer products had 1-4 networks or none
#: (2026-12-01). MobileNet's depthwise input gradients had run at 0.55x their prediction by the
#: model of all grouped products, depthwise-separable's channel-multiplier-2 one at 2.7x.
OUTER_PRODUCT = "outer_product"


def is_outer_product(op: str, sz: "LayerSizes", batch: int) -> bool:
    """Whether `op`, of a layer of sizes `sz` at mini-batch `batch`, is a product whose inner
    dimension is 1 (OUTER_PRODUCT)."""
    return inner_dimension(op, sz, batch) == 1


#: the ops whose strided kernels loop over the window offsets (calib.windows)
WINDOW_OPS = ("pool", "pool_grad")
#: the features of the strided implementation's pooling models in its threaded regime: the
#: inner loops and the elements of its window kernels (window_loops) in place of FLOPs. Over
#: three calibrations (2026-12-01) they took the cross-validated errors of the threaded pooling
#: gradients from 0.13-0.46 (median 0.23) to 0.06-0.38 (median 0.17) and AlexNet's first pooling
#: gradient from 13.3 ms predicted to 19.7-21.9 ms (measured 21-26 ms), its first pooling from
#: 12.7 to 16.5-19.2 ms (28 ms); in the calling thread (small poolings, where the call
#: dominates) they did no better than FEATURES: 0.23-0.62 either way
WINDOW_FEATURES = ("calls", "bytes", "bytes_beyond_L2", "bytes_beyond_L3", "inner_loops", "elements")


def inner_loops(shape: tuple[int, ...], *strides: tuple[int, ...]) -> int:
    """The inner loops of one ufunc call over operands of `shape` (C order) with these
    `strides` (in elements; 0 where an operand is broadcast), as NumPy's iterator runs them
    unbuffered: size-1 dimensions dropped, each dimension merged with the next where every
    operand's strides line up, one loop per element of the dimensions left outside the
    innermost. 0 for an empty call."""
    if 0 in shape:
        return 0
    dims = [(n, [s[i] for s in strides]) for i, n in enumerate(shape) if n > 1]
    merged: list[tuple[int, list[int]]] = []
    for n, st in dims:
        if merged and all(outer == n * inner for outer, inner in zip(merged[-1][1], st)):
            merged[-1] = (merged[-1][0] * n, st)
        else:
            merged.append((n, st))
    loops = 1
    for n, _ in merged[:-1]:
        loops *= n
    return loops


def window_loops(op: str, sz: "LayerSizes", batch: int, avg: bool, partial: bool = False) -> tuple[int, int]:
    """(inner loops, elements) of the strided implementation's kernel of a pooling (`op`
    "pool") or its gradient ("pool_grad") of layer sizes `sz` and batch I: calib.windows's
    pool_strided, pool_grad_strided, avg_pool_strided and avg_pool_grad_strided, one NumPy
    call after another, each call's inner loops as NumPy's iterator runs them (inner_loops);
    `partial`: an average pooling in ceil mode whose last windows cover fewer elements
    multiplies by a (a', b') array of 1/count, broadcast over d' and I.

    The arrays are (d', I, a, b) for A and dA and (d', I, a', b') for Z^{m+1}, dZ^{m+1} and the
    positions. Per offset (u, v) of the P x P window, r x c windows contain it
    (costmodel.model.sizes.window_count): the kernels read or write A or dA through a strided
    view of the offset (rows t b apart, columns t apart) and the other arrays through their
    [:r, :c] slice. Max pooling: offset (0, 0) copied, the positions zeroed, then per other
    offset greater and maximum (view and slices) and the positions' update (three calls on
    slices), then the positions copied. Its gradient: dA zeroed (only the rows and columns the
    windows crop when t == P without overlap), then per offset an equal on the slices and a
    multiply into the view, or with overlap a multiply into a slice and an add into the view.
    Average pooling: a copy, then an add per offset on the view, then a multiply by 1/count;
    its gradient: the multiply first, then dA zeroed as above, then a copy or (overlap) an add
    per offset into the view.

    A proxy where a call is buffered (a bool mask times floats): NumPy's buffered iterator
    runs fewer, longer loops there. Measured (2026-12-01, 36 threaded poolings of 2-36 MB):
    0.1-1.4 ns per contract byte; a 3x3/2 max pooling of a 10 x 10 input at I = 512 cost
    1.36 ns/B, of 53 x 53 at I = 15 0.23 ns/B. The loops tell them apart (about 7-10 ns each)."""
    P, t = sz.pool, sz.pool_stride
    a, b, an, bn, d = sz.a_conv, sz.b_conv, sz.a_next, sz.b_next, sz.d_next
    overlap = t < P
    full_a = (d, batch, a, b), (batch * a * b, a * b, b, 1)  # A or dA, whole
    full_n = (batch * an * bn, an * bn, bn, 1)  # strides of a (d', I, a', b') buffer
    offset = (batch * a * b, a * b, t * b, t)  # strides of an offset's view of A or dA
    loops = elements = 0

    def call(shape: tuple[int, ...], *strides: tuple[int, ...]) -> None:
        nonlocal loops, elements
        loops += inner_loops(shape, *strides)
        elements += shape[0] * shape[1] * shape[2] * shape[3]

    scale = (0, 0, bn, 1) if partial else (0, 0, 0, 0)  # 1/count: an (a', b') array or a number
    whole_n = (d, batch, an, bn)
    if op == "pool":
        call(whole_n, full_n, offset)  # offset (0, 0) copied into Z^{m+1}
        if not avg:
            call(whole_n, full_n)  # the positions zeroed
    else:
        if avg:
            call(whole_n, full_n, full_n, scale)  # dZ^{m+1} times 1/count
        if overlap or t > P:
            call(*full_a)  # dA zeroed
        else:  # only the rows and columns the windows crop
            call((d, batch, max(a - an * P, 0), b), full_a[1])
            call((d, batch, a, max(b - bn * P, 0)), full_a[1])
    for k in range(1 if op == "pool" else 0, P * P):
        u, v = divmod(k, P)
        r, c = window_count(a, u, t, an), window_count(b, v, t, bn)
        if not (r and c):
            continue
        shape = (d, batch, r, c)
        if op == "pool" and avg:
            call(shape, full_n, full_n, offset)  # add
        elif op == "pool":
            call(shape, offset, full_n, full_n)  # greater
            call(shape, full_n, offset, full_n)  # maximum
            for _ in range(3):  # subtract, multiply, add on the positions
                call(shape, full_n, full_n, full_n)
        elif avg:
            call(shape, offset, full_n, *((offset,) if overlap else ()))  # add, or copy
        else:
            call(shape, full_n, full_n)  # equal
            if overlap:
                call(shape, full_n, full_n, full_n)  # multiply into the share
                call(shape, offset, full_n, offset)  # add into dA
            else:
                call(shape, full_n, full_n, offset)  # multiply into dA
    if op == "pool" and avg:
        call(whole_n, full_n, scale, full_n)  # Z^{m+1} times 1/count
    elif op == "pool":
        call(whole_n, full_n, full_n)  # the positions copied
    return loops, elements


def model_key(op: str, loss: str, how: str = "", variant: tuple[str, ...] = ()) -> ModelKey:
    """The op kind a model is fitted for: the op; for the loss ops also the loss (mse and
    softmax_ce run different kernels under the same op name); its kernel's variant
    (kernel_variant); and its regime."""
    return ModelKey((op,), ((loss,) if op in LOSS_OPS else ()) + tuple(variant) + ((how,) if how else ()))


class NumpyBackend:
    name = "numpy"
    impls = ("index", "strided")

    def rows_of(self, costs: "StepCosts", threads: int) -> list[Row]:
        """The rows of a step whose costs are known: one per op, keyed by op, loss and regime."""
        threaded = threaded_step(costs.impl, threads)
        loss = costs.arch.loss
        rows = []
        for i, (ref, spec) in enumerate(zip(costs.ops, costs.specs)):
            flops, nbytes = int(costs.flops[i]), int(costs.bytes[i])
            how = regime(ref.kind, flops, nbytes, threaded, ref.op, spec.grouped)
            basis = {}
            if costs.impl == "strided" and ref.op in WINDOW_OPS:
                loops, elements = window_loops(ref.op, ref.sizes, costs.arch.batch, spec.pool_type == "avg",
                                               spec.pool_partial)
                basis = {"inner_loops": loops, "elements": elements}
            key = model_key(ref.op, loss, how, kernel_variant(ref.op, spec))
            legacy = None
            if is_outer_product(ref.op, ref.sizes, costs.arch.batch):
                key, legacy = ModelKey((OUTER_PRODUCT,), (how,) if how else ()), key
            rows.append(Row(ref.layer, ref.layer_type, (ref.op,), ref.phase, ref.kind, flops,
                            int(costs.bytes_read[i]), int(costs.bytes_written[i]), int(costs.memory_kept[i]),
                            key, ref.record.text, ref.record.mathtext, how=ref.record.how_for(spec), basis=basis,
                            legacy_model=legacy))
        return rows

    def rows(self, arch: "Architecture", impl: str, threads: int, machine: "Machine") -> list[Row]:
        from costmodel.model.step import step_costs

        return self.rows_of(step_costs(arch, impl), threads)

    def features(self, model: ModelKey, impl: str = "") -> tuple[str, ...]:
        """FEATURES; WINDOW_FEATURES for the strided implementation's threaded poolings."""
        windowed = impl == "strided" and model.ops[0] in WINDOW_OPS and "threaded" in model.variant
        return WINDOW_FEATURES if windowed else FEATURES

    def calibration_hint(self, dtype: str, impl: str, threads: int) -> str:
        return f"costmodel calibrate --dtype {dtype} --impl {impl} --threads {threads}"

    def setting(self, impl: str) -> str:
        return f"impl={impl}"


BACKEND = register(NumpyBackend())
