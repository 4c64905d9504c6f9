"""The calls of a traced PyTorch module that costmodel maps (docs/import.md): the functions,
methods and modules of each node kind with their argument names and defaults, and the mapping
of one fx node onto the graph's Nodes (a mixin of costmodel.importers.fx_map's mapper)."""

from __future__ import annotations

import operator
import sys

from costmodel.errors import ArchError
from costmodel.importers.torchmodule import TensorMeta

#: canonical kinds: the argument names of the call, in order
SIGNATURES = {
    "conv": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "linear": ("input", "weight", "bias"),
    "max_pool": ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    "avg_pool": ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    "adaptive_avg_pool": ("input", "output_size"),
    "dropout": ("input", "p", "training", "inplace"),
    "act": ("input",),
    "reshape": ("input",),
    "identity": ("input",),
    "add": ("input", "other", "alpha"),
    "pad": ("input", "pad", "mode", "value"),
    "constant_pad": ("input", "pad", "value"),
    "softmax": ("input", "dim"),
    "mean": ("input", "dim", "keepdim"),
    "batch_norm_aten": ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps"),
    "batch_norm": ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
}
DEFAULTS = {"bias": None, "stride": None, "padding": 0, "dilation": 1, "groups": 1, "ceil_mode": False,
             "return_indices": False, "count_include_pad": True, "divisor_override": None, "p": 0.5,
             "training": True, "alpha": 1, "mode": "constant", "value": None, "dim": None, "keepdim": False,
             "momentum": 0.1, "eps": 1e-5}
ALIASES = {"self": "input", "train": "training", "kernel": "kernel_size"}


def function_table(torch) -> dict:
    """fx call_function target -> (kind, extra attributes)."""
    F = torch.nn.functional
    aten = torch.ops.aten
    table = {}

    def add(kind, *targets, **extra):
        for target in targets:
            table[target] = (kind, extra)

    add("conv", F.conv2d, torch.conv2d, aten.conv2d.default, aten.conv2d.padding)
    add("linear", F.linear, aten.linear.default)
    add("act", F.relu, torch.relu, torch.relu_, F.relu_, aten.relu.default, aten.relu_.default, fn="relu")
    add("act", F.tanh, torch.tanh, torch.tanh_, aten.tanh.default, aten.tanh_.default, fn="tanh")
    add("act", F.sigmoid, torch.sigmoid, torch.sigmoid_, aten.sigmoid.default, aten.sigmoid_.default, fn="sigmoid")
    add("max_pool", F.max_pool2d, torch.max_pool2d, aten.max_pool2d.default)
    add("avg_pool", F.avg_pool2d, aten.avg_pool2d.default)
    add("adaptive_avg_pool", F.adaptive_avg_pool2d, aten.adaptive_avg_pool2d.default)
    add("dropout", F.dropout, torch.dropout, aten.dropout.default)
    add("reshape", torch.flatten, torch.reshape, torch.squeeze, aten.flatten.using_ints, aten.view.default,
        aten.reshape.default, aten.squeeze.dims, aten.squeeze.dim, aten.squeeze.default, aten._unsafe_view.default)
    add("identity", aten.clone.default, aten.alias.default, aten.contiguous.default)
    add("add", operator.add, operator.iadd, torch.add, aten.add.Tensor, aten.add_.Tensor)
    add("pad", F.pad, aten.pad.default)
    add("constant_pad", aten.constant_pad_nd.default, torch.constant_pad_nd)
    add("softmax", F.softmax, torch.softmax, aten.softmax.int, aten._softmax.default, log=False)
    add("softmax", F.log_softmax, torch.log_softmax, aten.log_softmax.int, aten._log_softmax.default, log=True)
    add("mean", torch.mean, aten.mean.dim)
    add("batch_norm", F.batch_norm)
    add("batch_norm_aten", aten.batch_norm.default)
    return table


METHODS = {"relu": ("act", {"fn": "relu"}), "relu_": ("act", {"fn": "relu"}), "tanh": ("act", {"fn": "tanh"}),
            "tanh_": ("act", {"fn": "tanh"}), "sigmoid": ("act", {"fn": "sigmoid"}),
            "sigmoid_": ("act", {"fn": "sigmoid"}), "view": ("reshape", {}), "reshape": ("reshape", {}),
            "flatten": ("reshape", {}), "squeeze": ("reshape", {}), "contiguous": ("identity", {}),
            "clone": ("identity", {}), "add": ("add", {}), "add_": ("add", {}), "__add__": ("add", {}),
            "mean": ("mean", {}), "softmax": ("softmax", {"log": False}), "log_softmax": ("softmax", {"log": True})}


def _pair(value, what: str, where: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 1:
        return _pair(value[0], what, where)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise ArchError(f"{where}: {what} {value!r} is not one or two integers")


def _conv_pads(padding, kernel, dilation, stride, where) -> tuple[int, int, int, int]:
    """PyTorch's conv padding as (top, left, bottom, right): an int, a pair, 'valid' or 'same'
    (the total d (k - 1) split floor before, ceil after, as torch pads it)."""
    if padding == "valid":
        return 0, 0, 0, 0
    if padding == "same":
        if stride != (1, 1):
            raise ArchError(f"{where}: padding 'same' with stride {stride}")
        (th, tw) = (dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1))
        return th // 2, tw // 2, th - th // 2, tw - tw // 2
    ph, pw = _pair(padding, "padding", where)
    return ph, pw, ph, pw


class FxOps:
    """The mapping of one fx node onto the graph's Node kinds: a function or method call through the
    tables above, a module call by its type; the rest of the mapper (costmodel.importers.torchmodule)
    provides the values, shapes and parameters (_value, _shape, _param, _emit, refuse)."""

    def _node(self, n) -> None:
        if n.op == "call_module":
            self._module_node(n)
            return
        if n.op == "call_method":
            kind, extra = METHODS.get(n.target, (None, {}))
        else:
            kind, extra = self.functions.get(n.target, (None, {}))
        if kind is None:
            raise self.refuse(n)
        data = self._data_inputs(n)
        a = self._bind(kind, n)
        fx = sys.modules["torch.fx"]
        if kind != "add" and (len(data) != 1 or not isinstance(a.get("input"), fx.Node) or a["input"] not in data):
            raise self.refuse(n, "it reads more than the one tensor of the network")
        conv_like = {"conv", "linear", "batch_norm", "batch_norm_aten"}
        if kind not in conv_like and kind != "add":
            for key, value in a.items():
                if key != "input" and isinstance(self._value(value), TensorMeta):
                    raise self.refuse(n, f"its {key} is a tensor")
        where, _ = self._place(n)
        if kind == "conv":
            weight = self._param(a["weight"], n, "weight")
            bias = self._param(a.get("bias"), n, "bias", optional=True)
            kernel = tuple(weight.shape[2:])
            stride = _pair(self._value(a.get("stride") or 1), "stride", where)
            dilation = _pair(self._value(a.get("dilation", 1)), "dilation", where)
            padding = self._value(a.get("padding", 0))
            attrs = dict(in_channels=self._shape(data[0])[0], filters=weight.shape[0], kernel=kernel, stride=stride,
                         pads=_conv_pads(padding, kernel, dilation, stride, where), dilation=dilation,
                         groups=self._value(a.get("groups", 1)), bias=bias is not None)
            self._emit(n, "conv", data, attrs)
        elif kind == "linear":
            weight = self._param(a["weight"], n, "weight")
            bias = self._param(a.get("bias"), n, "bias", optional=True)
            self._emit(n, "linear", data, dict(in_features=weight.shape[1], out_features=weight.shape[0],
                                                bias=bias is not None))
        elif kind in ("batch_norm", "batch_norm_aten"):
            weight = self._param(a.get("weight"), n, "weight", optional=True)
            bias = self._param(a.get("bias"), n, "bias", optional=True)
            if not self._value(a.get("training", False)):
                raise self.refuse(n, "batch normalization with training=False (the format's normalizes the batch)")
            running = a.get("running_mean") is not None
            self._emit(n, "batch_norm", data, dict(features=self._shape(data[0])[0], affine=weight is not None
                                                    and bias is not None, running=running,
                                                    eps=self._value(a.get("eps", 1e-5)),
                                                    momentum=self._value(a.get("momentum", 0.1))))
        elif kind == "act":
            self._emit(n, "act", data, dict(extra))
        elif kind in ("max_pool", "avg_pool"):
            if kind == "max_pool" and self._value(a.get("return_indices", False)):
                raise self.refuse(n, "max pooling that returns its indices")
            kernel = _pair(self._value(a["kernel_size"]), "kernel_size", where)
            stride = self._value(a.get("stride"))
            stride = kernel if stride in (None, (), []) else _pair(stride, "stride", where)
            ph, pw = _pair(self._value(a.get("padding", 0)), "padding", where)
            attrs = dict(kernel=kernel, stride=stride, pads=(ph, pw, ph, pw), ceil=bool(self._value(a.get("ceil_mode"))))
            if kind == "max_pool":
                attrs["dilation"] = _pair(self._value(a.get("dilation", 1)), "dilation", where)
            else:
                attrs["divisor_override"] = self._value(a.get("divisor_override"))
            self._emit(n, kind, data, attrs)
        elif kind == "adaptive_avg_pool":
            size = self._value(a["output_size"])
            if size not in (1, (1,), (1, 1), [1, 1]):
                raise self.refuse(n, f"adaptive average pooling to {size}; only to (1, 1), the global average")
            self._emit(n, "global_avg_pool", data, {})
        elif kind == "mean":
            dims = self._value(a.get("dim"))
            dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
            if sorted(d % 4 for d in dims) != [2, 3] or len(self._tensor(data[0]).shape) != 4:
                raise self.refuse(n, f"a mean over the axes {dims}; only over an image's positions (2, 3)")
            self._emit(n, "global_avg_pool", data, {})
        elif kind == "dropout":
            p = float(self._value(a.get("p", 0.5)))
            self._emit(n, "dropout", data, dict(rate=p if self._value(a.get("training", True)) else 0.0))
        elif kind in ("reshape", "identity"):
            self._emit(n, kind, data, {})
        elif kind == "add":
            if len(data) != 2 or self._value(a.get("alpha", 1)) != 1:
                raise self.refuse(n, "an addition of something else than two tensors of the network (a residual "
                                     "block's F(X) + X)")
            self._emit(n, "add", [a["input"], a["other"]], {})
        elif kind in ("pad", "constant_pad"):
            pads = self._value(a["pad"])
            mode = self._value(a.get("mode", "constant")) if kind == "pad" else "constant"
            if not isinstance(pads, (tuple, list)) or len(pads) != 4:
                raise self.refuse(n, f"padding {pads!r}; the format folds (left, right, top, bottom) into a conv")
            left, right, top, bottom = pads
            self._emit(n, "pad", data, dict(pads=(top, left, bottom, right), mode=mode,
                                            value=self._value(a.get("value"))))
        elif kind == "softmax":
            dim = self._value(a.get("dim"))
            self._emit(n, "softmax", data, dict(extra, dim=dim if dim is not None else 1))
        else:  # pragma: no cover - every kind of the tables is handled above
            raise self.refuse(n)

    def _module_types(self) -> tuple:
        nn = self.torch.nn
        return (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.MaxPool2d,
                nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Flatten, nn.ZeroPad2d, nn.ConstantPad2d,
                nn.Identity, nn.Softmax, nn.LogSoftmax)

    def _module_node(self, n) -> None:
        torch = self.torch
        nn = torch.nn
        mod = self.gm.get_submodule(n.target)
        kind = type(mod)
        data = self._data_inputs(n)
        where = str(n.target)
        if len(data) != 1 or len(n.all_input_nodes) != 1:
            raise self.refuse(n, "it reads more than the one tensor of the network")
        for name, p in mod.named_parameters():
            self._use(p, f"{n.target}.{name}", n)
        if kind is nn.Conv2d:
            kernel, stride, dilation = tuple(mod.kernel_size), tuple(mod.stride), tuple(mod.dilation)
            attrs = dict(in_channels=mod.in_channels, filters=mod.out_channels, kernel=kernel, stride=stride,
                         pads=_conv_pads(mod.padding, kernel, dilation, stride, where), dilation=dilation,
                         groups=mod.groups, bias=mod.bias is not None, padding_mode=mod.padding_mode)
            self._emit(n, "conv", data, attrs)
        elif kind is nn.Linear:
            self._emit(n, "linear", data, dict(in_features=mod.in_features, out_features=mod.out_features,
                                                bias=mod.bias is not None))
        elif kind in (nn.BatchNorm1d, nn.BatchNorm2d):
            momentum = mod.momentum
            self._emit(n, "batch_norm", data, dict(features=mod.num_features, affine=mod.affine,
                                                    running=mod.track_running_stats, eps=mod.eps,
                                                    momentum=momentum if momentum is not None else 0.1))
            if momentum is None:
                raise self.refuse(n, "batch normalization with a cumulative average (momentum=None)")
        elif kind in (nn.ReLU, nn.Tanh, nn.Sigmoid):
            self._emit(n, "act", data, dict(fn={nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}[kind]))
        elif kind in (nn.MaxPool2d, nn.AvgPool2d):
            kernel = _pair(mod.kernel_size, "kernel_size", where)
            stride = kernel if mod.stride in (None, (), []) else _pair(mod.stride, "stride", where)
            ph, pw = _pair(mod.padding, "padding", where)
            attrs = dict(kernel=kernel, stride=stride, pads=(ph, pw, ph, pw), ceil=bool(mod.ceil_mode))
            if kind is nn.MaxPool2d:
                if mod.return_indices:
                    raise self.refuse(n, "max pooling that returns its indices")
                attrs["dilation"] = _pair(mod.dilation, "dilation", where)
                self._emit(n, "max_pool", data, attrs)
            else:
                attrs["divisor_override"] = mod.divisor_override
                self._emit(n, "avg_pool", data, attrs)
        elif kind is nn.AdaptiveAvgPool2d:
            if mod.output_size not in (1, (1, 1), [1, 1], (1,)):
                raise self.refuse(n, f"adaptive average pooling to {mod.output_size}; only to (1, 1), the global "
                                     "average")
            self._emit(n, "global_avg_pool", data, {})
        elif kind is nn.Dropout:
            self._emit(n, "dropout", data, dict(rate=float(mod.p)))
        elif kind is nn.Flatten:
            self._emit(n, "reshape", data, {})
        elif kind in (nn.ZeroPad2d, nn.ConstantPad2d):
            left, right, top, bottom = mod.padding
            self._emit(n, "pad", data, dict(pads=(top, left, bottom, right), mode="constant",
                                            value=getattr(mod, "value", 0)))
        elif kind is nn.Identity:
            self._emit(n, "identity", data, {})
        elif kind in (nn.Softmax, nn.LogSoftmax):
            self._emit(n, "softmax", data, dict(log=kind is nn.LogSoftmax, dim=mod.dim if mod.dim is not None else 1))
        else:
            raise self.refuse(n)
