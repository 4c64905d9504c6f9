"""The architecture file (arch.yaml): the Architecture and its loading (the schema of its parts:
costmodel.model.schema; simpleNN's layer sizes: costmodel.model.sizes; the messages of a
refused file: costmodel.model.messages).

Everything here is data: the YAML is read with a safe loader, validated with pydantic, and
every rule of ARCH_FORMAT.md that fails is reported as one line naming the place, e.g.
``layers[2] (conv): kernel 7 does not fit the padded input 5x5``.

The file's list of layers may nest (a residual block holds conv layers); ``Architecture.sizes()``
flattens it into the layers m = 1..L that the op list and the timers number, each with the
earlier layers it reads (docs/arch-format.md, "The flat list of layers").
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, Field, ValidationError


from costmodel.errors import ArchError
from costmodel.units import INT64_MAX
from costmodel.model.schema import (  # noqa: F401  (DTYPES, DTYPE_BYTES re-exported)
    DTYPE_BYTES,
    DTYPES,
    FullLayer,
    GlobalAvgPoolLayer,
    InputShape,
    Layer,
    Optimizer,
    PositiveInt,
    ResidualBlock,
    _Strict,
)
from costmodel.model.sizes import LayerSizes, propagate  # noqa: F401  (LayerSizes re-exported)
from costmodel.model.messages import cut_short, short_repr, first_error


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
            raise ArchError(f"batch {short_repr(batch)}: {exc}") from None
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
        return propagate(self)

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


# -- loading ---------------------------------------------------------------------------------

#
# Bounds on what is read (costmodel.files, costmodel.model.yamlload) and on what comes out: a
# file of more than MAX_ARCH_BYTES or MAX_LAYERS layers is refused, every integer must fit in
# int64, and so must the byte count of every array one step holds (_check_exact). The messages
# (costmodel.model.messages) name the place, put unknown keys first with a "did you mean", say
# what a field allows, and cut a user's value short.

#: an arch file's size (a 10,000-layer network in block style is about 400 KiB)
MAX_ARCH_BYTES = 4 << 20
#: layers of one network (reading, costing and printing grow with it; 10,000 take seconds)
MAX_LAYERS = 10_000
#: YAML events of an arch file (10,000 layers of 12 fields each have about 260,000)
MAX_ARCH_EVENTS = 300_000


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
        problem = cut_short(exc.problem or "")
        if "constructor for the tag" in problem:
            raise ArchError(f"{path}: {where}YAML tag refused: {problem} "
                            "(the file is read as data; no tag may construct an object)") from None
        raise ArchError(f"{path}: {where}{problem}") from None
    except yamlload.YAMLLimitError as exc:  # valid YAML, but not what an arch file may be
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ArchError(f"{path}: {where}{cut_short(exc.problem)}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        during = (f" ({cut_short(context, 40)} from line {cmark.line + 1}, column {cmark.column + 1})"
                  if context and cmark and (not mark or cmark.line != mark.line) else "")
        raise ArchError(f"{path}: not valid YAML{where}: {cut_short(exc.problem or '')}{during}") from None
    except yaml.YAMLError as exc:  # ReaderError: a character YAML does not allow
        raise ArchError(f"{path}: not valid YAML: {cut_short(str(exc).splitlines()[0])}") from None
    except RecursionError:  # the loader bounds nesting; this is a last guard
        raise ArchError(f"{path}: not valid YAML: nested too deeply") from None
    return parse_arch(data, str(path))


