"""The graph both importers produce, and its one mapping onto the architecture file's layers.

A front-end (torch.fx, torch.export or ONNX) turns every op it meets into a ``Node`` of one of
the kinds below, with its attributes in PyTorch's conventions and the shape of its output
without the batch dimension, or refuses it in one line naming it. ``to_arch_data``
(costmodel.importers.fold) then walks the graph from the network's input to its output and
folds the nodes into the file's layers (ARCH_FORMAT.md), in the format's order of a layer's ops:

- conv layer: [pad,] conv, [batch_norm,] [act,] [max_pool | avg_pool,] [dropout]
- full layer: [reshape (flatten),] linear, [batch_norm,] [act,] [dropout]
- global_avg_pool (the mean over each channel's positions)
- residual block: a value read by two branches that meet in one ``add``: F (conv layers, no
  pooling) and the shortcut (nothing: identity; or one 1x1 conv [+ batch_norm]: projection),
  then [act]
- softmax or log_softmax after the output layer: the loss ``softmax_ce``

Anything else is refused in one line naming the node (``features.3 (MaxPool2d): ...``): nothing
is dropped or approximated. A padding folds into the conv after it when the result is the same
on every border or TensorFlow's SAME. Nothing here imports torch or onnx.

Node kinds and their attributes (``attrs``):

| op | attributes |
| --- | --- |
| conv | in_channels, filters, kernel (kh, kw), stride (sh, sw), pads (top, left, bottom, right), dilation (dh, dw), groups, bias (bool), padding_mode |
| linear | in_features, out_features, bias (bool) |
| batch_norm | features, affine, running (tracks running averages), eps, momentum (PyTorch's: the weight of the new batch) |
| act | fn: relu, tanh or sigmoid |
| max_pool, avg_pool | kernel, stride, pads, dilation (max), ceil (bool), count_include_pad, divisor_override (avg) |
| global_avg_pool, reshape, add, identity | (none) |
| dropout | rate |
| pad | pads (top, left, bottom, right), mode, value |
| softmax | log (bool), dim (the axis, counted with the batch: 1 or -1 is the class axis) |
"""

from __future__ import annotations

from dataclasses import dataclass, field

from costmodel.errors import ArchError

OPS = ("conv", "linear", "batch_norm", "act", "max_pool", "avg_pool", "global_avg_pool", "dropout", "reshape",
       "pad", "add", "softmax", "identity")
#: batch normalization's constants in the format (docs/arch-format.md: PyTorch's defaults)
BN_EPS, BN_MOMENTUM = 1e-5, 0.1
#: the order of a layer's ops in the format; a node may only follow a lower stage
CONV_STAGES = {"conv": 0, "batch_norm": 1, "act": 2, "pool": 3, "dropout": 4}
LAYER_ORDER = "conv, batch norm, activation, pooling, dropout"


@dataclass(frozen=True)
class Node:
    """One op of the network: ``name`` says where it is (a module path such as ``features.3``,
    an ONNX node's name, a call with its file and line), ``type`` what it is in the source
    (Conv2d, torch.relu, Conv); ``op`` is one of OPS; ``inputs`` the values it reads that are
    computed from the network's input (two for ``add``, else one); ``shape`` its output's shape
    without the batch dimension."""

    name: str
    type: str
    op: str
    inputs: tuple[str, ...]
    output: str
    shape: tuple[int, ...]
    attrs: dict = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.name} ({self.type})"


@dataclass
class Graph:
    """The network's ops in the order they run, from its one input (``input``, shape
    ``input_shape`` without the batch: (C, H, W) or (n,)) to its one output; ``dtype`` float32 or
    float64."""

    input: str
    input_shape: tuple[int, ...]
    output: str
    nodes: list[Node]
    dtype: str


@dataclass
class Block:
    """A residual block found by the walk: F's nodes, the shortcut's nodes (empty: identity),
    the addition and the activation after it (or None)."""

    f: list[Node]
    shortcut: list[Node]
    add: Node
    act: Node | None
    nodes: list[Node]  # every node of the block (identities too)


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding of one dimension (ONNX's SAME_UPPER): the output has
    ceil(size/stride) elements; the total max((out - 1) stride + kernel - size, 0) is split
    floor before, ceil after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) if shape else "a scalar"


# -- the walk: the path from the input to the output, residual blocks found at forks ----------

def walk(graph: Graph) -> list:
    readers: dict[str, list[Node]] = {}
    producer: dict[str, Node] = {}
    for node in graph.nodes:
        producer[node.output] = node
        for value in node.inputs:
            readers.setdefault(value, []).append(node)

    def where(value: str) -> str:
        return producer[value].where if value in producer else "the network's input"

    items: list = []
    seen: set[int] = set()
    value = graph.input
    while value != graph.output:
        after = readers.get(value, [])
        if not after:
            raise ArchError(f"{where(value)}: its output is not used, and it is not the network's output")
        if len(after) == 1 and after[0].op != "add":
            node = after[0]
            items.append(node)
            seen.add(id(node))
            value = node.output
            continue
        if len(after) > 2:
            raise ArchError(f"{where(value)}: its output is read by {len(after)} ops; only a residual block's input "
                            "is read twice (by F and by the shortcut)")
        if len(after) == 1:
            raise ArchError(f"{after[0].where}: an addition of {where(value)} and a value that is not computed "
                            "from it; the format adds a block's input to the output of its conv layers")
        block = _block(value, after, readers, graph, where)
        items.append(block)
        seen.update(id(n) for n in block.nodes)
        value = (block.act or block.add).output
    unused = [n for n in graph.nodes if id(n) not in seen]
    if unused:
        raise ArchError(f"{unused[0].where}: not on the path from the network's input to its output (its result is "
                        "not used); the format describes one chain of layers")
    return items


def _block(x: str, after: list[Node], readers: dict[str, list[Node]], graph: Graph, where) -> Block:
    """The residual block whose input x is read by the two nodes `after`."""
    branches: list[tuple[list[Node], Node]] = []
    for first in after:
        chain: list[Node] = []
        node = first
        while node.op != "add":
            chain.append(node)
            nxt = readers.get(node.output, [])
            if node.output == graph.output or not nxt:
                raise ArchError(f"{where(x)}: its output is read by {after[0].where} and {after[1].where}, which do "
                                "not meet in an addition (a residual block's two branches end in one addition)")
            if len(nxt) > 1:
                raise ArchError(f"{node.where}: its output is read by {len(nxt)} ops inside a residual block's "
                                "branch; the format's blocks hold a chain of conv layers")
            node = nxt[0]
        branches.append((chain, node))
    (c0, add0), (c1, add1) = branches
    if add0 is not add1:
        raise ArchError(f"{where(x)}: its output is read by two branches that end in two additions, {add0.where} and "
                        f"{add1.where}; a residual block's branches meet in one")
    add = add0
    ends = {(c[-1].output if c else x): [n for n in c if n.op != "identity"] for c in (c0, c1)}
    if len(ends) != 2 or set(ends) != set(add.inputs):
        raise ArchError(f"{add.where}: does not add the two branches that read {where(x)}")
    first, second = ends[add.inputs[0]], ends[add.inputs[1]]
    if not first and not second:
        raise ArchError(f"{add.where}: adds {where(x)} to itself; a residual block adds its input to the output of "
                        "its conv layers")
    if not second:
        f, shortcut = first, second
    elif not first:
        f, shortcut = second, first
    elif _projection_like(second) or not _projection_like(first):
        f, shortcut = first, second  # F is the first operand when both could be the projection
    else:
        f, shortcut = second, first
    nxt = readers.get(add.output, [])
    act = nxt[0] if add.output != graph.output and len(nxt) == 1 and nxt[0].op == "act" else None
    return Block(f, shortcut, add, act, [*c0, *c1, add, *([act] if act else [])])


def _projection_like(chain: list[Node]) -> bool:
    """Whether a branch is one 1x1 conv without padding, optionally with batch normalization."""
    ops = [n.op for n in chain if n.op != "identity"]
    conv = next((n for n in chain if n.op == "conv"), None)
    return (ops in (["conv"], ["conv", "batch_norm"]) and conv.attrs["kernel"] == (1, 1)
            and not any(conv.attrs["pads"]))


# -- helpers of the fold (costmodel.importers.fold) ---------------------------------------------


def pooled_size(size: int, window: int, stride: int, ceil: bool) -> int:
    """PyTorch's pooling output size with padding 0 (ceil mode: no window starts past the end)."""
    if not ceil:
        return (size - window) // stride + 1
    out = -(-(size - window) // stride) + 1
    return out - 1 if (out - 1) * stride >= size else out


def check_shape(node: Node, expect: tuple[int, ...]) -> None:
    if tuple(node.shape) != tuple(expect):
        raise ArchError(f"{node.where}: gives {shape_text(node.shape)}, but the format's layer gives {shape_text(expect)}")


_KEYS = ("type", "filters", "units", "kernel", "padding", "stride", "groups", "batch_norm", "activation", "pool",
         "pool_stride", "pool_type", "pool_ceil", "dropout")


def ordered_keys(layer: dict) -> dict:
    """A layer's keys in the order of ARCH_FORMAT.md's table; a hidden layer's default relu left out."""
    out = {key: layer[key] for key in _KEYS if key in layer}
    if out.get("activation") == "relu":
        del out["activation"]
    return out
