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

if TYPE_CHECKING:
    from costmodel.machine.timemodel import Machine
    from costmodel.model.arch import Architecture
    from costmodel.model.costs import OpSpec
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
            rows.append(Row(ref.layer, ref.layer_type, (ref.op,), ref.phase, ref.kind, flops,
                            int(costs.bytes_read[i]), int(costs.bytes_written[i]), int(costs.memory_kept[i]),
                            model_key(ref.op, loss, how, kernel_variant(ref.op, spec)),
                            ref.record.text, ref.record.mathtext, how=ref.record.how_for(spec)))
        return rows

    def rows(self, arch: "Architecture", impl: str, threads: int, machine: "Machine") -> list[Row]:
        from costmodel.model.step import step_costs

        return self.rows_of(step_costs(arch, impl), threads)

    def features(self, model: ModelKey) -> tuple[str, ...]:
        return FEATURES

    def legacy_key(self, model: ModelKey) -> ModelKey | None:
        return None

    def calibration_hint(self, dtype: str, impl: str, threads: int) -> str:
        return f"costmodel calibrate --dtype {dtype} --impl {impl} --threads {threads}"

    def setting(self, impl: str) -> str:
        return f"impl={impl}"


BACKEND = register(NumpyBackend())
