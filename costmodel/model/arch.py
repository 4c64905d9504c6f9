"""The architecture file (arch.yaml): schema, validation and simpleNN's layer sizes.

Everything here is data: the YAML is read with a safe loader, validated with pydantic, and
every rule of ARCH_FORMAT.md that fails is reported as one line naming the place, e.g.
``layers[2] (conv): kernel 7 does not fit the padded input 5x5``.

The file's list of layers may nest (a residual block holds conv layers); ``Architecture.sizes()``
flattens it into the layers m = 1..L that the op list and the timers number, each with the
earlier layers it reads (docs/arch-format.md, "The flat list of layers").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, ValidationError
from pydantic_core import PydanticCustomError

from costmodel.errors import ArchError

PositiveInt = Annotated[int, Field(strict=True, gt=0, le=2**63 - 1)]  # sizes are counted in int64
NonNegativeInt = Annotated[int, Field(strict=True, ge=0, le=2**63 - 1)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]

DTYPES = ("float32", "float64")
LOSSES = ("mse", "softmax_ce")
DTYPE_BYTES = {"float32": 4, "float64": 8}
ACTIVATIONS = ("relu", "tanh", "sigmoid", "none")
#: the layer types of the file, as they tag a place in a message ("layers[2] (conv): ...")
LAYER_TYPES = ("conv", "full", "global_avg_pool", "residual")

Activation = Literal["relu", "tanh", "sigmoid", "none"]


def _padding(value: object) -> int | str:
    """A conv layer's padding: a non-negative integer, "same" or "valid" (ARCH_FORMAT.md)."""
    if isinstance(value, str):
        if value in ("same", "valid"):
            return value
        raise PydanticCustomError("literal_error",
                                  "Input should be a non-negative integer, 'same' or 'valid'")
    if isinstance(value, bool) or not isinstance(value, int):
        raise PydanticCustomError("int_type", "Input should be an integer, 'same' or 'valid'")
    if value < 0:
        raise PydanticCustomError("greater_than_equal", "Input should be greater than or equal to 0")
    return value


Padding = Annotated[Union[int, str], PlainValidator(_padding)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class InputShape(_Strict):
    height: PositiveInt
    width: PositiveInt
    channels: PositiveInt


class Optimizer(_Strict):
    model_config = ConfigDict(allow_inf_nan=False)  # lr .inf trains on NaN weights
    lr: PositiveFloat = 0.01
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9  # at 1 or more the velocity never decays
    # simpleNN: Grad = dW/I + W/C. Default C = 600 ~ simpleNN's C (0.01) times l (60000):
    # with C = 0.01 in this per-batch form W/C would swamp the data term.
    C: PositiveFloat = 600.0


class ConvLayer(_Strict):
    type: Literal["conv"]
    filters: PositiveInt
    kernel: PositiveInt
    padding: Padding = 0
    stride: PositiveInt = 1
    pool: PositiveInt = 1
    activation: Activation = "relu"
    # extended vocabulary (ARCH_FORMAT.md, "Extended vocabulary")
    groups: PositiveInt = 1
    pool_stride: PositiveInt | None = None  # None: = pool
    pool_type: Literal["max", "avg"] = "max"
    pool_ceil: bool = False
    batch_norm: bool = False
    dropout: float = 0.0  # checked in [0, 1) by _propagate, with the place named


class FullLayer(_Strict):
    type: Literal["full"]
    units: PositiveInt
    # None means the default: relu for hidden layers; the last full layer is always linear.
    activation: Activation | None = None
    batch_norm: bool = False
    dropout: float = 0.0


class GlobalAvgPoolLayer(_Strict):
    type: Literal["global_avg_pool"]


class ResidualBlock(_Strict):
    """activation(F(X) + shortcut(X)), F the conv layers in order (no pooling inside)."""

    type: Literal["residual"]
    layers: list[ConvLayer] = Field(min_length=1)
    shortcut: Literal["identity", "projection", "auto"] = "auto"
    activation: Activation = "relu"


Layer = Annotated[Union[ConvLayer, FullLayer, GlobalAvgPoolLayer, ResidualBlock],
                  Field(discriminator="type")]


def _printable(text: str) -> str:
    """A name is printed in every title, table, plot and file: a control or format character
    (ESC, a newline, a bidirectional override) would reach the user's terminal as a command."""
    bad = next((c for c in text if not c.isprintable()), None)
    if bad is not None:
        raise ValueError(f"character U+{ord(bad):04X} at position {text.index(bad)} is not printable "
                         "(the name is printed in every title and table)")
    return text


class Architecture(_Strict):
    """One CNN and the mini-batch it is trained with (ARCH_FORMAT.md)."""

    name: Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_printable)]
    input: InputShape
    batch: PositiveInt = 128
    dtype: Literal["float32", "float64"] = "float32"
    loss: Literal["mse", "softmax_ce"] = "mse"
    optimizer: Optimizer = Optimizer()
    layers: list[Layer] = Field(min_length=1)

    # -- derived -------------------------------------------------------------------------
    @property
    def _flat(self) -> bool:
        """Whether the file's layers are the flat list itself (no residual block)."""
        return not any(isinstance(layer, ResidualBlock) for layer in self.layers)

    @property
    def L(self) -> int:
        """Number of layers m = 1..L of the flat list (simpleNN's L); the loss sits after
        layer L. Without residual blocks, the number of layers in the file."""
        return len(self.layers) if self._flat else len(self.sizes())

    @property
    def n_conv(self) -> int:
        """Number of conv layers of the flat list (projection shortcuts included)."""
        return sum(sz.kind == "conv" for sz in self.sizes())

    @property
    def itemsize(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def n_classes(self) -> int:
        return self.layers[-1].units  # validated: the last layer is full

    def with_batch(self, batch: int | None) -> "Architecture":
        """The same architecture with the mini-batch size I replaced (a CLI --batch)."""
        if batch is None or batch == self.batch:
            return self
        if batch < 1:
            raise ArchError(f"batch: {batch} is not a positive integer")
        arch = self.model_copy(update={"batch": batch})
        try:
            _check_exact(arch)
        except ArchError as exc:
            raise ArchError(f"batch {_short(batch)}: {exc}") from None
        return arch

    def with_dtype(self, dtype: str | None) -> "Architecture":
        if dtype is None or dtype == self.dtype:
            return self
        if dtype not in DTYPES:
            raise ArchError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
        return self.model_copy(update={"dtype": dtype})

    def sizes(self) -> list["LayerSizes"]:
        """simpleNN's sizes of every layer m = 1..L of the flat list, in order (validated at
        load time)."""
        return _propagate(self)

    def activation_of(self, m: int) -> str:
        """The activation of layer m (1-based) of the flat list: the last full layer is always
        linear; a projection shortcut and global average pooling have none."""
        if not self._flat:
            return self.sizes()[m - 1].activation
        layer = self.layers[m - 1]
        if m == self.L:
            return "none"
        if isinstance(layer, FullLayer):
            return layer.activation or "relu"
        if isinstance(layer, GlobalAvgPoolLayer):
            return "none"
        return layer.activation

    def extended_vocabulary(self) -> str | None:
        """Where the network first uses what the course's layers cannot describe (e.g.
        "layers[0] (conv): activation tanh"), None for a network of the course's vocabulary
        (conv with symmetric padding and floor max pooling of stride = width, relu or none;
        full layers). A ``padding: same`` that comes out symmetric, ``valid`` and a
        ``pool_ceil`` that changes no size are the course's vocabulary."""
        for sz in self.sizes():
            if sz.kind not in ("conv", "full"):
                return f"{sz.place}: {sz.kind}"
            found = [
                (sz.p is None, f"padding same ({sz.p_top}/{sz.p_bottom} rows, {sz.p_left}/{sz.p_right} columns)"),
                (sz.g > 1, f"groups {sz.g}"),
                (sz.pooled and sz.pool_stride != sz.pool, f"pool_stride {sz.pool_stride}"),
                (sz.pooled and sz.pool_type != "max", f"pool_type {sz.pool_type}"),
                (sz.pooled and (sz.a_next, sz.b_next) != (sz.a_conv // sz.pool, sz.b_conv // sz.pool),
                 "pool_ceil"),
                (sz.activation not in ("relu", "none"), f"activation {sz.activation}"),
                (sz.batch_norm, "batch_norm"),
                (sz.dropout > 0, f"dropout {sz.dropout}"),
            ]
            for present, what in found:
                if present:
                    return f"{sz.place}: {what}"
        return None

    def parameter_count(self) -> int:
        """Trainable parameters: every W^m and b^m, and the scale gamma and shift beta of every
        batch normalization (its running averages are not trained and not counted), as torch's
        ``sum(p.numel() for p in module.parameters())`` of the same network."""
        return sum(sz.n_params for sz in self.sizes())


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


def _propagate(arch: Architecture) -> list[LayerSizes]:
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


# -- loading ---------------------------------------------------------------------------------

#
# Bounds on what is read (costmodel.files, costmodel.model.yamlload) and on what comes out: a
# file of more than MAX_ARCH_BYTES or MAX_LAYERS layers is refused, every integer must fit in
# int64, and so must the byte count of every array one step holds (_check_exact). Messages
# name the place, put unknown keys first with a "did you mean", say what a field allows, and
# cut a user's value short (reprlib).

import reprlib  # noqa: E402  (kept with the code that uses them)
import types  # noqa: E402
from typing import get_args, get_origin  # noqa: E402

#: an arch file's size (a 10,000-layer network in block style is about 400 KiB)
MAX_ARCH_BYTES = 4 << 20
#: layers of one network (reading, costing and printing grow with it; 10,000 take seconds)
MAX_LAYERS = 10_000
#: YAML events of an arch file (10,000 layers of 12 fields each have about 260,000)
MAX_ARCH_EVENTS = 300_000
INT64_MAX = 2 ** 63 - 1
#: names other frameworks use for the fields of a layer (PyTorch, Keras), for "did you mean"
FOREIGN_NAMES = {
    "out_channels": "filters", "num_filters": "filters", "channels": "filters", "kernel_size": "kernel",
    "strides": "stride", "pool_size": "pool", "pooling": "pool", "out_features": "units",
    "num_units": "units", "neurons": "units", "size": "units", "act": "activation", "kind": "type",
    "layer": "type", "learning_rate": "lr", "weight_decay": "C", "batch_size": "batch",
}


class _ShortRepr(reprlib.Repr):
    """repr() of a user's value for a one-line message: strings, lists and mappings cut short,
    an integer of thousands of digits described (its repr would fail beyond 4300 digits)."""

    def __init__(self):
        super().__init__()
        self.maxstring, self.maxother, self.maxlong = 40, 40, 40
        self.maxlist = self.maxtuple = self.maxset = self.maxdict = 4
        self.maxlevel = 2

    def repr_int(self, x, level):
        if x.bit_length() > 128:
            return f"<an integer of about {int(x.bit_length() * 0.30103) + 1} digits>"
        return repr(x)

    def repr_bool(self, x, level):
        return repr(x)


_repr = _ShortRepr().repr


def _short(value, n: int = 80) -> str:
    """A user's value for a message: reprlib's short repr, and at most `n` characters."""
    text = _repr(value)
    return text if len(text) <= n else text[:n - 3] + "..."


def _unwrap(t):
    """The type a field holds, without Annotated's metadata."""
    while get_origin(t) is Annotated:
        t = get_args(t)[0]
    return t


def _members(t) -> list:
    t = _unwrap(t)
    if get_origin(t) in (Union, types.UnionType):
        return [m for arg in get_args(t) for m in _members(arg)]
    return [t]


def _tag(member) -> str | None:
    """The value of a layer class's `type` Literal (its discriminator), if it has one."""
    field = getattr(member, "model_fields", {}).get("type")
    if field is not None and get_origin(field.annotation) is Literal and len(get_args(field.annotation)) == 1:
        return get_args(field.annotation)[0]
    return None


def _bounds_text(metadata, integer: bool) -> str:
    """'a positive integer', 'a number >= 0 and < 1', ... from annotated_types bounds."""
    bounds = {}
    for item in metadata:
        for name in ("gt", "ge", "lt", "le"):
            value = getattr(item, name, None)
            if value is not None:
                bounds[name] = value
        for inner in getattr(item, "metadata", ()):  # a FieldInfo inside Annotated
            for name in ("gt", "ge", "lt", "le"):
                value = getattr(inner, name, None)
                if value is not None:
                    bounds[name] = value
    if bounds.get("le") == INT64_MAX:  # every integer's bound, said when it is broken
        del bounds["le"]
    noun = "integer" if integer else "number"
    if bounds == {"gt": 0}:
        return f"a positive {noun}"
    if bounds == {"ge": 0}:
        return f"a non-negative {noun}"
    signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    limits = [f"{signs[k]} {v}" for k, v in bounds.items()]
    article = "an" if integer else "a"
    return f"{article} {noun} {' and '.join(limits)}".rstrip()


def _join(words: list[str]) -> str:
    return ", ".join(words[:-1]) + (" or " if len(words) > 1 else "") + (words[-1] if words else "")


def _alternatives(t, metadata=()) -> list[str]:
    """What a field of type `t` accepts, as alternatives in words."""
    if get_origin(t) is Annotated:
        metadata = [*metadata, *get_args(t)[1:]]
    t = _unwrap(t)
    if get_origin(t) in (Union, types.UnionType):
        return [w for arg in get_args(t) if arg is not type(None) for w in _alternatives(arg)]
    if get_origin(t) is Literal:
        return [repr(v) for v in get_args(t)]
    if t is bool:
        return ["true or false"]
    if t in (int, float):
        return [_bounds_text(metadata, t is int)]
    if t is str:
        return ["text"]
    if get_origin(t) in (list, tuple):
        return ["a list"]
    if get_origin(t) is dict or isinstance(t, type) and issubclass(t, BaseModel):
        return ["a mapping"]
    return [getattr(t, "__name__", str(t))]


def _allowed(t, metadata=()) -> str:
    """What a field of type `t` accepts, in words: "a positive integer", "'relu' or 'none'",
    "a non-negative integer, 'same' or 'valid'"."""
    return _join(_alternatives(t, metadata))


@dataclass
class _Place:
    text: str  # 'layers[2] (conv): kernel: '
    field: object = None  # the field's type, when the schema knows it
    metadata: tuple = ()
    owner: object = None  # the model class the last key belongs to


def _resolve(loc: tuple, model=None) -> _Place:
    """Walk a pydantic error's loc through the schema of `model`: the place as text, the type of
    the field there and the model it belongs to. A discriminated union's tag becomes ' (conv)'
    after the index; a union member's label ('constrained-int', "literal['same']") is dropped.
    Without a model (or beyond what it describes) the loc is read as keys and indexes."""
    parts: list[str] = []
    t, metadata, owner = model, (), None
    i = 0
    while i < len(loc):
        item = loc[i]
        u = _unwrap(t) if t is not None else None
        members = [m for m in _members(u) if m is not type(None)] if u is not None else []
        if len(members) == 1 and get_origin(u) in (Union, types.UnionType):  # X | None: the place is X's
            u = _unwrap(members[0])
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]" if parts else f"[{item}]"]
            args = get_args(u) if u is not None and get_origin(u) in (list, tuple) else ()
            t = args[item] if get_origin(u) is tuple and len(args) > item and args[-1] is not Ellipsis \
                else (args[0] if args else None)
            metadata = ()
            if model is None and i + 1 < len(loc) and loc[i + 1] in LAYER_TYPES:
                parts[-1] += f" ({loc[i + 1]})"
                i += 1
        elif len(members) > 1:  # a union: a layer's tag, or the label of a member (dropped)
            tagged = [m for m in members if _tag(m) == item]
            if tagged:
                if parts:
                    parts[-1] += f" ({item})"
                t, metadata = tagged[0], ()
        elif isinstance(u, type) and issubclass(u, BaseModel):
            parts.append(str(item))
            owner = u
            field = u.model_fields.get(item)
            t, metadata = (field.annotation, tuple(field.metadata)) if field is not None else (None, ())
        elif get_origin(u) is dict:
            parts.append(str(item))
            t, metadata = get_args(u)[1], ()
        elif u is None:
            parts.append(str(item))
        # else: a label below a scalar field (a validator's): the place stays the field's
        i += 1
    return _Place("".join(f"{p}: " for p in parts), t, metadata, owner)


def _custom(place: _Place) -> bool:
    """Whether the field validates with its own function (a PlainValidator, ...): its error's
    words then say what is allowed better than its type does."""
    meta = [*place.metadata, *(get_args(place.field)[1:] if get_origin(place.field) is Annotated else ())]
    return any(type(m).__name__.endswith("Validator") for m in meta)


def _loc_to_place(loc: tuple, model=None) -> str:
    """('layers', 2, 'conv', 'kernel') -> 'layers[2] (conv): kernel: '; () -> ''."""
    return _resolve(tuple(loc), model).text


def _suggest(key: str, known: list[str]) -> str:
    """' (did you mean 'kernel'?)' for a misspelt or foreign key, else ''."""
    import difflib

    if not isinstance(key, str):
        return ""
    guess = FOREIGN_NAMES.get(key) if FOREIGN_NAMES.get(key) in known else None
    if guess is None:
        close = difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.6)
        guess = close[0] if close else None
    return f" (did you mean {guess!r}?)" if guess else ""


def _message(err: dict, model=None, group: list[dict] = ()) -> str:
    """One line for one pydantic error (`group`: the other errors at the same place, e.g. each
    member of a union), naming the place and saying what is allowed there."""
    loc = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    inp = err.get("input")
    place = _resolve(loc, model)
    where = place.text
    allowed = _allowed(place.field, place.metadata) if place.field is not None and not _custom(place) else None
    expected = f"expected {allowed}" if allowed else err.get("msg", "").replace("Input should be ", "expected ")
    if kind == "extra_forbidden":
        parent = _resolve(loc[:-1], model)
        holder = _unwrap(parent.field) if parent.field is not None else None
        known = list(holder.model_fields) if isinstance(holder, type) and issubclass(holder, BaseModel) else []
        return f"{parent.text}unknown key {_short(loc[-1])}{_suggest(loc[-1], known)}"
    if kind == "missing":
        return f"{_resolve(loc[:-1], model).text}missing required key {_short(loc[-1])}"
    if kind == "union_tag_not_found":
        tags = [t for t in map(_tag, _members(place.field)) if t] if place.field is not None else []
        return f"{where}missing required key 'type' ({' or '.join(tags) or 'conv or full'})"
    if kind == "union_tag_invalid":
        got = inp.get("type") if isinstance(inp, dict) else inp
        tags = [repr(t) for t in map(_tag, _members(place.field)) if t] if place.field is not None else []
        tags = tags or ["'conv'", "'full'"]
        return (f"{where}layer type must be {', '.join(tags[:-1])}{' or ' if len(tags) > 1 else ''}{tags[-1]} "
                f"(got {_short(got)})")
    if len({e.get("type") for e in group} | {kind}) > 1:  # a union: no member accepts the value
        return f"{where}{_short(inp)} is not allowed ({expected})"
    if kind == "literal_error":
        return f"{where}{_short(inp)} is not allowed ({expected})"
    bound = (err.get("ctx") or {}).get("gt" if kind == "greater_than" else "ge", 0)
    if kind in ("greater_than", "greater_than_equal") and bound == 0:
        what = "integer" if isinstance(inp, int) else "number"
        sign = "positive" if kind == "greater_than" else "non-negative"
        return f"{where}{_short(inp)} is not a {sign} {what}"
    if kind == "less_than_equal" and err.get("ctx", {}).get("le") == INT64_MAX:
        return f"{where}{_short(inp)} is larger than int64 (at most {INT64_MAX})"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{where}{_short(inp)} is out of range ({expected})"
    if kind == "finite_number":
        return f"{where}{_short(inp)} is not a finite number"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"{where}expected a mapping, got {type(inp).__name__} {_short(inp)}"
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "int_from_float":
        return f"{where}{_short(inp)} has the wrong type ({expected})"
    if kind == "too_short":
        return f"{where}must not be empty"
    if kind == "value_error" and err.get("ctx", {}).get("error") is not None:  # a validator's own words
        return f"{where}{err['ctx']['error']}"
    return f"{where}{err.get('msg', kind)}"


def first_error(exc: ValidationError, model=None) -> str:
    """The one line for a ValidationError: unknown keys first (all of one place together, each
    with a "did you mean"), then missing keys (all of one place together), then the first
    error, with the other errors at its place (a union's members) taken together."""
    errors = exc.errors(include_url=False)

    def parent(e):
        return tuple(e["loc"][:-1])

    wrong_type = [e for e in errors if e["loc"] and e["loc"][-1] == "type" and e["type"] == "literal_error"]
    if wrong_type:  # a layer of the wrong type: its other keys are wrong because of it
        return _message(wrong_type[0], model)

    for kind, word in (("extra_forbidden", "unknown"), ("missing", "missing required")):
        mine = [e for e in errors if e["type"] == kind]
        if mine:
            same = [e for e in mine if parent(e) == parent(mine[0])]
            if len(same) == 1:
                return _message(same[0], model)
            keys = [_message(e, model).rsplit(f"{word} key ", 1)[-1] for e in same[:6]]
            more = f" and {len(same) - 6} more" if len(same) > 6 else ""
            return f"{_resolve(parent(same[0]), model).text}{word} keys {', '.join(keys)}{more}"
    first = errors[0]
    group = [e for e in errors if _resolve(tuple(e["loc"]), model).text == _resolve(tuple(first["loc"]), model).text]
    return _message(first, model, group)


def _check_exact(arch: "Architecture", sizes: list | None = None) -> None:
    """The bytes of every array of one step that the sizes define must fit in int64 (at 8
    bytes per element, the widest dtype and index), and so must the FLOPs of the step's matrix
    products, or the counts computed from them would wrap (each integer field is checked by
    its type: PositiveInt and NonNegativeInt are at most INT64_MAX).
    Raises ArchError naming the place. (The exact check of every op's FLOPs and bytes belongs
    to the code that computes them.)"""
    I = arch.batch  # each integer field is at most INT64_MAX (PositiveInt, NonNegativeInt)
    first = arch.input
    limit = INT64_MAX // 8  # elements whose bytes fit
    n = I * first.height * first.width * first.channels
    if n > limit:
        raise ArchError(f"input: the mini-batch of inputs Z^1 (I a b d) has {n:.3g} elements: its bytes do "
                        f"not fit in int64 (at most {limit:.3g} elements)")
    flops = 0
    for sz in (sizes if sizes is not None else arch.sizes()):
        if sz.kind == "conv":
            K, N = sz.h * sz.h * sz.d, I * sz.a_conv * sz.b_conv
            arrays = (("phi(pad(Z)) of the batch (h h d x a_conv b_conv I)", K * N),
                      ("pad(Z) of the batch (I d a_pad b_pad)", I * sz.d * sz.a_pad * sz.b_pad),
                      ("S of the batch (d^{m+1} x a_conv b_conv I)", sz.d_next * N),
                      ("W (d^{m+1} x h h d / g)", sz.d_next * K // max(sz.g, 1)))
            mkn = sz.d_next * (K // max(sz.g, 1)) * N
        elif sz.kind == "full":
            arrays = (("the layer's input of the batch (n_in x I)", sz.n_in * I),
                      ("S of the batch (n_out x I)", sz.n_out * I),
                      ("W (n_out x n_in)", sz.n_out * sz.n_in))
            mkn = sz.n_out * sz.n_in * I
        else:  # global average pooling, a residual addition: their input
            arrays = (("the layer's input of the batch (I d a b)", I * sz.d * sz.a * sz.b),)
            mkn = 0
        where = sz.place or f"layer {sz.m}"
        for what, n in arrays:
            if n > limit:
                raise ArchError(f"{where}: {what} has {n:.3g} elements: its bytes do not fit in int64 "
                                f"(at most {limit:.3g} elements)")
        flops += 6 * mkn  # W phi, and backward dW = dS phi^T and W^T dS: 2 M K N each
        if flops > INT64_MAX:
            raise ArchError(f"{where}: the step's matrix products up to this layer come to {flops:.3g} "
                            f"FLOPs, beyond int64 (at most {INT64_MAX:.3g})")


def parse_arch(data: object, source: str = "<arch>") -> Architecture:
    """Validate already-loaded YAML data as an Architecture; raise ArchError naming the place."""
    if data is None:
        raise ArchError(f"{source}: the file is empty")
    if not isinstance(data, dict):
        raise ArchError(f"{source}: the file must be a YAML mapping, not {type(data).__name__}")
    layers = data.get("layers")
    if isinstance(layers, list):  # before validation, which grows with them: a block's layers count too
        count = len(layers) + sum(len(item["layers"]) for item in layers
                                  if isinstance(item, dict) and isinstance(item.get("layers"), list))
        if count > MAX_LAYERS:
            raise ArchError(f"{source}: layers: {count:,} layers, more than the {MAX_LAYERS:,} costmodel takes")
    try:
        arch = Architecture.model_validate(data)
    except ValidationError as exc:
        raise ArchError(f"{source}: {first_error(exc, Architecture)}") from None
    except RecursionError:
        raise ArchError(f"{source}: nested too deeply") from None
    try:
        _check_exact(arch, arch.sizes())
    except ArchError as exc:
        raise ArchError(f"{source}: {exc}") from None
    return arch


def load_arch(path: str | Path) -> Architecture:
    """Read and validate an architecture: an arch.yaml file (a regular file of at most
    MAX_ARCH_BYTES, UTF-8, one YAML document read as data by costmodel.model.yamlload: no tag
    constructs an object; duplicate keys, non-text keys, deep nesting and alias bombs refused),
    a simpleNN ``.config`` (read as data by costmodel.model.simplenn, never evaluated; named by
    its stem) or an ``.onnx`` file (parsed by costmodel.importers.onnxfile, never run; needs the
    onnx extra). Raises ArchError naming the file and the place."""
    from costmodel.files import read_regular
    from costmodel.model import yamlload

    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        from costmodel.importers.onnxfile import read_onnx

        return parse_arch(read_onnx(path), str(path))
    raw = read_regular(path, limit=MAX_ARCH_BYTES, what="architecture file", error=ArchError)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArchError(f"{path}: not UTF-8 text (byte {exc.start} is {raw[exc.start]:#04x})") from None
    if suffix == ".config":
        from costmodel.model.simplenn import parse_config

        return parse_arch(parse_config(text, str(path), Path(path).stem), str(path))
    try:
        data = yamlload.load(text, max_events=MAX_ARCH_EVENTS)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}: " if mark else ""
        problem = _cut(exc.problem or "")
        if "constructor for the tag" in problem:
            raise ArchError(f"{path}: {where}YAML tag refused: {problem} "
                            "(the file is read as data; no tag may construct an object)") from None
        raise ArchError(f"{path}: {where}{problem}") from None
    except yamlload.YAMLLimitError as exc:  # valid YAML, but not what an arch file may be
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ArchError(f"{path}: {where}{_cut(exc.problem)}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        during = (f" ({_cut(context, 40)} from line {cmark.line + 1}, column {cmark.column + 1})"
                  if context and cmark and (not mark or cmark.line != mark.line) else "")
        raise ArchError(f"{path}: not valid YAML{where}: {_cut(exc.problem or '')}{during}") from None
    except yaml.YAMLError as exc:  # ReaderError: a character YAML does not allow
        raise ArchError(f"{path}: not valid YAML: {_cut(str(exc).splitlines()[0])}") from None
    except RecursionError:  # the loader bounds nesting; this is a last guard
        raise ArchError(f"{path}: not valid YAML: nested too deeply") from None
    return parse_arch(data, str(path))


def _cut(text: str, n: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 3] + "..."
