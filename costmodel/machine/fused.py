"""The op groups of the same SG step in PyTorch (docs/torch-mapping.md), derived from the
architecture alone, as costmodel.model.ops derives the NumPy reference's op list.

PyTorch fuses some of the contract's ops into one kernel: a convolution covers pad + phi +
conv_matmul + bias, its backward conv_grad_W + bias_grad + conv_grad_input + phi_grad +
pad_grad; a linear layer covers full_matmul + bias (addmm), its backward full_grad_W +
bias_grad + full_grad_input. Every other op of the contract is a kernel of its own. A group is
named by its ops joined with "+" in the order of op_list, restricted to the ops the layer has
(layer 1 has no input gradient, a layer with p = 0 no pad). What runs in no op - nn.Module
dispatch in a layer's forward, the autograd engine between its nodes - is a group "other":
one per layer in the forward, one for the whole backward (layer 0, layer_type "step").

A group's FLOPs are the sums of its ops'. A single op's bytes are those of the strided
reference. A fused kernel's bytes are its own compulsory traffic (`fused_elements`): the
layer's input, weights and output (and their gradients), once each; the padded copy and
phi(pad(Z)) stay inside the kernel, which is the point of fusing (measured: with the separate
ops' bytes, phi's h^2-fold copy included, the conv backward of large kernels was predicted
2.8x too slow). "other" gets the sums over the ops of its scope: dispatch work grows with the
number and size of the kernels it launches.

A fused convolution also gets `lane_waste_flops`: oneDNN computes on blocks of channels one
SIMD register wide, so a layer whose channel counts are not multiples of the register's
lanes does FLOPs on padding lanes (measured on the sweep: from ~25 GFLOP/s median at
fewer than 4 channels to ~120 GFLOP/s at 16-64; without this feature the examples' 32- and
64-channel conv backward was predicted 1.7-1.9x too slow). Every group also gets
`bytes_fresh`, the bytes of its outputs of at least FRESH_BYTES, which every step maps and
faults in anew.
"""

from __future__ import annotations

from dataclasses import dataclass

from costmodel.model.arch import Architecture, LayerSizes
from costmodel.model.ops import OP_KIND, OpKey, op_list

OTHER = "other"
#: the reference implementation whose byte convention the groups' bytes use
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

#: (phase, layer kind) -> the contract's ops one PyTorch kernel covers
FUSED: dict[tuple[str, str], tuple[str, ...]] = {
    ("forward", "conv"): ("pad", "phi", "conv_matmul", "bias"),
    ("forward", "full"): ("full_matmul", "bias"),
    ("backward", "conv"): ("conv_grad_W", "bias_grad", "conv_grad_input", "phi_grad", "pad_grad"),
    ("backward", "full"): ("full_grad_W", "bias_grad", "full_grad_input"),
}

#: what a group is, for --by kind and explanations
GROUP_KIND = {
    ("forward", "conv"): "fused convolution",
    ("backward", "conv"): "fused convolution",
    ("forward", "full"): "matrix product",
    ("backward", "full"): "matrix product",
}
OTHER_KIND = "framework overhead"


@dataclass(frozen=True)
class Group:
    """One row of the PyTorch step: a fused group, a single op, or "other"."""

    key: OpKey
    ops: tuple[str, ...]  # the contract's ops it covers; () for "other"
    scope: tuple[OpKey, ...]  # the contract ops whose FLOPs (and bytes, unless fused) it is costed by
    kind: str
    sizes: LayerSizes | None = None  # of its layer; None for the loss and the backward's "other"

    @property
    def fused(self) -> bool:
        return len(self.ops) > 1

    @property
    def name(self) -> str:
        return self.key.op


def torch_groups(arch: Architecture) -> list[Group]:
    """The rows of the PyTorch step of `arch`, in the order of op_list (each group where its
    first op is; a layer's forward "other" after that layer's forward ops; the backward's
    "other" after the last backward group, before the updates)."""
    refs = op_list(arch)
    groups: list[Group] = []
    placed: set[OpKey] = set()
    for i, ref in enumerate(refs):
        if ref.key not in placed:
            fused = FUSED.get((ref.phase, ref.layer_type), ())
            if ref.op in fused:
                members = tuple(r.key for r in refs if (r.layer, r.phase) == (ref.layer, ref.phase)
                                and r.op in fused)
                kind = GROUP_KIND[(ref.phase, ref.layer_type)]
            else:
                members, kind = (ref.key,), OP_KIND[ref.op]
            placed.update(members)
            groups.append(Group(OpKey(ref.layer, ref.layer_type, "+".join(k.op for k in members), ref.phase),
                                tuple(k.op for k in members), members, kind, ref.sizes))
        nxt = refs[i + 1] if i + 1 < len(refs) else None
        if ref.phase == "forward" and ref.layer_type != "loss" and (nxt is None or nxt.layer != ref.layer):
            scope = tuple(r.key for r in refs if (r.layer, r.phase) == (ref.layer, "forward"))
            groups.append(Group(OpKey(ref.layer, ref.layer_type, OTHER, "forward"), (), scope, OTHER_KIND,
                                ref.sizes))
        if ref.phase == "backward" and (nxt is None or nxt.phase != "backward"):
            scope = tuple(r.key for r in refs if r.phase == "backward")
            groups.append(Group(OpKey(0, "step", OTHER, "backward"), (), scope, OTHER_KIND))
    return groups


def group_model_key(group: str, phase: str, loss: str) -> str:
    """The model a group's time is fitted with: the group's name without pad and pad_grad
    (padding is a parameter of the same kernel, and its bytes are in the features); for the
    loss ops also the loss; "other:forward" and "other:backward" for what maps to no op."""
    if group == OTHER:
        return f"{OTHER}:{phase}"
    if group in ("loss", "loss_grad"):
        return f"{group}:{loss}"
    return "+".join(op for op in group.split("+") if op not in ("pad", "pad_grad"))


def fused_elements(group: Group, I: int) -> tuple[int, int]:
    """(elements read, elements written) of a fused kernel: once each, its input Z, its
    weights W and b, and its output S forward; Z, W (for the input gradient), dS, dW, db and
    dZ (not in layer 1) backward. Conv: Z is d x I x a x b, S is d' x I x a_conv x b_conv, W is
    d' x h^2 d; full: Z is n_in x I, S is n_out x I, W is n_out x n_in."""
    sz = group.sizes
    if not group.fused or sz is None:
        raise ValueError(f"{group.name}: not a fused group")
    if sz.kind == "conv":
        z, out, w = sz.d * I * sz.a * sz.b, sz.d_next * I * sz.a_conv * sz.b_conv, sz.d_next * sz.h * sz.h * sz.d
    else:
        z, out, w = sz.n_in * I, sz.n_out * I, sz.n_out * sz.n_in
    bias = sz.d_next if sz.kind == "conv" else sz.n_out
    if group.key.phase == "forward":
        return z + w + bias, out
    input_grad = any(op in ("conv_grad_input", "full_grad_input") for op in group.ops)
    return z + out + (w if input_grad else 0), w + bias + (z if input_grad else 0)


def lane_waste_flops(group: Group, flops: int, lanes: int) -> int:
    """FLOPs a fused convolution spends on SIMD lanes past its channel counts: its FLOPs times
    (d' rounded up to `lanes`)/d' x (d rounded up)/d, minus its FLOPs. Layer 1's input
    channels (1 or 3, read in their plain layout) are not blocked. 0 for any other group."""
    sz = group.sizes
    if not group.fused or sz is None or sz.kind != "conv" or lanes <= 1:
        return 0

    def padded(n: int) -> float:
        return -(-n // lanes) * lanes / n

    factor = padded(sz.d_next) * (padded(sz.d) if group.key.layer > 1 else 1.0)
    return int(round(flops * (factor - 1.0)))


def torch_rows(arch: Architecture, lanes: int = 1) -> list[dict]:
    """The rows of PyTorch's step of `arch` for costmodel.machine.predict.step_rows: per group its
    FLOPs and bytes (as the module docstring says), kind, model key and flops_lane_waste for
    `lanes` SIMD lanes. An "other" row does no arithmetic of its own: its flops and bytes are
    0, and scope_flops / scope_bytes, what its model is fitted on, are its scope's sums."""
    from costmodel.model.evaluate import costs_report

    width = arch.itemsize
    cost = {(r["layer"], r["op"], r["phase"]): r for r in costs_report(arch, BYTES_IMPL)["ops"]}
    rows = []
    for g in torch_groups(arch):
        parts = [cost[(k.layer, k.op, k.phase)] for k in g.scope]
        sums = {k: sum(p[k] for p in parts) for k in ("flops", "bytes_read", "bytes_written", "bytes")}
        direct = g.fused and arch.dtype not in IM2COL_DTYPES  # one oneDNN kernel, no phi in memory
        if direct:
            read, written = fused_elements(g, arch.batch)
            sums.update(bytes_read=read * width, bytes_written=written * width, bytes=(read + written) * width)
        row = {"layer": g.key.layer, "layer_type": g.key.layer_type, "op": g.name, "phase": g.key.phase}
        if g.name == OTHER:
            row.update(flops=0, bytes_read=0, bytes_written=0, bytes=0, intensity=0.0, memory_kept_bytes=0,
                       scope_flops=sums["flops"], scope_bytes=sums["bytes"])
        else:
            row.update(sums, intensity=sums["flops"] / sums["bytes"] if sums["bytes"] else 0.0,
                       memory_kept_bytes=sum(p["memory_kept_bytes"] for p in parts))
        if g.name == OTHER:
            fresh = 0
        elif direct:
            fresh = sums["bytes_written"] if sums["bytes_written"] >= FRESH_BYTES else 0
        else:  # each op's output, phi of an im2col convolution included
            fresh = sum(p["bytes_written"] for p in parts if p["bytes_written"] >= FRESH_BYTES)
        row.update(flops_lane_waste=lane_waste_flops(g, sums["flops"], lanes) if direct else 0,
                   bytes_fresh=fresh, seconds=None, fraction=None,
                   kind=g.kind, model=group_model_key(g.name, g.key.phase, arch.loss))
        rows.append(row)
    return rows
