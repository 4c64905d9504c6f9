"""The architecture file (arch.yaml): schema, validation and simpleNN's layer sizes.

Everything here is data: the YAML is read with a safe loader, validated with pydantic, and
every rule of ARCH_FORMAT.md that fails is reported as one line naming the place, e.g.
``layers[2] (conv): kernel 7 does not fit the padded input 5x5``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from costmodel.errors import ArchError

PositiveInt = Annotated[int, Field(strict=True, gt=0)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]

DTYPES = ("float32", "float64")
LOSSES = ("mse", "softmax_ce")
DTYPE_BYTES = {"float32": 4, "float64": 8}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class InputShape(_Strict):
    height: PositiveInt
    width: PositiveInt
    channels: PositiveInt


class Optimizer(_Strict):
    lr: PositiveFloat = 0.01
    momentum: NonNegativeFloat = 0.9
    # simpleNN: Grad = dW/I + W/C. Default C = 600 ~ simpleNN's C (0.01) times l (60000):
    # with C = 0.01 in this per-batch form W/C would swamp the data term.
    C: PositiveFloat = 600.0


class ConvLayer(_Strict):
    type: Literal["conv"]
    filters: PositiveInt
    kernel: PositiveInt
    padding: NonNegativeInt = 0
    stride: PositiveInt = 1
    pool: PositiveInt = 1
    activation: Literal["relu", "none"] = "relu"


class FullLayer(_Strict):
    type: Literal["full"]
    units: PositiveInt
    # None means the default: relu for hidden layers; the last full layer is always linear.
    activation: Literal["relu", "none"] | None = None


Layer = Annotated[Union[ConvLayer, FullLayer], Field(discriminator="type")]


class Architecture(_Strict):
    """One CNN and the mini-batch it is trained with (ARCH_FORMAT.md)."""

    name: str
    input: InputShape
    batch: PositiveInt = 128
    dtype: Literal["float32", "float64"] = "float32"
    loss: Literal["mse", "softmax_ce"] = "mse"
    optimizer: Optimizer = Optimizer()
    layers: list[Layer] = Field(min_length=1)

    # -- derived -------------------------------------------------------------------------
    @property
    def L(self) -> int:
        """Number of layers (simpleNN's L); the loss sits after layer L."""
        return len(self.layers)

    @property
    def n_conv(self) -> int:
        return sum(isinstance(layer, ConvLayer) for layer in self.layers)

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
        return self.model_copy(update={"batch": batch})

    def with_dtype(self, dtype: str | None) -> "Architecture":
        if dtype is None or dtype == self.dtype:
            return self
        if dtype not in DTYPES:
            raise ArchError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
        return self.model_copy(update={"dtype": dtype})

    def sizes(self) -> list["LayerSizes"]:
        """simpleNN's sizes of every layer, in order (validated at load time)."""
        return _propagate(self)

    def activation_of(self, m: int) -> str:
        """The activation of layer m (1-based): the last full layer is always linear."""
        layer = self.layers[m - 1]
        if m == self.L:
            return "none"
        if isinstance(layer, FullLayer):
            return layer.activation or "relu"
        return layer.activation


@dataclass(frozen=True)
class LayerSizes:
    """Sizes of layer m in simpleNN's notation.

    conv: input a x b x d, kernel h, padding p, stride s, pool width, output channels d_next,
    a_pad/b_pad, a_conv/b_conv and pooled a_next/b_next.
    full: n_in inputs and n_out units (d, a, b describe the input the layer flattens).
    """

    m: int
    kind: str  # "conv" | "full"
    a: int
    b: int
    d: int
    d_next: int
    h: int = 0
    p: int = 0
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


def _propagate(arch: Architecture) -> list[LayerSizes]:
    a, b, d = arch.input.height, arch.input.width, arch.input.channels
    out: list[LayerSizes] = []
    seen_full = False
    for idx, layer in enumerate(arch.layers):
        m = idx + 1
        where = f"layers[{idx}] ({layer.type})"
        if isinstance(layer, ConvLayer):
            if seen_full:
                raise ArchError(f"{where}: a conv layer cannot follow a full layer")
            h, p, s, pool = layer.kernel, layer.padding, layer.stride, layer.pool
            a_pad, b_pad = a + 2 * p, b + 2 * p
            if a_pad < h or b_pad < h:
                raise ArchError(f"{where}: kernel {h} does not fit the padded input {a_pad}x{b_pad}")
            a_conv, b_conv = (a_pad - h) // s + 1, (b_pad - h) // s + 1
            if pool > a_conv or pool > b_conv:
                raise ArchError(
                    f"{where}: pooling window {pool} is larger than the convolution output {a_conv}x{b_conv}"
                )
            a_next, b_next = a_conv // pool, b_conv // pool
            out.append(LayerSizes(m, "conv", a, b, d, layer.filters, h, p, s, pool,
                                  a_pad, b_pad, a_conv, b_conv, a_next, b_next))
            a, b, d = a_next, b_next, layer.filters
        else:
            seen_full = True
            n_in = a * b * d
            out.append(LayerSizes(m, "full", a, b, d, layer.units, n_in=n_in, n_out=layer.units,
                                  a_next=1, b_next=1))
            a, b, d = 1, 1, layer.units
    if not seen_full or not isinstance(arch.layers[-1], FullLayer):
        raise ArchError(f"layers[{len(arch.layers) - 1}]: the network must end with a full layer")
    return out


# -- loading ---------------------------------------------------------------------------------

def _loc_to_place(loc: tuple) -> str:
    """('layers', 2, 'conv', 'kernel') -> 'layers[2] (conv): kernel: '; () -> ''."""
    parts: list[str] = []
    i = 0
    while i < len(loc):
        item = loc[i]
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item}]" if parts else f"[{item}]"
            # a discriminated union adds the layer's tag as the next element
            if i + 1 < len(loc) and loc[i + 1] in ("conv", "full"):
                parts[-1] += f" ({loc[i + 1]})"
                i += 1
        else:
            parts.append(str(item))
        i += 1
    return "".join(f"{p}: " for p in parts)


def _message(err: dict) -> str:
    loc = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    inp = err.get("input")
    place = _loc_to_place(loc)
    parent = _loc_to_place(loc[:-1])
    if kind == "extra_forbidden":
        return f"{parent}unknown key {loc[-1]!r}"
    if kind == "missing":
        return f"{parent}missing required key {loc[-1]!r}"
    if kind == "union_tag_not_found":
        return f"{place}missing required key 'type' (conv or full)"
    if kind == "union_tag_invalid":
        got = inp.get("type") if isinstance(inp, dict) else inp
        return f"{place}layer type must be 'conv' or 'full' (got {got!r})"
    if kind == "literal_error":
        return f"{place}{inp!r} is not allowed ({err['msg'].replace('Input should be ', 'expected ')})"
    if kind in ("greater_than", "greater_than_equal"):
        what = "integer" if isinstance(inp, int) else "number"
        sign = "positive" if kind == "greater_than" else "non-negative"
        return f"{place}{inp!r} is not a {sign} {what}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"{place}expected a mapping, got {type(inp).__name__} {inp!r}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{place}{inp!r} has the wrong type ({err['msg'].replace('Input should be ', 'expected ')})"
    if kind == "too_short":
        return f"{place}must not be empty"
    return f"{place}{err['msg']}"


def parse_arch(data: object, source: str = "<arch>") -> Architecture:
    """Validate already-loaded YAML data as an Architecture; raise ArchError naming the place."""
    if data is None:
        raise ArchError(f"{source}: the file is empty")
    if not isinstance(data, dict):
        raise ArchError(f"{source}: the file must be a YAML mapping, not {type(data).__name__}")
    try:
        arch = Architecture.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise ArchError(f"{source}: {_message(first)}") from None
    try:
        arch.sizes()
    except ArchError as exc:
        raise ArchError(f"{source}: {exc}") from None
    return arch


def load_arch(path: str | Path) -> Architecture:
    """Read and validate an arch.yaml file (safe YAML: no tag may construct an object)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArchError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArchError(f"{path}: cannot read: {exc.__class__.__name__}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        raise ArchError(f"{path}: line {mark.line + 1}: YAML tag refused: {exc.problem} "
                        "(the file is read as data; no tag may construct an object)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ArchError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_arch(data, str(path))
