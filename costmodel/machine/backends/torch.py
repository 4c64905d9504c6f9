"""The torch backend: the same SG step in PyTorch (docs/torch-mapping.md), its rows derived from
the architecture alone, as the op list is for the NumPy reference. No torch import.

PyTorch fuses some of the contract's ops into one kernel: a convolution covers pad + phi +
conv_matmul + bias, its backward conv_grad_W + bias_grad + conv_grad_input + phi_grad +
pad_grad; a linear layer covers full_matmul + bias (addmm), its backward full_grad_W +
bias_grad + full_grad_input. Every other op of the contract is a kernel of its own. A group's
ops are the fused ones the layer has, in op list order (layer 1 has no input gradient, a layer
with p = 0 no pad). A `same` padding that differs between borders is nn.ZeroPad2d before the
convolution (aten::constant_pad_nd, its backward ConstantPadNdBackward0): its pad and pad_grad
are rows of their own. The sum of the two gradients at a residual block's input
(residual_add_grad) is the autograd engine's accumulation (an aten::add_ inside the
evaluate_function of the second node that hands it a gradient): a row of its own. What runs
in no op - nn.Module dispatch in a layer's forward, the autograd engine between its nodes - is
a row "other" (ops == ()): one per layer in the forward, one for the whole backward (layer 0,
layer_type "step").

A group's FLOPs are the sums of its ops'. A single op's bytes are those of the strided
reference. A fused kernel's bytes are its own compulsory traffic (`fused_elements`): the
layer's input, weights and output (and their gradients), once each; the padded copy and
phi(pad(Z)) stay inside the kernel, which is the point of fusing (measured: with the separate
ops' bytes, phi's h^2-fold copy included, the conv backward of large kernels was predicted
2.8x too slow). "other" is costed by the sums over the ops of its scope: dispatch work grows
with the number and size of the kernels it launches.

A fused convolution also gets `flops_lane_waste`: oneDNN computes on blocks of channels one
SIMD register wide, so a layer whose channel counts are not multiples of the register's
lanes does FLOPs on padding lanes (measured on the sweep: from ~25 GFLOP/s median at
fewer than 4 channels to ~120 GFLOP/s at 16-64; without this feature the examples' 32- and
64-channel conv backward was predicted 1.7-1.9x too slow). Every group also gets
`bytes_fresh`, the bytes of its outputs of at least FRESH_BYTES, which every step maps and
faults in anew.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from costmodel.machine.backends.base import OTHER, ModelKey, Row, register
from costmodel.machine.timemodel import FEATURES
from costmodel.model.arch import LayerSizes
from costmodel.model.ops import MATMUL, OpRef

if TYPE_CHECKING:
    from costmodel.machine.timemodel import Machine
    from costmodel.model.arch import Architecture
    from costmodel.model.costs import OpSpec
    from costmodel.model.step import StepCosts

#: the reference implementation whose byte convention the rows' bytes use
BYTES_IMPL = "strided"

#: dtypes whose convolutions PyTorch runs as im2col + a BLAS product
#: (aten::_slow_conv2d_forward/backward, with phi(pad(Z)) of the whole batch in memory), not
#: as oneDNN's direct convolution (aten::mkldnn_convolution, float32): their fused groups
#: are costed with their ops' bytes and waste no lanes (torch 2.13 on x86; docs/torch-mapping.md)
IM2COL_DTYPES = frozenset({"float64"})

#: glibc's largest mmap threshold on 64-bit Linux: an allocation of at least this many bytes
#: is always mapped fresh, so every step faults its pages in again (PyTorch's CPU allocator
#: does not cache); smaller ones are reused from the heap
FRESH_BYTES = 32 << 20

FUSED_CONV = "fused convolution"
OTHER_KIND = "framework overhead"

#: (phase, layer kind) -> the contract's ops one PyTorch kernel covers, what the group is,
#: and its notation (plain text, mathtext), named by the product it is built around
FUSED: dict[tuple[str, str], tuple[tuple[str, ...], str, tuple[str, str]]] = {
    ("forward", "conv"): (("pad", "phi", "conv_matmul", "bias"), FUSED_CONV,
                          ("conv(Z$m; W$m) + b$m, fused", r"\mathrm{conv}(Z$m; W$m) + b$m")),
    ("backward", "conv"): (("conv_grad_W", "bias_grad", "conv_grad_input", "phi_grad", "pad_grad"), FUSED_CONV,
                           ("conv backward of dS$m, fused", r"\mathrm{conv}'(dS$m)")),
    ("forward", "full"): (("full_matmul", "bias"), MATMUL, ("W$m Z$m + b$m 1^T", r"W$m Z$m + b$m 1^T")),
    ("backward", "full"): (("full_grad_W", "bias_grad", "full_grad_input"), MATMUL,
                           ("dS$m (Z$m)^T, dS$m 1, (W$m)^T dS$m", r"dS$m (Z$m)^T, (W$m)^T dS$m")),
}
OTHER_NOTATION = ("other (framework)", r"\mathrm{other}")
#: ops that are a parameter of the kernel that runs them, not a kernel of their own: a group's
#: model does not depend on whether the layer pads (the bytes are in the features)
PARAMETER_OPS = frozenset({"pad", "pad_grad"})
LANE_FEATURES = FEATURES + ("bytes_fresh", "flops_lane_waste")
TORCH_FEATURES = FEATURES + ("bytes_fresh",)
#: a grouped convolution's model also prices its products per image and group (grouped_gemm)
GROUPED_FEATURES = LANE_FEATURES + ("gemm_calls",)


class TorchRow:
    """One row of the PyTorch step before costing: its key, the op list indices it covers and
    those it is costed by (its scope), its kind and notation."""

    __slots__ = ("layer", "layer_type", "ops", "phase", "members", "scope", "kind", "notation", "sizes")

    def __init__(self, layer, layer_type, ops, phase, members, scope, kind, notation, sizes):
        self.layer, self.layer_type, self.ops, self.phase = layer, layer_type, ops, phase
        self.members, self.scope, self.kind, self.notation, self.sizes = members, scope, kind, notation, sizes

    @property
    def fused(self) -> bool:
        return len(self.ops) > 1


def fused_ops(phase: str, sizes: LayerSizes | None) -> tuple[str, ...]:
    """The ops of a layer's phase that one PyTorch kernel runs together (FUSED), without the
    padding of a `same` padding that differs between borders (nn.ZeroPad2d runs it)."""
    kind = "loss" if sizes is None else sizes.kind
    fused = FUSED.get((phase, kind), ((), "", ("", "")))[0]
    if sizes is not None and sizes.kind == "conv" and sizes.p is None:
        fused = tuple(op for op in fused if op not in PARAMETER_OPS)
    return fused


def torch_groups(refs: list[OpRef]) -> list[TorchRow]:
    """The rows of the PyTorch step for the op list `refs`, in its order (each group where its
    first op is; a layer's forward "other" after that layer's forward ops; the backward's
    "other" after the last backward group, before the updates)."""
    groups: list[TorchRow] = []
    placed: set[int] = set()
    for i, ref in enumerate(refs):
        if i not in placed:
            _, kind, notation = FUSED.get((ref.phase, ref.layer_type), ((), "", ("", "")))
            fused = fused_ops(ref.phase, ref.sizes)
            if ref.op in fused:
                members = tuple(j for j, r in enumerate(refs)
                                if (r.layer, r.phase) == (ref.layer, ref.phase) and r.op in fused)
            else:
                members, kind, notation = (i,), ref.kind, (ref.record.text, ref.record.mathtext)
            placed.update(members)
            groups.append(TorchRow(ref.layer, ref.layer_type, tuple(refs[j].op for j in members), ref.phase, members,
                                members, kind, notation, ref.sizes))
        nxt = refs[i + 1] if i + 1 < len(refs) else None
        if ref.phase == "forward" and ref.layer_type != "loss" and (nxt is None or nxt.layer != ref.layer):
            scope = tuple(j for j, r in enumerate(refs) if (r.layer, r.phase) == (ref.layer, "forward"))
            groups.append(TorchRow(ref.layer, ref.layer_type, (), "forward", (), scope, OTHER_KIND, OTHER_NOTATION,
                                ref.sizes))
        if ref.phase == "backward" and (nxt is None or nxt.phase != "backward"):
            scope = tuple(j for j, r in enumerate(refs) if r.phase == "backward")
            groups.append(TorchRow(0, "step", (), "backward", (), scope, OTHER_KIND, OTHER_NOTATION, None))
    return groups


def torch_variant(ops: tuple[str, ...], spec: "OpSpec", sizes: LayerSizes | None = None) -> tuple[str, ...]:
    """The variant of a group whose PyTorch kernel depends on its layer: average pooling
    (avg_pool2d and its backward, "avg"), tanh and sigmoid, a depthwise convolution
    ("depthwise": oneDNN's jit_dw), another grouped one ("grouped": its grouped jit or gemm
    kernels, grouped_gemm), an ungrouped convolution with a stride s > 1
    ("stride": its forward, and its backward with an input gradient, which scatters dZ over
    the strided windows). Max pooling (overlapping or not), ReLU and ungrouped convolutions of
    stride 1 have none, so a file of the course's vocabulary keeps its keys.

    A strided convolution runs other kernels than one of stride 1 at the same FLOPs and bytes:
    on a 192-network sweep its backward groups ran 1.16-1.25x what one model of both strides
    predicted and those of stride 1 0.93-0.96x, so the examples (stride 1) were predicted
    1.2x slow; a model of each brought the median step error of benchmarks/accuracy.py's
    torch set from 10.6 % to 6.5 % (2026-12-01). Layer 1's backward has no input gradient and
    its sweep layer no stride: it keeps one model."""
    if ops in (("pool",), ("pool_grad",)) and spec.pool_type == "avg":
        return ("avg",)
    if ops in (("activation",), ("activation_grad",)) and spec.activation in ("tanh", "sigmoid"):
        return (spec.activation,)
    if spec.grouped and ("conv_matmul" in ops or "conv_grad_W" in ops):
        return ("depthwise",) if sizes is not None and depthwise(sizes) else ("grouped",)
    if sizes is not None and sizes.kind == "conv" and sizes.s > 1 and ("conv_matmul" in ops or "conv_grad_input" in ops):
        return ("stride",)
    return ()


def group_model_key(ops: tuple[str, ...], phase: str, loss: str, variant: tuple[str, ...] = ()) -> ModelKey:
    """The model a group's time is fitted with: the group's ops without the PARAMETER_OPS (a
    padding that runs on its own keeps its name) and its variant (torch_variant); for the loss
    ops also the loss; "other:forward" and "other:backward" for what maps to no op."""
    if not ops:
        return ModelKey((OTHER,), (phase,))
    if ops[0] in ("loss", "loss_grad"):
        return ModelKey(ops, (loss,))
    return ModelKey(tuple(op for op in ops if op not in PARAMETER_OPS) or ops, tuple(variant))


def fused_elements(sz: LayerSizes, ops: tuple[str, ...], phase: str, I: int) -> tuple[int, int]:
    """(elements read, elements written) of a fused kernel: once each, its input Z, its
    weights W and b, and its output S forward; Z, W (for the input gradient), dS, dW, db and
    dZ (not in layer 1) backward. Conv: Z is d x I x a x b (the padded input when the padding
    runs on its own, nn.ZeroPad2d), S is d' x I x a_conv x b_conv, W is d' x h^2 d/g; full: Z is
    n_in x I, S is n_out x I, W is n_out x n_in."""
    if sz.kind == "conv":
        own_pad = sz.p is None  # a padding that differs between borders: nn.ZeroPad2d before the kernel
        a, b = (sz.a_pad, sz.b_pad) if own_pad else (sz.a, sz.b)
        rows, cols = sz.weight_shape
        z, out, w = sz.d * I * a * b, sz.d_next * I * sz.a_conv * sz.b_conv, rows * cols
    else:
        z, out, w = sz.n_in * I, sz.n_out * I, sz.n_out * sz.n_in
    bias = sz.d_next if sz.kind == "conv" else sz.n_out
    if phase == "forward":
        return z + w + bias, out
    input_grad = any(op in ("conv_grad_input", "full_grad_input") for op in ops)
    return z + out + (w if input_grad else 0), w + bias + (z if input_grad else 0)


def lane_waste_flops(sz: LayerSizes, layer: int, flops: int, lanes: int) -> int:
    """FLOPs a fused convolution spends on SIMD lanes past its channel counts: its FLOPs times
    (d' rounded up to `lanes`)/d' x (d rounded up)/d, minus its FLOPs. Layer 1's input
    channels (1 or 3, read in their plain layout) are not blocked. A depthwise convolution
    (oneDNN's jit_dw) blocks its g = d channels once: (g rounded up)/g. Another grouped one
    runs blocked only with whole blocks of channels per group (grouped_gemm): no waste."""
    if sz.kind != "conv" or lanes <= 1:
        return 0

    def padded(n: int) -> float:
        return -(-n // lanes) * lanes / n

    if depthwise(sz):
        factor = padded(sz.g)
    elif sz.g > 1:
        return 0
    else:
        factor = padded(sz.d_next) * (padded(sz.d) if layer > 1 else 1.0)
    return int(round(flops * (factor - 1.0)))


def depthwise(sz: LayerSizes) -> bool:
    """A depthwise convolution: one input and one output channel per group (g = d = d')."""
    return sz.kind == "conv" and sz.g > 1 and sz.d == sz.g and sz.d_next == sz.g


def group_block(phase: str, lanes: int) -> int:
    """The fewest channels per group oneDNN's blocked (jit) kernels of a grouped convolution
    take, in float32: 4 forward and 8 backward (its weight gradient) with 16 lanes (AVX-512),
    else the lanes (8 with AVX2). Read from ONEDNN_VERBOSE with torch 2.13, oneDNN 3.x, on
    AVX-512 and ONEDNN_MAX_CPU_ISA=AVX2, over g = 2, 8, 32 and 1-32 channels per group."""
    if lanes >= 16:
        return 4 if phase == "forward" else 8
    return lanes


def grouped_gemm(sz: LayerSizes | None, phase: str, lanes: int, im2col: bool) -> bool:
    """Whether PyTorch runs this grouped convolution's phase as one im2col and one matrix
    product per image and group: oneDNN's gemm convolution (x64:gemm:jit) when a group's d/g
    or d'/g is not a multiple of group_block (a depthwise multiplier of 2 is: 1 and 2), and
    the im2col path of IM2COL_DTYPES for every grouped convolution. Measured on the float32
    sweep: these ran at 0.6-5 GFLOP/s, 0.5-0.7 us per image and group (2026-12-01)."""
    if sz is None or sz.kind != "conv" or sz.g <= 1:
        return False
    if im2col:
        return True
    if depthwise(sz):
        return phase == "backward" and not depthwise_weight_grad_direct(sz)
    block = group_block(phase, lanes)
    return bool((sz.d // sz.g) % block or (sz.d_next // sz.g) % block)


def depthwise_weight_grad_direct(sz: LayerSizes) -> bool:
    """Whether oneDNN's depthwise kernel (jit_dw) computes this depthwise convolution's weight
    gradient: only for a 1x1 kernel of stride 1 and a 3x3 one, except a 3x3 one padded by 1 on
    an input of 2 or less, or of 3 with stride 2; otherwise its gemm convolution does, one
    product per image and group. Read from ONEDNN_VERBOSE (torch 2.13; kernels 1-7, inputs
    2-25, strides 1 and 2, paddings 0 and h // 2, on AVX-512 and AVX2). mobilenet-cifar10's last
    3x3 depthwise layer, on a 2x2 input, took 14 ms backward against 1.1 ms for the one before
    it on a 4x4 input. A `same` padding that differs between borders runs on its own
    (nn.ZeroPad2d): the convolution sees the padded input and no padding."""
    if sz.h == 1:
        return sz.s == 1
    if sz.h != 3:
        return False
    unpadded = sz.p is None or sz.p == 0
    a = min(sz.a, sz.b)
    return unpadded or not (a <= 2 or (a == 3 and sz.s == 2))


def simd_lanes(cpu_flags, itemsize: int) -> int:
    """Elements of `itemsize` bytes in one SIMD register of a CPU with these flags: 64-byte
    registers with AVX-512, 32 with AVX, else 16 (SSE, NEON)."""
    flags = set(cpu_flags)
    width = 64 if "avx512f" in flags else 32 if "avx" in flags or "avx2" in flags else 16
    return max(width // itemsize, 1)


class TorchBackend:
    name = "torch"
    impls = ("torch",)

    def rows_of(self, costs: "StepCosts", lanes: int = 1) -> list[Row]:
        """The rows of PyTorch's step of `costs.arch` (costs: of the strided reference), with
        flops_lane_waste for `lanes` SIMD lanes. A fused group's FLOPs are its ops'; its bytes
        its own traffic (module docstring); "other" does no arithmetic of its own: its costs
        are 0, and its features are those of its scope."""
        arch = costs.arch
        width, im2col = arch.itemsize, arch.dtype in IM2COL_DTYPES
        rows = []
        for g in torch_groups(list(costs.ops)):
            idx = list(g.scope)
            spec = costs.specs[idx[0]] if g.ops else None
            flops = int(costs.flops[idx].sum())
            read, written = int(costs.bytes_read[idx].sum()), int(costs.bytes_written[idx].sum())
            gemm = g.fused and grouped_gemm(g.sizes, g.phase, lanes, im2col)
            direct = g.fused and not im2col and not gemm  # one oneDNN kernel, no phi in memory
            if direct:
                r, w = fused_elements(g.sizes, g.ops, g.phase, arch.batch)
                read, written = r * width, w * width
            if direct:
                fresh = written if written >= FRESH_BYTES else 0
            elif g.ops:  # each op's output, phi of an im2col convolution included
                fresh = sum(int(costs.bytes_written[j]) for j in idx if costs.bytes_written[j] >= FRESH_BYTES)
            else:
                fresh = 0
            waste = lane_waste_flops(g.sizes, g.layer, flops, lanes) if direct else 0
            calls = arch.batch * g.sizes.g if gemm else 0
            basis = {"flops": flops, "bytes": read + written, "bytes_fresh": fresh, "flops_lane_waste": waste,
                     "gemm_calls": calls}
            extra = {"flops_lane_waste": waste, "bytes_fresh": fresh, "gemm_calls": calls}
            kept = int(costs.memory_kept[idx].sum())
            if not g.ops:
                extra = {"scope_flops": flops, "scope_bytes": read + written, **extra}
                flops = read = written = kept = 0
            variant = torch_variant(g.ops, spec, g.sizes) if spec is not None else ()
            key = group_model_key(g.ops, g.phase, arch.loss, variant)
            # a profile made before the depthwise model priced depthwise convolutions by its grouped one
            legacy = ModelKey(key.ops, ("grouped",)) if variant == ("depthwise",) else None
            rows.append(Row(g.layer, g.layer_type, g.ops, g.phase, g.kind, flops, read, written, kept,
                            key, *g.notation, basis, extra, legacy_model=legacy))
        return rows

    def rows(self, arch: "Architecture", impl: str, threads: int, machine: "Machine") -> list[Row]:
        from costmodel.model.step import step_costs

        return self.rows_of(step_costs(arch, BYTES_IMPL), simd_lanes(machine.cpu_flags, arch.itemsize))

    def features(self, model: ModelKey, impl: str = "") -> tuple[str, ...]:
        if "grouped" in model.variant or "depthwise" in model.variant:
            return GROUPED_FEATURES
        if "conv_matmul" in model.ops or "conv_grad_W" in model.ops:
            return LANE_FEATURES
        return TORCH_FEATURES

    def calibration_hint(self, dtype: str, impl: str, threads: int) -> str:
        return f"costmodel calibrate --dtype {dtype} --threads {threads} --backend torch"

    def setting(self, impl: str) -> str:
        return "PyTorch op groups (docs/torch-mapping.md)"


BACKEND = register(TorchBackend())
