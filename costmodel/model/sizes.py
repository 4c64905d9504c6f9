"""simpleNN's layer sizes (docs/arch-format.md, "Sizes" and "The flat list of layers"): the
flat list m = 1..L of an Architecture's layers, each with its sizes and the earlier layers it
reads (Architecture.sizes())."""

from __future__ import annotations

from dataclasses import dataclass, replace

from costmodel.errors import ArchError
from costmodel.model.schema import ConvLayer, FullLayer, GlobalAvgPoolLayer, ResidualBlock

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from costmodel.model.arch import Architecture


@dataclass(frozen=True)
class LayerSizes:
    """Sizes of layer m of the flat list, in simpleNN's notation.

    kind "conv": input a x b x d, kernel h, stride s, groups g, padding p_top/p_bottom (rows)
    and p_left/p_right (columns), a_pad/b_pad, a_conv/b_conv, output channels d_next, pooling
    window ``pool`` with stride ``pool_stride`` (``pool`` 1: no pooling), ceil mode, type
    max/avg, pooled a_next/b_next. ``p`` is the padding when all four borders have the same
    one (every file without ``padding: same``), else None.
    kind "full": n_in inputs and n_out units (d, a, b describe the input the layer flattens;
    ``flatten`` says whether it is a layout change, i.e. the input comes from a conv layer or a
    residual addition).
    kind "global_avg_pool": input a x b x d, output 1 x 1 x d (d_next = d).
    kind "residual_add": the addition of a residual block, a x b x d in and out.

    Every kind: ``activation`` (relu, tanh, sigmoid, none), ``batch_norm``, ``dropout`` rate,
    ``inputs`` (the m of the layers whose outputs it reads; 0 is the network's input; a
    residual addition reads two: F's last layer, then the shortcut), ``fork`` (its output is a
    residual block's input, read by F's first layer and by the shortcut, so two gradients come
    back to it) and ``place`` (where it is in the file, as messages name it).
    """

    m: int
    kind: str  # "conv" | "full" | "global_avg_pool" | "residual_add"
    a: int
    b: int
    d: int
    d_next: int
    h: int = 0
    p: int | None = 0
    s: int = 1
    pool: int = 1
    a_pad: int = 0
    b_pad: int = 0
    a_conv: int = 0
    b_conv: int = 0
    a_next: int = 0
    b_next: int = 0
    n_in: int = 0
    n_out: int = 0
    # extended vocabulary
    p_top: int = 0
    p_bottom: int = 0
    p_left: int = 0
    p_right: int = 0
    g: int = 1
    pool_stride: int = 1
    pool_ceil: bool = False
    pool_type: str = "max"
    activation: str = "none"
    batch_norm: bool = False
    dropout: float = 0.0
    inputs: tuple[int, ...] = ()
    flatten: bool = False
    fork: bool = False
    place: str = ""

    @property
    def padded(self) -> bool:
        """Whether a conv layer pads its input (on any border)."""
        return self.p_top + self.p_bottom + self.p_left + self.p_right > 0

    @property
    def pooled(self) -> bool:
        return self.kind == "conv" and self.pool > 1

    @property
    def weight_shape(self) -> tuple[int, int] | None:
        """The shape of W^m: (d', h h d/g) for conv, (n_out, n_in) for full, None without
        weights."""
        if self.kind == "conv":
            return (self.d_next, self.h * self.h * self.d // self.g)
        if self.kind == "full":
            return (self.n_out, self.n_in)
        return None

    @property
    def n_params(self) -> int:
        """Trainable parameters of the layer: W^m, b^m and batch norm's gamma and beta."""
        shape = self.weight_shape
        if shape is None:
            return 0
        return shape[0] * shape[1] + shape[0] * (3 if self.batch_norm else 1)


def _ceil_div(x: int, y: int) -> int:
    return -(-x // y)


def _same_padding(size: int, h: int, s: int) -> tuple[int, int]:
    """TensorFlow's SAME padding of one dimension: output ceil(size/s), total padding
    max((out - 1) s + h - size, 0) split floor before / ceil after (the extra row or column at
    the bottom or right)."""
    total = max((_ceil_div(size, s) - 1) * s + h - size, 0)
    return total // 2, total - total // 2


def _pooled(size: int, pool: int, stride: int, ceil: bool) -> int:
    """Outputs of a pooling window `pool` with `stride` along one dimension of `size` elements:
    floor((size - pool)/stride) + 1, or with ceil mode ceil(...) + 1 without a window that
    would start past the end (PyTorch's ceil_mode with padding 0)."""
    if not ceil:
        return (size - pool) // stride + 1
    out = _ceil_div(size - pool, stride) + 1
    return out - 1 if (out - 1) * stride >= size else out


def window_count(size: int, start: int, t: int, n: int) -> int:
    """How many of the n pooling windows (starting at 0, t, 2t, ...) have their offset `start`
    inside `size` elements (ceil mode's last windows hang over the border)."""
    return max(0, min(n, (size - start - 1) // t + 1))


def _conv_sizes(layer: ConvLayer, m: int, a: int, b: int, d: int, inputs: tuple[int, ...],
                where: str) -> LayerSizes:
    h, s, g, pool = layer.kernel, layer.stride, layer.groups, layer.pool
    if d % g and layer.filters % g:
        raise ArchError(f"{where}: groups {g} divides neither {d} input channels nor "
                        f"{layer.filters} filters")
    if d % g:
        raise ArchError(f"{where}: groups {g} does not divide the {d} input channels")
    if layer.filters % g:
        raise ArchError(f"{where}: groups {g} does not divide the {layer.filters} filters")
    if layer.padding == "same":
        (top, bottom), (left, right) = _same_padding(a, h, s), _same_padding(b, h, s)
    else:
        top = bottom = left = right = 0 if layer.padding == "valid" else layer.padding
    a_pad, b_pad = a + top + bottom, b + left + right
    if a_pad < h or b_pad < h:
        raise ArchError(f"{where}: kernel {h} does not fit the padded input {a_pad}x{b_pad}")
    a_conv, b_conv = (a_pad - h) // s + 1, (b_pad - h) // s + 1
    stride = pool if layer.pool_stride is None else layer.pool_stride
    if pool == 1 and layer.pool_ceil:
        raise ArchError(f"{where}: pool_ceil needs a pooling window (pool is 1)")
    if pool == 1 and stride != 1:
        raise ArchError(f"{where}: pool_stride {stride} needs a pooling window (pool is 1)")
    if pool > a_conv or pool > b_conv:
        raise ArchError(
            f"{where}: pooling window {pool} is larger than the convolution output {a_conv}x{b_conv}"
        )
    a_next = _pooled(a_conv, pool, stride, layer.pool_ceil)
    b_next = _pooled(b_conv, pool, stride, layer.pool_ceil)
    _check_dropout(layer.dropout, where)
    symmetric = top if top == bottom == left == right else None
    return LayerSizes(m, "conv", a, b, d, layer.filters, h=h, p=symmetric, s=s, pool=pool,
                      a_pad=a_pad, b_pad=b_pad, a_conv=a_conv, b_conv=b_conv,
                      a_next=a_next, b_next=b_next, p_top=top, p_bottom=bottom, p_left=left,
                      p_right=right, g=g, pool_stride=stride, pool_ceil=layer.pool_ceil,
                      pool_type=layer.pool_type, activation=layer.activation,
                      batch_norm=layer.batch_norm, dropout=layer.dropout, inputs=inputs,
                      place=where)


def _check_dropout(rate: float, where: str) -> None:
    if not 0 <= rate < 1:  # NaN fails too
        raise ArchError(f"{where}: dropout {rate!r} is not in [0, 1)")


def _shape(a: int, b: int, d: int) -> str:
    return f"{a}x{b}x{d}"


def propagate(arch: Architecture) -> list[LayerSizes]:
    """The flat list of layers m = 1..L with their sizes (docs/arch-format.md): a residual
    block becomes its conv layers, then its projection shortcut (if any), then its addition."""
    a, b, d = arch.input.height, arch.input.width, arch.input.channels
    out: list[LayerSizes] = []
    seen_full = False
    last = 0  # the m of the layer whose output is the current tensor (0: the network's input)
    n_layers = len(arch.layers)
    for idx, layer in enumerate(arch.layers):
        m = len(out) + 1
        where = f"layers[{idx}] ({layer.type})"
        if isinstance(layer, FullLayer):
            _check_dropout(layer.dropout, where)
            seen_full = True
            flatten = bool(out) and out[-1].kind in ("conv", "residual_add")
            activation = "none" if idx == n_layers - 1 else layer.activation or "relu"
            out.append(LayerSizes(m, "full", a, b, d, layer.units, n_in=a * b * d,
                                  n_out=layer.units, a_next=1, b_next=1, activation=activation,
                                  batch_norm=layer.batch_norm, dropout=layer.dropout,
                                  inputs=(last,), flatten=flatten, place=where))
            a, b, d = 1, 1, layer.units
        elif seen_full:
            what = {"conv": "a conv layer", "residual": "a residual block",
                    "global_avg_pool": "global_avg_pool"}[layer.type]
            raise ArchError(f"{where}: {what} cannot follow a full layer")
        elif isinstance(layer, ConvLayer):
            out.append(_conv_sizes(layer, m, a, b, d, (last,), where))
        elif isinstance(layer, GlobalAvgPoolLayer):
            if not out or out[-1].kind not in ("conv", "residual_add"):
                raise ArchError(f"{where}: global_avg_pool must follow a conv layer or a residual block")
            out.append(LayerSizes(m, "global_avg_pool", a, b, d, d, a_next=1, b_next=1,
                                  inputs=(last,), place=where))
        else:
            out.extend(_residual_sizes(layer, m, a, b, d, last, where))
        last = out[-1].m
        a, b, d = out[-1].a_next, out[-1].b_next, out[-1].d_next
    if not seen_full or not isinstance(arch.layers[-1], FullLayer):
        raise ArchError(f"layers[{n_layers - 1}]: the network must end with a full layer")
    for sz in out:
        if sz.kind == "residual_add":
            x = block_input(out, sz)
            if x > 0:
                out[x - 1] = replace(out[x - 1], fork=True)
    return out


def block_input(sizes: list[LayerSizes], add: LayerSizes) -> int:
    """The m of the input X of the residual block whose addition is `add` (0: the network's
    input): the shortcut itself (identity) or what the projection reads."""
    f, short = add.inputs
    return short if short < f else sizes[short - 1].inputs[0]


def _residual_sizes(block: ResidualBlock, m: int, a: int, b: int, d: int, x: int,
                    where: str) -> list[LayerSizes]:
    """F's conv layers, the projection shortcut (if any) and the addition, numbered from m;
    x is the m of the block's input (0: the network's input)."""
    out: list[LayerSizes] = []
    fa, fb, fd, last, stride = a, b, d, x, 1
    for j, layer in enumerate(block.layers):
        inner = f"{where}: layers[{j}] (conv)"
        if layer.pool > 1:
            raise ArchError(f"{inner}: no pooling inside a residual block (pool {layer.pool})")
        sz = _conv_sizes(layer, m + j, fa, fb, fd, (last,), inner)
        out.append(sz)
        fa, fb, fd, last, stride = sz.a_next, sz.b_next, sz.d_next, sz.m, stride * sz.s
    keeps = (fa, fb, fd) == (a, b, d)
    shortcut = block.shortcut if block.shortcut != "auto" else "identity" if keeps else "projection"
    if shortcut == "identity" and not keeps:
        raise ArchError(f"{where}: an identity shortcut needs F to keep the shape {_shape(a, b, d)}, "
                        f"but F gives {_shape(fa, fb, fd)}")
    short = x
    if shortcut == "projection":
        projection = ConvLayer(type="conv", filters=fd, kernel=1, stride=stride, activation="none",
                               batch_norm=any(layer.batch_norm for layer in block.layers))
        sz = _conv_sizes(projection, m + len(out), a, b, d, (x,), f"{where}: shortcut")
        if (sz.a_next, sz.b_next) != (fa, fb):
            raise ArchError(f"{where}: the projection shortcut (1x1, stride {stride}) gives "
                            f"{_shape(sz.a_next, sz.b_next, fd)}, but F gives {_shape(fa, fb, fd)}")
        out.append(sz)
        short = sz.m
    out.append(LayerSizes(m + len(out), "residual_add", fa, fb, fd, fd, a_next=fa, b_next=fb,
                          activation=block.activation, inputs=(last, short), place=where))
    return out
