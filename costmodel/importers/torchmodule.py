"""A PyTorch module onto the architecture file's vocabulary (``costmodel import model.py:factory``).

The user's file is run (that is how a Python module is read: its code runs), the factory or class
called with no arguments, and the module traced with torch.fx (``symbolic_trace``'s tracer, with
the source line of every call recorded); when fx cannot trace it (control flow on values, ...)
torch.export does. The traced graph is run once on a probe batch of 2 instances of the given
input shape (torch.fx.Interpreter) to learn every value's shape, then mapped onto the nodes of
costmodel.importers.graph; anything else is refused in one line naming its module path (or call
and source line), its type and what is supported. Nothing runs but the user's file and torch.

Also refused, since the format's step would differ from the module's: a custom autograd Function
(its backward is the user's), parameters the layers do not use or share, an op on the parameters
outside the layers (weight normalization), more than one input or output.

torch is optional (``pip install 'costmodel[torch]'``): it is imported inside the functions.
"""

from __future__ import annotations

import operator
import os
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

from costmodel.errors import ArchError, UsageError
from costmodel.importers.graph import Graph, Node

INSTALL_HINT = "importing a PyTorch module needs PyTorch: pip install 'costmodel[torch]'"
#: the largest model file read (a model file is code, not weights)
MAX_SOURCE_BYTES = 8 << 20
#: instances in the probe batch that learns the shapes (2: batch normalization of a full layer needs more than 1)
PROBE_BATCH = 2
SUPPORTED = ("supported: Conv2d, Linear, BatchNorm1d/2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d((1, 1)), ReLU, "
             "Tanh, Sigmoid, Dropout, Flatten, ZeroPad2d, Identity, Softmax/LogSoftmax at the end, their functional "
             "forms (F.conv2d, F.relu, torch.tanh, x.relu(), ...), view/reshape/flatten/squeeze, mean over the "
             "positions, and a residual block's addition (+, torch.add)")


def import_torch():
    """torch, or a one-line UsageError naming the extra to install."""
    try:
        import torch
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return torch


# -- the user's file ------------------------------------------------------------------------

def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    return f"{type(exc).__name__}: {msg[:200]}" if msg else type(exc).__name__


def load_module(spec: str):
    """The torch.nn.Module that ``FILE.py:NAME`` makes: FILE.py is run as a module (its folder
    first on sys.path while it runs), NAME (a class or a function) called with no arguments.
    Returns (module, path, name). UsageError naming the file for a missing file, a file that
    raises (or exits), a missing NAME, a call that raises, a result that is not a Module."""
    torch = import_torch()
    from costmodel.files import read_regular

    path_text, sep, attr = spec.rpartition(":")
    if not sep or not path_text or not attr:
        raise UsageError(f"{spec}: give FILE.py:NAME, NAME a function or class that makes the module with no "
                         "arguments (or an .onnx file)")
    if not attr.isidentifier():
        raise UsageError(f"{spec}: {attr[:80]!r} is not a Python name")
    path = Path(path_text)
    source = read_regular(path, limit=MAX_SOURCE_BYTES, what="Python model file", error=UsageError)
    try:
        text = source.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text: not a Python file") from None
    module_name = f"_costmodel_user_model_{abs(hash(str(path.resolve())))}"
    user = types.ModuleType(module_name)
    user.__file__ = str(path)
    folder = str(path.resolve().parent)
    sys.modules[module_name] = user  # dataclasses and pickling look the module up
    sys.path.insert(0, folder)  # the file's own imports of its neighbours, while it runs and makes the module
    try:
        return _make(user, text, path, spec, attr, torch), path, attr
    finally:
        if folder in sys.path:
            sys.path.remove(folder)


def _make(user, text: str, path: Path, spec: str, attr: str, torch):
    try:
        code = compile(text, str(path), "exec")
        exec(code, user.__dict__)  # noqa: S102 - running the user's own model file is the point
    except (Exception, SystemExit) as exc:
        raise UsageError(f"{path}: running the file raised {_first_line(exc)}") from None
    if not hasattr(user, attr):
        names = [n for n, v in vars(user).items() if not n.startswith("_") and callable(v)
                 and getattr(v, "__module__", None) == user.__name__]
        raise UsageError(f"{path}: no {attr!r} in the file" + (f" (it defines {', '.join(names[:10])})" if names else ""))
    maker = getattr(user, attr)
    if not callable(maker):
        raise UsageError(f"{spec}: a {type(maker).__name__}, not a function or class that makes the module")
    try:
        module = maker()
    except (Exception, SystemExit) as exc:
        raise UsageError(f"{spec}: calling it with no arguments raised {_first_line(exc)}") from None
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"{spec}: returned a {type(module).__name__}, not a torch.nn.Module")
    return module


# -- tracing --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Tensor:
    """What the probe run keeps of a tensor: its shape and dtype (not its values)."""

    shape: tuple[int, ...]
    dtype: str


def _summary(value):
    torch = sys.modules["torch"]
    if isinstance(value, torch.Tensor):
        return _Tensor(tuple(value.shape), str(value.dtype).removeprefix("torch."))
    if isinstance(value, (int, float, bool, str, type(None))):
        return value
    if isinstance(value, (tuple, list)) and len(value) <= 16:
        return tuple(_summary(v) for v in value)
    return _Other(type(value).__name__)


@dataclass(frozen=True)
class _Other:
    type: str


@dataclass
class Traced:
    """A traced module: the fx GraphModule, how it was traced ("torch.fx" or "torch.export"),
    what the probe run gave every node (a _Tensor, a small Python value or an _Other), and the
    module's dtype."""

    gm: object
    tracer: str
    values: dict
    dtype: str


def trace(module, input_shape: tuple[int, ...]) -> Traced:
    """Run `module` once on a probe batch (checking its output and its autograd graph), trace it
    (torch.fx, else torch.export) and learn every node's value on the probe. The probe runs on
    one thread (a tiny batch; several threads only wait for each other on a busy machine)."""
    torch = import_torch()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _trace(module, input_shape)
    finally:
        torch.set_num_threads(threads)


def _trace(module, input_shape: tuple[int, ...]) -> Traced:
    torch = import_torch()
    import torch.fx as fx

    params = list(module.parameters())
    if not params:
        raise UsageError(f"{type(module).__name__}: a module without parameters; the format's network has weights")
    dtypes = {p.dtype for p in params}
    if dtypes - {torch.float32, torch.float64} or len(dtypes) > 1:
        raise UsageError(f"{type(module).__name__}: parameters of {', '.join(sorted(map(str, dtypes)))}; the format "
                         "has float32 or float64 networks")
    dtype = params[0].dtype
    probe = torch.randn((PROBE_BATCH, *input_shape), generator=torch.Generator().manual_seed(0), dtype=dtype)
    module.train()
    described = "x".join(map(str, input_shape))
    try:
        with torch.enable_grad():
            out = module(probe)
    except Exception as exc:
        raise UsageError(f"{type(module).__name__}: its forward on a {PROBE_BATCH}x{described} input raised "
                         f"{_first_line(exc)} (is --input {described} the input it takes?)") from None
    if not isinstance(out, torch.Tensor):
        raise ArchError(f"{type(module).__name__}: its forward returns a {type(out).__name__}; the format's network "
                        "has one output tensor")
    _custom_functions(out)
    try:
        tracer = fx.Tracer()
        tracer.record_stack_traces = True
        graph = tracer.trace(module)
        gm, how = fx.GraphModule(tracer.root, graph), "torch.fx"
    except Exception as fx_exc:
        import contextlib
        import io
        import logging
        import warnings

        try:
            logging.disable(logging.CRITICAL)  # torch.export logs the graph it fails on
            with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                gm, how = torch.export.export(module, (probe,), strict=False).module(), "torch.export"
        except Exception:
            raise UsageError(f"{type(module).__name__}: torch.fx cannot trace it ({_first_line(fx_exc)}), and "
                             "torch.export neither") from None
        finally:
            logging.disable(logging.NOTSET)
    values: dict = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            result = super().run_node(n)
            values[n] = _summary(result)
            return result

    try:
        with torch.no_grad():
            Recorder(gm).run(probe)
    except Exception as exc:
        raise UsageError(f"{type(module).__name__}: the traced graph ({how}) does not run on the probe: "
                         f"{_first_line(exc)}") from None
    return Traced(gm, how, values, str(dtype).removeprefix("torch."))


def _custom_functions(out) -> None:
    """Refuse a custom autograd Function in the module's autograd graph (its backward is the
    user's code, which the format cannot describe)."""
    torch = sys.modules["torch"]
    seen, stack = set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        if isinstance(fn, torch.autograd.function.BackwardCFunction):
            name = type(fn).__name__.removesuffix("Backward")
            raise ArchError(f"{name} (custom autograd Function): not supported; its backward is its own code, which "
                            f"the format cannot describe ({SUPPORTED})")
        stack.extend(f for f, _ in fn.next_functions)


# -- mapping fx nodes -------------------------------------------------------------------------

#: canonical kinds: the argument names of the call, in order
_SIGNATURES = {
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
_DEFAULTS = {"bias": None, "stride": None, "padding": 0, "dilation": 1, "groups": 1, "ceil_mode": False,
             "return_indices": False, "count_include_pad": True, "divisor_override": None, "p": 0.5,
             "training": True, "alpha": 1, "mode": "constant", "value": None, "dim": None, "keepdim": False,
             "momentum": 0.1, "eps": 1e-5}
_ALIASES = {"self": "input", "train": "training", "kernel": "kernel_size"}


def _function_table(torch) -> dict:
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


_METHODS = {"relu": ("act", {"fn": "relu"}), "relu_": ("act", {"fn": "relu"}), "tanh": ("act", {"fn": "tanh"}),
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


class _Mapper:
    """Maps the traced graph's nodes onto costmodel.importers.graph's Nodes."""

    def __init__(self, traced: Traced, module):
        self.torch = import_torch()
        self.traced = traced
        self.gm = traced.gm
        self.module = module
        self.values = traced.values
        self.functions = _function_table(self.torch)
        self.derived: set = set()
        self.nodes: list[Node] = []
        self.used: dict[int, str] = {}  # id of a parameter -> where it is used
        self.input = None
        self.output = None
        self.torch_dir = os.path.dirname(self.torch.__file__)

    # -- names for messages
    def _place(self, n) -> tuple[str, str]:
        """(where, what) of an fx node: a module path and its class, or a call and its line."""
        stack = n.meta.get("nn_module_stack") or {}
        if n.op == "call_module":
            mod = self.gm.get_submodule(n.target)
            return str(n.target), type(mod).__name__
        what = self._callable_name(n)
        if stack:
            path, cls = list(stack.values())[-1]
            if path and self.traced.tracer == "torch.export" and cls.rsplit(".", 1)[-1] not in ("Sequential",):
                return path, cls.rsplit(".", 1)[-1] + f": {what}"
        line = self._source_line(n)
        return (f"{n.name} at {line}" if line else n.name), what

    def _source_line(self, n) -> str | None:
        trace = n.stack_trace or n.meta.get("stack_trace") or ""
        frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
        user = [(f, line) for f, line in frames if not f.startswith(self.torch_dir)]
        if not user:
            return None
        f, line = user[0] if self.traced.tracer == "torch.fx" else user[-1]
        return f"{os.path.basename(f)}:{line}"

    def _callable_name(self, n) -> str:
        target = n.target
        if n.op == "call_method":
            return f"Tensor.{target}"
        if target in (operator.add, operator.iadd):
            return "+"
        if isinstance(target, self.torch._ops.OpOverload):
            return str(target)
        module = getattr(target, "__module__", None) or ""
        module = {"torch._C._nn": "torch.nn.functional", "torch._C._VariableFunctions": "torch"}.get(module, module)
        return f"{module}.{getattr(target, '__name__', target)}".lstrip(".")

    def refuse(self, n, why: str = "not supported") -> ArchError:
        where, what = self._place(n)
        return ArchError(f"{where} ({what}): {why} ({SUPPORTED})")

    # -- values
    def _tensor(self, n):
        value = self.values.get(n)
        return value if isinstance(value, _Tensor) else None

    def _shape(self, n) -> tuple[int, ...]:
        value = self._tensor(n)
        return value.shape[1:]

    def _value(self, arg):
        """An argument's probe value: a node's recorded value (its _Tensor for a tensor)."""
        fx = sys.modules["torch.fx"]
        if isinstance(arg, fx.Node):
            return self.values.get(arg)
        if isinstance(arg, (tuple, list)):
            return tuple(self._value(a) for a in arg)
        return arg

    def _param(self, arg, n, what: str, optional: bool = False):
        """The parameter an argument names (a get_attr node), marked used; None for None."""
        fx = sys.modules["torch.fx"]
        if arg is None and optional:
            return None
        if not isinstance(arg, fx.Node) or arg.op != "get_attr":
            raise self.refuse(n, f"its {what} is not a parameter of the module")
        try:
            tensor = self.gm.get_parameter(arg.target)
        except AttributeError:
            raise self.refuse(n, f"its {what} {arg.target} is a buffer, not a parameter") from None
        self._use(tensor, arg.target, n)
        return tensor

    def _use(self, tensor, name: str, n) -> None:
        if id(tensor) in self.used:
            where, what = self._place(n)
            raise ArchError(f"{where} ({what}): the parameter {name} is used again (first by {self.used[id(tensor)]}); "
                            "the format's layers have their own weights")
        where, what = self._place(n)
        self.used[id(tensor)] = f"{where} ({what})"

    def _bind(self, kind: str, n) -> dict:
        names = _SIGNATURES[kind]
        bound = dict(zip(names, n.args))
        for key, value in n.kwargs.items():
            bound[_ALIASES.get(key, key)] = value
        return bound

    # -- the graph
    def run(self) -> Graph:
        fx = sys.modules["torch.fx"]
        for n in self.gm.graph.nodes:  # an unsupported layer first: it is what a reader looks for
            if self._guard(n):
                continue
            if n.op == "call_module" and type(self.gm.get_submodule(n.target)) not in self._module_types():
                raise self.refuse(n)
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                if self.input is not None:
                    raise ArchError(f"{type(self.module).__name__}: its forward takes more than one input ({n.name}); "
                                    "the format's network reads one")
                self.input = n
                self.derived.add(n)
                continue
            if n.op == "output":
                result = n.args[0]
                if isinstance(result, (tuple, list)) and len(result) == 1:
                    result = result[0]
                if not isinstance(result, fx.Node) or result not in self.derived:
                    raise ArchError(f"{type(self.module).__name__}: its forward returns {type(result).__name__}; the "
                                    "format's network has one output computed from its input")
                self.output = result
                continue
            if n.op == "get_attr" or self._guard(n):
                continue
            derived = any(a in self.derived for a in n.all_input_nodes)
            if not derived:
                self._constant(n)
                continue
            self.derived.add(n)
            if n.op != "call_module" and not isinstance(self.values.get(n), _Tensor):
                if isinstance(self.values.get(n), _Other) or (isinstance(self.values.get(n), tuple)
                                                              and any(isinstance(v, _Tensor) for v in self.values[n])):
                    raise self.refuse(n)
                continue  # a size or shape computed from the input: no op of the step
            self._node(n)
        self._unused_parameters()
        shape = self._shape(self.input)
        return Graph(self.input.name, shape, self.output.name, self.nodes, self.traced.dtype)

    def _guard(self, n) -> bool:
        """torch.export's check of its input's shape (a call of ``_guards_fn``): no op of the step."""
        return (self.traced.tracer == "torch.export" and n.op == "call_module"
                and not isinstance(self.values.get(n), _Tensor) and str(n.target).startswith("_guards"))

    def _constant(self, n) -> None:
        """A node that does not depend on the input: a computation on the parameters is refused
        (it would run in every step); constants and batch norm's step counter are not ops."""
        if n.op == "call_module" or isinstance(self.values.get(n), _Tensor):
            is_counter = (n.target in (self.torch.ops.aten.add_.Tensor,) and n.args
                          and getattr(n.args[0], "op", None) == "get_attr"
                          and str(n.args[0].target).endswith("num_batches_tracked"))
            if not is_counter:
                raise self.refuse(n, "an op on the parameters or constants, outside the network's layers "
                                     "(the format's layers use their weights as they are)")

    def _emit(self, n, op: str, inputs, attrs: dict) -> None:
        where, what = self._place(n)
        value = self._tensor(n)
        if value is None:
            raise self.refuse(n, "its result is not a tensor")
        if value.shape[:1] != (PROBE_BATCH,):
            raise ArchError(f"{where} ({what}): gives {'x'.join(map(str, value.shape))} from a batch of "
                            f"{PROBE_BATCH}: it mixes the instances of the batch")
        data = tuple(a.name for a in inputs)
        self.nodes.append(Node(where, what, op, data, n.name, value.shape[1:], attrs))

    def _data_inputs(self, n) -> list:
        return [a for a in n.all_input_nodes if a in self.derived and isinstance(self.values.get(a), _Tensor)]

    def _node(self, n) -> None:
        if n.op == "call_module":
            self._module_node(n)
            return
        if n.op == "call_method":
            kind, extra = _METHODS.get(n.target, (None, {}))
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
                if key != "input" and isinstance(self._value(value), _Tensor):
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

    def _unused_parameters(self) -> None:
        for name, p in self.module.named_parameters():
            if id(p) not in self.used:
                # the traced GraphModule may hold its own copies (torch.export): match by name
                try:
                    mine = self.gm.get_parameter(name)
                except AttributeError:
                    mine = None
                if mine is None or id(mine) not in self.used:
                    raise ArchError(f"{type(self.module).__name__}: the parameter {name} ({'x'.join(map(str, p.shape))}) "
                                    "is used by no layer of the forward; the format counts and updates only the "
                                    "layers' weights")


def module_graph(module, input_shape: tuple[int, ...]) -> tuple[Graph, str]:
    """The graph of `module` on inputs of `input_shape` (without the batch: (C, H, W) or (n,)),
    and how it was traced ("torch.fx" or "torch.export")."""
    traced = trace(module, input_shape)
    return _Mapper(traced, module).run(), traced.tracer
