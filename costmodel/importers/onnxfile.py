"""An ONNX file onto the architecture file's vocabulary (``costmodel import model.onnx``,
``costmodel predict model.onnx``).

The file is only parsed (protobuf, with the ``onnx`` package), never run: its size is capped, it is
read only if it is a regular file, external data (weights in other files) is never opened, and
only the initializers' shapes are used. Shapes come from the graph's input (a symbolic batch is
set to 1; a symbolic height, width or channel count needs ``--input``) and
onnx.shape_inference. The ops map onto costmodel.importers.graph's nodes:

| ONNX | node |
| --- | --- |
| Conv (W and B initializers; pads, strides, group, auto_pad) | conv |
| Gemm (transA 0, alpha = beta = 1), MatMul with an initializer, + Add of the bias | linear |
| BatchNormalization (training or inference mode: the layer is trained) | batch_norm |
| Relu, Tanh, Sigmoid | act |
| MaxPool, AveragePool | max_pool, avg_pool |
| GlobalAveragePool, ReduceMean over the axes (2, 3) | global_avg_pool |
| Dropout (its ratio; the format trains it even when the file's runs in inference mode) | dropout |
| Flatten, Reshape, Squeeze | reshape |
| Pad (constant zeros, before a conv) | pad |
| Add of two values of the network | add |
| Softmax, LogSoftmax at the end | softmax (the loss) |
| Identity | identity |

Nodes that compute only on shapes or constants (Shape, Gather, Concat, Constant, ...) are no op
of the network and are skipped. Anything else is refused in one line naming the node.

The onnx package is optional (``pip install 'costmodel[onnx]'``): imported inside the functions.
Exporting from PyTorch for training: ``torch.onnx.export(model, (x,), "model.onnx", dynamo=False,
training=torch.onnx.TrainingMode.TRAINING)``; an inference export folds batch normalization into
the conv before it and drops dropout, and the file then describes that network (docs/import.md).
"""

from __future__ import annotations

from dataclasses import replace
from math import prod
from pathlib import Path

from costmodel.errors import ArchError, UsageError
from costmodel.importers.graph import Graph, Node, pooled_size, same_pads, to_arch_data

INSTALL_HINT = "reading an ONNX file needs the onnx package: pip install 'costmodel[onnx]'"
#: the largest ONNX file read (protobuf itself stops at 2 GiB)
MAX_ONNX_BYTES = 1 << 30
#: the most elements of a constant that is read (pads, axes, shapes) or folded
SMALL = 64
#: the most nodes of a graph (the largest classification networks have a few thousand)
MAX_NODES = 100_000
SUPPORTED = ("supported: Conv, Gemm, MatMul+Add, BatchNormalization, Relu, Tanh, Sigmoid, MaxPool, AveragePool, "
             "GlobalAveragePool, ReduceMean over (2, 3), Dropout, Flatten, Reshape, Squeeze, Pad, Add of a residual "
             "block, Identity, Softmax/LogSoftmax at the end")
_DTYPES = {1: "float32", 11: "float64"}


def import_onnx():
    """The onnx package, or a one-line UsageError naming the extra to install."""
    try:
        import onnx
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return onnx


def load_model(path: str | Path):
    """The ModelProto of an .onnx file and the shapes of its external initializers: read (a
    regular file of at most MAX_ONNX_BYTES), parsed, checked with onnx.checker; ArchError naming
    the file otherwise.

    An initializer whose data is in another file (PyTorch's default exporter writes one) keeps
    only its shape: it is taken off the initializers and checked as a graph input of that shape,
    so that neither onnx.checker nor costmodel opens the file it names."""
    onnx = import_onnx()
    from costmodel.files import read_regular

    data = read_regular(path, limit=MAX_ONNX_BYTES, what="model file (ONNX)", error=ArchError)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # google.protobuf.message.DecodeError and friends
        raise ArchError(f"{path}: not an ONNX model (protobuf: {str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})") from None
    del data
    if not model.graph.node:
        raise ArchError(f"{path}: not an ONNX model (no graph nodes)")
    if len(model.graph.node) > MAX_NODES:
        raise ArchError(f"{path}: {len(model.graph.node)} nodes, more than the {MAX_NODES} read")
    external: dict[str, tuple[int, ...]] = {}
    initializers = model.graph.initializer
    for i in reversed(range(len(initializers))):
        t = initializers[i]
        if t.data_location == onnx.TensorProto.EXTERNAL:
            external[t.name] = tuple(t.dims)
            model.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
            del initializers[i]
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        first = str(exc).strip().splitlines()
        raise ArchError(f"{path}: not a valid ONNX model ({first[0][:160] if first else type(exc).__name__})") from None
    return model, external


def _dims(value_info) -> list:
    """The dims of a ValueInfoProto: ints, None for a symbolic or unknown one; None for no shape."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


class _Reader:
    """Maps a checked ModelProto's graph onto costmodel.importers.graph's Nodes."""

    def __init__(self, model, path: str, input_shape: tuple[int, ...] | None,
                 external: dict[str, tuple[int, ...]] | None = None):
        self.onnx = import_onnx()
        self.model = model
        self.path = path
        self.graph = model.graph
        self.init = {t.name: t for t in self.graph.initializer}
        self.external = external or {}  # initializers whose data is in another file: their shapes
        self.constants: dict[str, object] = {}  # small constant values: name -> numpy array
        self.own: dict[str, tuple[int, ...]] = {}  # shapes of the network's values (without the batch)
        self.used: dict[str, str] = {}  # initializer used as a weight -> the node that uses it
        self.nodes: list[Node] = []
        self.data: set[str] = set()
        self.params = 0
        self.notes: list[str] = []
        self._input(input_shape)

    # -- the input and the shapes
    def _input(self, input_shape) -> None:
        inputs = [i for i in self.graph.input if i.name not in self.init and i.name not in self.external]
        if len(inputs) != 1:
            raise ArchError(f"{self.path}: the graph has {len(inputs)} inputs ({', '.join(i.name for i in inputs)[:80]}); "
                            "the format's network reads one")
        inp = inputs[0]
        elem = inp.type.tensor_type.elem_type
        if elem not in _DTYPES:
            raise ArchError(f"{self.path}: input {inp.name}: element type "
                            f"{self.onnx.TensorProto.DataType.Name(elem) if elem else 'unknown'}; the format has "
                            "float32 or float64 networks")
        self.dtype = _DTYPES[elem]
        dims = _dims(inp)
        if dims is None or len(dims) not in (2, 4):
            raise ArchError(f"{self.path}: input {inp.name} has {'no shape' if dims is None else f'{len(dims)} axes'}; "
                            "the format's input is a batch of images (N, C, H, W) or of vectors (N, n)")
        if input_shape is not None:
            if len(input_shape) != len(dims) - 1 or any(d is not None and d != s for d, s in zip(dims[1:], input_shape)):
                given = "x".join(map(str, input_shape))
                raise UsageError(f"--input {given}: the file's input {inp.name} is "
                                 f"{'x'.join('?' if d is None else str(d) for d in dims[1:])}")
            dims = [dims[0], *input_shape]
        if any(d is None for d in dims[1:]):
            raise ArchError(f"{self.path}: input {inp.name} has a symbolic size "
                            f"({'x'.join('?' if d is None else str(d) for d in dims[1:])}); give it with "
                            "costmodel import --input CxHxW")
        self.batch = dims[0] or 1
        self.input_name = inp.name
        self.input_shape = tuple(dims[1:])
        shape = inp.type.tensor_type.shape
        for d, value in zip(shape.dim, [self.batch, *self.input_shape]):
            d.dim_value = value
        try:
            inferred = self.onnx.shape_inference.infer_shapes(self.model, check_type=False, strict_mode=False,
                                                              data_prop=True)
        except Exception as exc:
            raise ArchError(f"{self.path}: ONNX shape inference fails ({str(exc).splitlines()[0][:160]})") from None
        self.shapes = {}
        for vi in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input):
            dims = _dims(vi)
            if dims is not None and all(d is not None for d in dims):
                self.shapes[vi.name] = tuple(dims)
        self.data.add(inp.name)
        self.own[inp.name] = self.input_shape

    # -- helpers
    def where(self, node, index: int) -> tuple[str, str]:
        return (node.name or f"node {index} ({node.output[0] if node.output else ''})"), node.op_type

    def refuse(self, node, index: int, why: str = "not supported") -> ArchError:
        name, op = self.where(node, index)
        return ArchError(f"{name} ({op}): {why} ({SUPPORTED})")

    def attrs(self, node) -> dict:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute
                if a.type != self.onnx.AttributeProto.GRAPH and a.type != self.onnx.AttributeProto.GRAPHS}

    def init_dims(self, name: str, node, index: int, what: str) -> tuple[int, ...]:
        """The dims of an initializer (or small constant) that a layer uses as its `what`; a
        weight used by a second layer is refused (the format's layers have their own)."""
        if what != "running average" and name in self.used:
            raise self.refuse(node, index, f"its {what} {name!r} is used again (first by {self.used[name]}); the "
                                           "format's layers have their own weights")
        if what != "running average":
            self.used[name] = "{} ({})".format(*self.where(node, index))
        if name in self.init:
            return tuple(self.init[name].dims)
        if name in self.external:
            return self.external[name]
        if name in self.constants:
            return tuple(self.constants[name].shape)
        raise self.refuse(node, index, f"its {what} {name!r} is not an initializer (weights computed in the graph)")

    def const(self, name: str):
        """The value of a small constant (an initializer or a Constant node's output), or None."""
        if name in self.constants:
            return self.constants[name]
        t = self.init.get(name)
        if t is not None and prod(t.dims) <= SMALL and t.data_location != self.onnx.TensorProto.EXTERNAL:
            from onnx import numpy_helper

            return numpy_helper.to_array(t)
        return None

    def shape(self, name: str, node, index: int) -> tuple[int, ...]:
        """The shape of a value of the network without the batch: the importer's own (computed
        for every supported op), else ONNX shape inference's."""
        if name in self.own:
            return self.own[name]
        if name not in self.shapes:
            raise self.refuse(node, index, f"the shape of {name!r} is unknown (ONNX shape inference gives none)")
        shape = self.shapes[name]
        if shape[:1] != (self.batch,):
            raise self.refuse(node, index, f"its output is {'x'.join(map(str, shape))} for a batch of {self.batch}: "
                                           "it mixes the instances of the batch")
        return shape[1:]

    def _out_shape(self, node, index: int, op: str, data: list[str], attrs: dict) -> tuple[int, ...] | None:
        """The output shape (without the batch) of a supported op, from its input's; None where
        the op's attributes do not say it (a Reshape or Squeeze whose target is not a constant)."""
        shape = self.shape(data[0], node, index)
        if op == "conv":
            (kh, kw), (sh, sw), (dh, dw) = attrs["kernel"], attrs["stride"], attrs["dilation"]
            top, left, bottom, right = attrs["pads"]
            return (attrs["filters"], (shape[1] + top + bottom - dh * (kh - 1) - 1) // sh + 1,
                    (shape[2] + left + right - dw * (kw - 1) - 1) // sw + 1)
        if op in ("max_pool", "avg_pool"):
            (kh, kw), (sh, sw) = attrs["kernel"], attrs["stride"]
            top, left, bottom, right = attrs["pads"]
            return (shape[0], pooled_size(shape[1] + top + bottom, kh, sh, attrs["ceil"]),
                    pooled_size(shape[2] + left + right, kw, sw, attrs["ceil"]))
        if op == "linear":
            return (attrs["out_features"],)
        if op == "pad":
            top, left, bottom, right = attrs["pads"]
            return (shape[0], shape[1] + top + bottom, shape[2] + left + right)
        if op == "add":
            other = self.shape(data[1], node, index)
            if other != shape:
                raise self.refuse(node, index, f"an addition of {_text(shape)} and {_text(other)} values")
            return shape
        if op in ("batch_norm", "act", "dropout", "identity", "softmax"):
            return shape
        if op == "reshape":
            if node.op_type == "Flatten":
                axis = self.attrs(node).get("axis", 1) % (len(shape) + 1)
                if axis == 1:
                    return (prod(shape),)
                return None
            target = self.const(node.input[1]) if node.op_type == "Reshape" else None
            if target is not None:
                full = [self.batch, *shape]
                dims = [full[i] if v == 0 else int(v) for i, v in enumerate(target.ravel().tolist())]
                if dims.count(-1) == 1:
                    known = prod(d for d in dims if d != -1)
                    dims[dims.index(-1)] = prod(full) // known if known else 0
                if prod(dims) == prod(full) and dims[:1] == [self.batch]:
                    return tuple(dims[1:])
            return None
        return None

    def emit(self, node, index: int, op: str, data: list[str], attrs: dict, output: str | None = None,
             shape: tuple[int, ...] | None = None) -> None:
        name, what = self.where(node, index)
        out = output or node.output[0]
        shape = shape or self._out_shape(node, index, op, data, attrs)
        inferred = self.shapes.get(out)
        if shape is None:
            shape = self.shape(out, node, index)
        elif inferred is not None and inferred != (self.batch, *shape):
            raise self.refuse(node, index, f"its output is {_text(inferred)} by ONNX shape inference, "
                                           f"{_text((self.batch, *shape))} by its attributes")
        self.own[out] = tuple(shape)
        self.nodes.append(Node(name, what, op, tuple(data), out, tuple(shape), attrs))
        self.data.add(out)

    def _constant_node(self, node) -> None:
        from onnx import numpy_helper

        a = {x.name: x for x in node.attribute}
        if "value" in a and prod(a["value"].t.dims) <= SMALL:
            self.constants[node.output[0]] = numpy_helper.to_array(a["value"].t)
        elif "value_ints" in a or "value_int" in a or "value_float" in a or "value_floats" in a:
            import numpy as np

            key = next(k for k in ("value_ints", "value_int", "value_float", "value_floats") if k in a)
            self.constants[node.output[0]] = np.asarray(self.onnx.helper.get_attribute_value(a[key]))

    def _fold(self, node) -> None:
        """The value of a node that computes on small constants only (the shape arithmetic an
        exporter writes, e.g. PyTorch's F.pad pads), with numpy on at most SMALL elements each;
        nothing else is evaluated. A value that cannot be had stays unknown."""
        import numpy as np

        inputs = [self.const(name) if name else None for name in node.input]
        if any(v is None for v in inputs[:1]) or any(v is not None and v.size > SMALL for v in inputs):
            return
        a = self.attrs(node)
        op = node.op_type
        try:
            if op == "Identity":
                out = inputs[0]
            elif op == "ConstantOfShape":
                shape = [int(v) for v in inputs[0].ravel()]
                if prod(shape) > SMALL or any(v < 0 for v in shape):
                    return
                from onnx import numpy_helper

                fill = numpy_helper.to_array(a["value"]).ravel()[0] if "value" in a else np.float32(0)
                out = np.full(shape, fill)
            elif op == "Concat":
                if any(v is None for v in inputs):
                    return
                out = np.concatenate(inputs, axis=a.get("axis", 0))
            elif op == "Reshape":
                shape = [int(v) for v in inputs[1].ravel()] if len(inputs) > 1 and inputs[1] is not None else None
                if shape is None:
                    return
                shape = [inputs[0].shape[i] if v == 0 and not a.get("allowzero", 0) else v for i, v in enumerate(shape)]
                out = inputs[0].reshape(shape)
            elif op == "Slice":
                starts, ends = (inputs[i].ravel().tolist() for i in (1, 2))
                axes = inputs[3].ravel().tolist() if len(inputs) > 3 and inputs[3] is not None else range(len(starts))
                steps = inputs[4].ravel().tolist() if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
                index = [slice(None)] * inputs[0].ndim
                for axis, start, end, step in zip(axes, starts, ends, steps):
                    index[int(axis)] = slice(int(start), int(end), int(step))
                out = inputs[0][tuple(index)]
            elif op == "Transpose":
                out = np.transpose(inputs[0], a.get("perm"))
            elif op == "Cast":
                out = inputs[0].astype(self.onnx.helper.tensor_dtype_to_np_dtype(a["to"]))
            elif op in ("Unsqueeze", "Squeeze"):
                axes = a.get("axes")
                if axes is None and len(inputs) > 1 and inputs[1] is not None:
                    axes = inputs[1].ravel().tolist()
                if op == "Squeeze":
                    out = np.squeeze(inputs[0], axis=tuple(int(v) for v in axes) if axes is not None else None)
                else:
                    out = inputs[0]
                    for axis in sorted(int(v) % (inputs[0].ndim + len(axes)) for v in axes):
                        out = np.expand_dims(out, axis)
            elif op == "Gather":
                if inputs[1] is None:
                    return
                out = np.take(inputs[0], inputs[1], axis=a.get("axis", 0))
            else:
                return
        except (ValueError, IndexError, TypeError, KeyError):
            return
        out = np.asarray(out)
        if out.size <= SMALL:
            self.constants[node.output[0]] = out

    # -- the graph
    def run(self) -> Graph:
        readers: dict[str, int] = {}
        for node in self.graph.node:
            for name in node.input:
                readers[name] = readers.get(name, 0) + 1
        self.readers = readers
        matmuls: dict[str, int] = {}  # output of a MatMul -> its index in self.nodes
        for index, node in enumerate(self.graph.node):  # an unsupported layer (an op with weights) first
            if not hasattr(self, f"op_{node.op_type}") and any(name in self.init for name in node.input):
                raise self.refuse(node, index)
        for index, node in enumerate(self.graph.node):
            op = node.op_type
            if node.domain not in ("", "ai.onnx"):
                raise self.refuse(node, index, f"an op of the domain {node.domain!r}")
            data = [name for name in node.input if name in self.data]
            if op == "Constant":
                self._constant_node(node)
                continue
            if op == "Shape" and data:
                import numpy as np

                self.constants[node.output[0]] = np.asarray([self.batch, *self.shape(data[0], node, index)],
                                                            dtype=np.int64)
                continue
            if not data or op == "Size":
                self._fold(node)  # computes on shapes or constants only: no op of the network
                continue
            getattr(self, f"op_{op}", self.op_other)(node, index, data, matmuls)
        outputs = [o.name for o in self.graph.output if o.name in self.data]
        if len(outputs) != 1:
            raise ArchError(f"{self.path}: the graph has {len(outputs)} outputs computed from its input; the format's "
                            "network has one")
        return Graph(self.input_name, self.input_shape, outputs[0], self.nodes, self.dtype)

    def op_other(self, node, index, data, matmuls) -> None:
        raise self.refuse(node, index)

    def _one(self, node, index, data) -> str:
        if len(data) != 1 or node.input[0] != data[0]:
            raise self.refuse(node, index, "it reads more than the one tensor of the network")
        for extra in node.output[1:]:
            if extra and self.readers.get(extra):
                raise self.refuse(node, index, f"its second output {extra!r} is used")
        return data[0]

    def op_Conv(self, node, index, data, matmuls) -> None:
        x = self._one(node, index, data)
        a = self.attrs(node)
        w = self.init_dims(node.input[1], node, index, "weight")
        bias = len(node.input) > 2 and bool(node.input[2])
        if len(w) != 4:
            raise self.refuse(node, index, f"a {len(w) - 2}-D convolution; the format's are 2-D")
        self.params += prod(w) + (prod(self.init_dims(node.input[2], node, index, "bias")) if bias else 0)
        kernel = tuple(a.get("kernel_shape", w[2:]))
        stride = tuple(a.get("strides", (1, 1)))
        dilation = tuple(a.get("dilations", (1, 1)))
        if kernel != tuple(w[2:]):
            raise self.refuse(node, index, f"kernel_shape {kernel} and a weight of {_text(w)}")
        self._positive(node, index, kernel=kernel, strides=stride, dilations=dilation)
        _, height, width = self.shape(x, node, index)
        pads = self._pads(a, (height, width), kernel, stride, node, index)
        self.emit(node, index, "conv", [x], dict(in_channels=w[1] * a.get("group", 1), filters=w[0], kernel=kernel,
                                                 stride=stride, pads=pads, dilation=dilation,
                                                 groups=a.get("group", 1), bias=bias))

    def _positive(self, node, index, **values) -> None:
        for what, value in values.items():
            if len(value) != 2 or any(v < 1 for v in value):
                raise self.refuse(node, index, f"{what} {tuple(value)}: two positive sizes expected")

    def _pads(self, a: dict, size, kernel, stride, node, index) -> tuple[int, int, int, int]:
        """ONNX pads [top, left, bottom, right] or auto_pad, as (top, left, bottom, right)."""
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("NOTSET", ""):
            pads = tuple(a.get("pads", (0, 0, 0, 0)))
            if len(pads) != 4 or any(p < 0 for p in pads):
                raise self.refuse(node, index, f"pads {pads}: four sizes of zero or more expected")
            return pads[0], pads[1], pads[2], pads[3]
        if auto == "VALID":
            return 0, 0, 0, 0
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            (top, bottom), (left, right) = (same_pads(s, k, st) for s, k, st in zip(size, kernel, stride))
            if auto == "SAME_LOWER":
                top, bottom, left, right = bottom, top, right, left
            return top, left, bottom, right
        raise self.refuse(node, index, f"auto_pad {auto!r}")

    def op_Gemm(self, node, index, data, matmuls) -> None:
        x = self._one(node, index, data)
        a = self.attrs(node)
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise self.refuse(node, index, "a Gemm with transA, alpha or beta; the format's full layer is W x + b")
        w = self.init_dims(node.input[1], node, index, "weight")
        out, n_in = (w[0], w[1]) if a.get("transB", 0) else (w[1], w[0])
        bias = len(node.input) > 2 and bool(node.input[2])
        if bias:
            b = self.init_dims(node.input[2], node, index, "bias")
            if prod(b) != out:
                raise self.refuse(node, index, f"a bias of shape {b} for {out} units")
            self.params += out
        self.params += prod(w)
        self.emit(node, index, "linear", [x], dict(in_features=n_in, out_features=out, bias=bias))

    def op_MatMul(self, node, index, data, matmuls) -> None:
        x = self._one(node, index, data)
        w = self.init_dims(node.input[1], node, index, "weight")
        if len(w) != 2:
            raise self.refuse(node, index, f"a product with a {len(w)}-D weight")
        self.params += prod(w)
        self.emit(node, index, "linear", [x], dict(in_features=w[0], out_features=w[1], bias=False))
        matmuls[node.output[0]] = len(self.nodes) - 1

    def op_Add(self, node, index, data, matmuls) -> None:
        if len(node.input) == 2 and len(data) == 2:
            self.emit(node, index, "add", list(node.input), {})
            return
        x = data[0]
        other = node.input[1] if node.input[0] == x else node.input[0]
        if x in matmuls and self.readers.get(x) == 1:
            linear = self.nodes[matmuls[x]]
            b = self.init_dims(other, node, index, "bias")
            if prod(b) == linear.attrs["out_features"] and (len(b) == 1 or b[0] == 1):
                self.params += prod(b)
                name, _ = self.where(node, index)
                self.nodes[matmuls[x]] = replace(linear, name=f"{linear.name} + {name}", type="MatMul+Add",
                                                 output=node.output[0], attrs={**linear.attrs, "bias": True})
                self.data.add(node.output[0])
                return
        raise self.refuse(node, index, "an addition of a constant (only the bias after a MatMul, or a residual block's "
                                       "F(X) + X)")

    def op_BatchNormalization(self, node, index, data, matmuls) -> None:
        x = self._one(node, index, data)
        a = self.attrs(node)
        scale = self.init_dims(node.input[1], node, index, "scale")
        bias = self.init_dims(node.input[2], node, index, "bias")
        for i in (3, 4):
            self.init_dims(node.input[i], node, index, "running average")
        self.params += prod(scale) + prod(bias)
        if not a.get("training_mode", 0):
            name, _ = self.where(node, index)
            self.notes.append(f"{name} (BatchNormalization): in inference mode in the file; the format's step trains "
                              "it")
        self.emit(node, index, "batch_norm", [x], dict(features=prod(scale), affine=True, running=True,
                                                       eps=_decimal(a.get("epsilon", 1e-5)),
                                                       momentum=_decimal(1 - _decimal(a.get("momentum", 0.9)))))

    def op_Relu(self, node, index, data, matmuls) -> None:
        self.emit(node, index, "act", [self._one(node, index, data)], dict(fn="relu"))

    def op_Tanh(self, node, index, data, matmuls) -> None:
        self.emit(node, index, "act", [self._one(node, index, data)], dict(fn="tanh"))

    def op_Sigmoid(self, node, index, data, matmuls) -> None:
        self.emit(node, index, "act", [self._one(node, index, data)], dict(fn="sigmoid"))

    def _pool(self, node, index, data, kind: str) -> None:
        x = self._one(node, index, data)
        a = self.attrs(node)
        kernel = tuple(a["kernel_shape"])
        stride = tuple(a.get("strides", (1,) * len(kernel)))
        shape = self.shape(x, node, index)
        if len(kernel) != 2 or len(shape) != 3:
            raise self.refuse(node, index, f"a {len(kernel)}-D pooling")
        self._positive(node, index, kernel_shape=kernel, strides=stride, dilations=tuple(a.get("dilations", (1, 1))))
        attrs = dict(kernel=kernel, stride=stride, pads=self._pads(a, shape[1:], kernel, stride, node, index),
                     ceil=bool(a.get("ceil_mode", 0)))
        if kind == "max_pool":
            if a.get("storage_order", 0):
                raise self.refuse(node, index, "storage_order 1")
            attrs["dilation"] = tuple(a.get("dilations", (1, 1)))
        self.emit(node, index, kind, [x], attrs)

    def op_MaxPool(self, node, index, data, matmuls) -> None:
        self._pool(node, index, data, "max_pool")

    def op_AveragePool(self, node, index, data, matmuls) -> None:
        self._pool(node, index, data, "avg_pool")

    def op_GlobalAveragePool(self, node, index, data, matmuls) -> None:
        x = self._one(node, index, data)
        channels = self.shape(x, node, index)[0]
        self.emit(node, index, "global_avg_pool", [x], {}, shape=(channels, 1, 1))

    def op_ReduceMean(self, node, index, data, matmuls) -> None:
        x = self._one(node, index, data)
        a = self.attrs(node)
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            value = self.const(node.input[1])
            axes = None if value is None else [int(v) for v in value.ravel()]
        rank = len(self.shape(x, node, index)) + 1
        if axes is None or sorted(int(v) % rank for v in axes) != [2, 3] or rank != 4:
            raise self.refuse(node, index, f"a mean over the axes {axes}; only over an image's positions (2, 3)")
        channels = self.shape(x, node, index)[0]
        self.emit(node, index, "global_avg_pool", [x], {},
                  shape=(channels, 1, 1) if a.get("keepdims", 1) else (channels,))

    def op_Dropout(self, node, index, data, matmuls) -> None:
        x = self._one(node, index, data)
        a = self.attrs(node)
        ratio = a.get("ratio", 0.5)
        if len(node.input) > 1 and node.input[1]:
            value = self.const(node.input[1])
            if value is None:
                raise self.refuse(node, index, "its ratio is not a constant")
            ratio = float(value)
        training = False
        if len(node.input) > 2 and node.input[2]:
            value = self.const(node.input[2])
            training = bool(value) if value is not None else False
        if not training and ratio:
            name, _ = self.where(node, index)
            self.notes.append(f"{name} (Dropout): in inference mode in the file; the format's step trains it")
        self.emit(node, index, "dropout", [x], dict(rate=_decimal(ratio)))

    def op_Flatten(self, node, index, data, matmuls) -> None:
        self.emit(node, index, "reshape", [self._one(node, index, data)], {})

    def op_Reshape(self, node, index, data, matmuls) -> None:
        self.emit(node, index, "reshape", [self._one(node, index, data)], {})

    def op_Squeeze(self, node, index, data, matmuls) -> None:
        self.emit(node, index, "reshape", [self._one(node, index, data)], {})

    def op_Identity(self, node, index, data, matmuls) -> None:
        self.emit(node, index, "identity", [self._one(node, index, data)], {})

    def op_Pad(self, node, index, data, matmuls) -> None:
        x = self._one(node, index, data)
        a = self.attrs(node)
        mode = a.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        pads = a.get("pads")
        if pads is None and len(node.input) > 1 and node.input[1]:
            value = self.const(node.input[1])
            pads = None if value is None else [int(v) for v in value.ravel()]
        value = a.get("value", 0.0)
        if len(node.input) > 2 and node.input[2]:
            const = self.const(node.input[2])
            value = None if const is None else float(const)
        if len(node.input) > 3 and node.input[3]:
            raise self.refuse(node, index, "padding of chosen axes")
        if pads is None or len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)):
            raise self.refuse(node, index, f"pads {pads}; the format folds zeros around an image's rows and columns "
                                           "into the conv after them")
        self.emit(node, index, "pad", [x], dict(pads=(pads[2], pads[3], pads[6], pads[7]), mode=mode, value=value))

    def _softmax(self, node, index, data, log: bool) -> None:
        x = self._one(node, index, data)
        a = self.attrs(node)
        rank = len(self.shape(x, node, index)) + 1
        axis = a.get("axis", -1 if self.model.opset_import and _opset(self.model) >= 13 else 1)
        self.emit(node, index, "softmax", [x], dict(log=log, dim=1 if axis % rank == 1 and rank == 2 else axis))

    def op_Softmax(self, node, index, data, matmuls) -> None:
        self._softmax(node, index, data, False)

    def op_LogSoftmax(self, node, index, data, matmuls) -> None:
        self._softmax(node, index, data, True)


def _text(shape) -> str:
    return "x".join(map(str, shape))


def _decimal(value) -> float:
    """A float32 attribute as the shortest decimal that is that float32 (0.2, not 0.200000003)."""
    import numpy as np

    return float(str(np.float32(value)))


def _opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)


def onnx_graph(path: str | Path, input_shape: tuple[int, ...] | None = None) -> tuple[Graph, list[str], int]:
    """The graph of an ONNX file, the notes of what the file says that the format's step does
    otherwise (inference-mode batch norm, dropout), and the parameter count of its initializers
    that the layers use (weights, biases, batch norm's scale and shift)."""
    model, external = load_model(path)
    reader = _Reader(model, str(path), input_shape, external)
    graph = reader.run()
    return graph, reader.notes, reader.params


def read_onnx(path: str | Path) -> dict:
    """The architecture file's data of an ONNX file (for costmodel.model.arch.load_arch): named by
    the file's stem, the format's batch, the loss of its end (softmax: softmax_ce; else softmax_ce
    assumed, as for logits)."""
    graph, _, _ = onnx_graph(path)
    data, _ = to_arch_data(graph, name=Path(path).stem)
    return data
