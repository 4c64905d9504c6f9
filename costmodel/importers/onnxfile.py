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

from math import prod
from pathlib import Path

from costmodel.errors import ArchError, UsageError
from costmodel.importers.graph import Graph, Node, pooled_size
from costmodel.importers.fold import to_arch_data
from costmodel.importers.onnx_ops import OnnxOps, _text

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


class _Reader(OnnxOps):
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
