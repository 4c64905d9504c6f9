"""torch.profiler's events mapped onto the op names of the step (docs/torch-mapping.md): which
kernel of which module is which op (or op group) of which layer, in forward and backward."""

from __future__ import annotations

from collections import defaultdict

from costmodel.machine.backends import OTHER
from costmodel.machine.backends.torch import FUSED, torch_groups
from costmodel.model.arch import Architecture
from costmodel.model.ops import op_list

_CONV_FWD = FUSED[("forward", "conv")][0]
_CONV_BWD = FUSED[("backward", "conv")][0]

#: top-level aten op of a layer's forward range -> the contract's ops it covers (the row is the
#: torch group of the layer that holds most of them: a convolution is the fused group, with or
#: without the padding, costmodel.machine.backends.torch.fused_ops)
FORWARD_MAP: dict[str, tuple[str, ...]] = {
    **{name: _CONV_FWD for name in ("aten::conv2d", "aten::convolution", "aten::_convolution",
                                     "aten::mkldnn_convolution", "aten::_slow_conv2d_forward",
                                     "aten::thnn_conv2d")},
    **{name: ("pad",) for name in ("aten::pad", "aten::constant_pad_nd")},
    **{name: ("activation",) for name in ("aten::relu", "aten::relu_", "aten::clamp_min",
                                           "aten::threshold", "aten::tanh", "aten::sigmoid")},
    **{name: ("pool",) for name in ("aten::max_pool2d", "aten::max_pool2d_with_indices",
                                     "aten::avg_pool2d")},
    **{name: ("batch_norm",) for name in ("aten::batch_norm", "aten::_batch_norm_impl_index",
                                           "aten::native_batch_norm")},
    # nn.Dropout (aten::dropout: bernoulli_, div_, mul); a fixed mask (tests) is two aten::mul
    **{name: ("dropout",) for name in ("aten::dropout", "aten::native_dropout", "aten::mul")},
    **{name: ("global_avg_pool",) for name in ("aten::adaptive_avg_pool2d", "aten::mean")},
    **{name: ("flatten",) for name in ("aten::flatten", "aten::view", "aten::reshape",
                                        "aten::_reshape_alias")},
    "aten::linear": FUSED[("forward", "full")][0],
    "aten::addmm": FUSED[("forward", "full")][0],
    "aten::matmul": ("full_matmul",),
    "aten::mm": ("full_matmul",),
    "aten::t": ("full_matmul",),
    "aten::add": ("bias", "residual_add"),  # a residual block's F(X) + shortcut(X)
    "aten::add_": ("bias",),
}
#: nn.BatchNorm counts its steps (num_batches_tracked.add_(1)) right before aten::batch_norm
BATCH_NORM_COUNTER = ("aten::add_", "aten::batch_norm")

#: autograd node of a layer's backward (from "autograd::engine::evaluate_function: NODE")
BACKWARD_MAP: dict[str, tuple[str, ...]] = {
    "ConvolutionBackward0": _CONV_BWD,
    "MkldnnConvolutionBackward0": _CONV_BWD,
    "ConstantPadNdBackward0": ("pad_grad",),
    "ReluBackward0": ("activation_grad",),
    "ThresholdBackward0": ("activation_grad",),
    "ClampMinBackward0": ("activation_grad",),
    "TanhBackward0": ("activation_grad",),
    "SigmoidBackward0": ("activation_grad",),
    "MaxPool2DWithIndicesBackward0": ("pool_grad",),
    "AvgPool2DBackward0": ("pool_grad",),
    "NativeBatchNormBackward0": ("batch_norm_grad",),
    "MulBackward0": ("dropout_grad",),
    "NativeDropoutBackward0": ("dropout_grad",),
    "MeanBackward1": ("global_avg_pool_grad",),
    "MeanBackward0": ("global_avg_pool_grad",),
    "AdaptiveAvgPool2DBackward0": ("global_avg_pool_grad",),
    "ViewBackward0": ("flatten_grad",),
    "ReshapeAliasBackward0": ("flatten_grad",),
    "UnsafeViewBackward0": ("flatten_grad",),
    "CloneBackward0": ("flatten_grad",),  # flatten of a non-contiguous tensor copies
    "AddmmBackward0": FUSED[("backward", "full")][0],
    "MmBackward0": ("full_grad_W", "full_grad_input"),
    "TBackward0": ("full_grad_W",),
    # a bias added on its own; a residual block's addition hands its gradient on unchanged (no
    # op of the contract: the backward's "other")
    "AddBackward0": ("bias_grad",),
}
#: what the autograd engine runs inside a node's evaluate_function, besides the node, when a
#: second gradient reaches the node's input: the accumulation, residual_add_grad of the layer
#: whose output is a residual block's input
ACCUMULATE = ("aten::add_", "aten::add")

EVALUATE = "autograd::engine::evaluate_function: "


def event_children(event) -> list:
    return list(event.cpu_children)


def classify(events, arch: Architecture) -> dict[tuple[int, str, str], float]:
    """Seconds per (layer, row name, phase) of the events of one profiled step, from its
    top-level ranges. A row is one of costmodel.machine.backends.torch's groups of the layer
    (torch_groups): an event maps to the contract's ops it covers (FORWARD_MAP, BACKWARD_MAP)
    and goes to the group of the layer that holds most of them, named as
    costmodel.machine.backends.Row names it (joined with "+"); an event that covers none of
    them is "other". The engine's accumulation of a second gradient (ACCUMULATE, inside a
    node's evaluate_function) is residual_add_grad of the layer whose output the node reads.
    Layer 0 holds what belongs to no layer (other, backward)."""
    sizes = arch.sizes()
    L = len(sizes)
    refs = op_list(arch)
    rows: dict[tuple[int, str], dict[str, tuple[str, ...]]] = defaultdict(dict)
    for g in torch_groups(refs):
        for op in g.ops:
            rows[(g.layer, g.phase)][op] = g.ops

    def group(m: int, phase: str, ops: tuple[str, ...]) -> tuple[str, ...]:
        """The group of layer m's phase that holds most of `ops` (() if none holds any)."""
        held = {g for op, g in rows.get((m, phase), {}).items() if op in ops}
        return max(held, key=lambda g: (len(set(g) & set(ops)), g), default=())

    def fork_of(m: int) -> int:
        """The layer whose output layer m reads and that is a residual block's input (0: none)."""
        if not 1 <= m <= L:
            return 0
        return next((i for i in sizes[m - 1].inputs if i > 0 and sizes[i - 1].fork), 0)

    seconds: dict[tuple[int, tuple[str, ...], str], float] = defaultdict(float)
    seq_layer: dict[int, int] = {}
    backward = []
    for rng in events:
        name = rng.name.removeprefix("costmodel:")
        if name == "backward":
            backward.append(rng)
            continue
        if name == "loss":
            _mark(rng, L + 1, seq_layer)
            seconds[(L + 1, ("loss",), "forward")] += rng.cpu_time_total * 1e-6
            continue
        layer, _, phase = name.removeprefix("layer").partition(":")
        m = int(layer)
        if phase != "forward":
            seconds[(m, ("update",), "update")] += rng.cpu_time_total * 1e-6
            continue
        _mark(rng, m, seq_layer)
        inside = 0.0
        children = event_children(rng)
        for j, e in enumerate(children):
            ops = FORWARD_MAP.get(e.name, ())
            if (e.name, children[j + 1].name if j + 1 < len(children) else "") == BATCH_NORM_COUNTER:
                ops = ("batch_norm",)
            seconds[(m, group(m, "forward", ops), "forward")] += e.cpu_time_total * 1e-6
            inside += e.cpu_time_total * 1e-6
        # time in the range outside its aten ops (nn.Module calls, dispatch): maps to no op
        seconds[(m, (), "forward")] += max(rng.cpu_time_total * 1e-6 - inside, 0.0)
    for rng in backward:
        inside = 0.0
        for e in event_children(rng):
            inside += e.cpu_time_total * 1e-6
            m = seq_layer.get(e.sequence_nr, 0) if e.name.startswith(EVALUATE) else 0
            t = e.cpu_time_total * 1e-6
            if m == L + 1 or (m == 0 and e.name == "aten::ones_like"):  # the seed gradient too
                key = (L + 1, ("loss_grad",), "backward")
            elif m == 0:
                key = (0, (), "backward")
            else:
                fork = fork_of(m)
                if fork:
                    for c in event_children(e):
                        if c.name in ACCUMULATE:
                            seconds[(fork, group(fork, "backward", ("residual_add_grad",)), "backward")] += \
                                c.cpu_time_total * 1e-6
                            t -= c.cpu_time_total * 1e-6
                node = e.name.removeprefix(EVALUATE)
                grp = group(m, "backward", BACKWARD_MAP.get(node, ()))
                # a node that maps to no op of its layer is the backward's "other"
                key = (m, grp, "backward") if grp else (0, (), "backward")
            seconds[key] += t
        # the autograd engine's own time between its nodes
        seconds[(0, (), "backward")] += max(rng.cpu_time_total * 1e-6 - inside, 0.0)
    return {(m, "+".join(ops) if ops else OTHER, phase): s for (m, ops, phase), s in seconds.items()}


def _mark(event, m: int, seq_layer: dict[int, int]) -> None:
    """Attribute the sequence numbers of event's descendants (the forward ops that create
    autograd nodes, nested ones too: aten::linear's aten::addmm) to layer m."""
    for e in event_children(event):
        if e.sequence_nr >= 0:
            seq_layer[e.sequence_nr] = m
        _mark(e, m, seq_layer)


def ordered(arch: Architecture, keys) -> list[tuple[int, str, str]]:
    """(layer, row name, phase) keys in the order of costmodel.machine.backends.torch's rows; a
    key that is not one of its rows (an unexpected "other") after the rest."""
    rank = {(g.layer, "+".join(g.ops) if g.ops else OTHER, g.phase): i
            for i, g in enumerate(torch_groups(op_list(arch)))}
    return sorted(keys, key=lambda k: (rank.get(k, len(rank)), str(k)))


def layer_type(arch: Architecture, m: int) -> str:
    """The layer type of layer m of the flat list (0: "step", L+1: "loss")."""
    if m == 0:
        return "step"
    if m == arch.L + 1:
        return "loss"
    return arch.sizes()[m - 1].kind
