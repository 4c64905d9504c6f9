"""The ONNX operators costmodel reads (docs/import.md), one method each, mixed into the reader of
costmodel.importers.onnxfile; and the helpers both use."""

from __future__ import annotations

from dataclasses import replace
from math import prod

from costmodel.importers.graph import same_pads


class OnnxOps:
    """The ONNX operators the reader maps, one method each (op_<OpType>(node, index, data, matmuls)),
    with the checks of their attributes; the rest of the reader (costmodel.importers.onnxfile)
    provides attrs, shape, init_dims, emit and refuse."""

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
