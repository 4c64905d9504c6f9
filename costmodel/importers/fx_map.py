"""The mapping of a traced PyTorch module's graph (costmodel.importers.torchmodule.trace) onto
costmodel.importers.graph's Nodes: the values, shapes and parameters of the nodes, and the graph
that module_graph returns; each node's kind is costmodel.importers.fx_ops'."""

from __future__ import annotations

import operator
import os
import re
import sys

from costmodel.errors import ArchError
from costmodel.importers.fx_ops import ALIASES, SIGNATURES, FxOps, function_table
from costmodel.importers.graph import Graph, Node
from costmodel.importers.torchmodule import (PROBE_BATCH, SUPPORTED, OtherValue, TensorMeta, Traced, import_torch,
                                             trace)


class _Mapper(FxOps):
    """Maps the traced graph's nodes onto costmodel.importers.graph's Nodes."""

    def __init__(self, traced: Traced, module):
        self.torch = import_torch()
        self.traced = traced
        self.gm = traced.gm
        self.module = module
        self.values = traced.values
        self.functions = function_table(self.torch)
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
        return value if isinstance(value, TensorMeta) else None

    def _shape(self, n) -> tuple[int, ...]:
        value = self._tensor(n)
        return value.shape[1:]

    def _value(self, arg):
        """An argument's probe value: a node's recorded value (its TensorMeta for a tensor)."""
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
        names = SIGNATURES[kind]
        bound = dict(zip(names, n.args))
        for key, value in n.kwargs.items():
            bound[ALIASES.get(key, key)] = value
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
            if n.op != "call_module" and not isinstance(self.values.get(n), TensorMeta):
                if isinstance(self.values.get(n), OtherValue) or (isinstance(self.values.get(n), tuple)
                                                              and any(isinstance(v, TensorMeta) for v in self.values[n])):
                    raise self.refuse(n)
                continue  # a size or shape computed from the input: no op of the step
            self._node(n)
        self._unused_parameters()
        shape = self._shape(self.input)
        return Graph(self.input.name, shape, self.output.name, self.nodes, self.traced.dtype)

    def _guard(self, n) -> bool:
        """torch.export's check of its input's shape (a call of ``_guards_fn``): no op of the step."""
        return (self.traced.tracer == "torch.export" and n.op == "call_module"
                and not isinstance(self.values.get(n), TensorMeta) and str(n.target).startswith("_guards"))

    def _constant(self, n) -> None:
        """A node that does not depend on the input: a computation on the parameters is refused
        (it would run in every step); constants and batch norm's step counter are not ops."""
        if n.op == "call_module" or isinstance(self.values.get(n), TensorMeta):
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
        return [a for a in n.all_input_nodes if a in self.derived and isinstance(self.values.get(a), TensorMeta)]

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
