"""A PyTorch module onto the architecture file's vocabulary (``costmodel import model.py:factory``).

The user's file is run (that is how a Python module is read: its code runs), the factory or class
called with no arguments, and the module traced with torch.fx (``symbolic_trace``'s tracer, with
the source line of every call recorded); when fx cannot trace it (control flow on values, ...)
torch.export does. The traced graph is run once on a probe batch of 2 instances of the given
input shape (torch.fx.Interpreter) to learn every value's shape, then mapped onto the nodes of
costmodel.importers.graph (costmodel.importers.fx_map, with each call's kind from fx_ops); anything else is refused in one line naming its module path (or call
and source line), its type and what is supported. Nothing runs but the user's file and torch.

Also refused, since the format's step would differ from the module's: a custom autograd Function
(its backward is the user's), parameters the layers do not use or share, an op on the parameters
outside the layers (weight normalization), more than one input or output.

torch is optional (``pip install 'costmodel[torch]'``): it is imported inside the functions.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path

from costmodel.errors import ArchError, UsageError

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
class TensorMeta:
    """What the probe run keeps of a tensor: its shape and dtype (not its values)."""

    shape: tuple[int, ...]
    dtype: str


def _summary(value):
    torch = sys.modules["torch"]
    if isinstance(value, torch.Tensor):
        return TensorMeta(tuple(value.shape), str(value.dtype).removeprefix("torch."))
    if isinstance(value, (int, float, bool, str, type(None))):
        return value
    if isinstance(value, (tuple, list)) and len(value) <= 16:
        return tuple(_summary(v) for v in value)
    return OtherValue(type(value).__name__)


@dataclass(frozen=True)
class OtherValue:
    type: str


@dataclass
class Traced:
    """A traced module: the fx GraphModule, how it was traced ("torch.fx" or "torch.export"),
    what the probe run gave every node (a TensorMeta, a small Python value or an OtherValue), and the
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
