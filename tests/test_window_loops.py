"""The strided implementation's pooling kernels run the inner loops and touch the elements the
NumPy backend counts for them (costmodel.machine.backends.numpy.window_loops): the kernels of
calib.windows run with every ufunc call recorded, each call's inner loops counted by NumPy's
own iterator (np.nditer with external_loop: one chunk per inner loop)."""

import itertools

import numpy as np
import pytest

import calib.windows as windows
from costmodel.machine.backends.numpy import window_loops
from costmodel.model.arch import parse_arch

RECORDED = ("copyto", "greater", "maximum", "subtract", "multiply", "add", "equal")


class Recorder:
    """numpy, with the ufuncs and copyto the kernels call counted: inner loops and elements."""

    def __init__(self):
        self.loops = self.elements = 0

    def __getattr__(self, name):
        real = getattr(np, name)
        if name not in RECORDED:
            return real

        def call(*args, out=None, **kw):
            operands = [np.asarray(a) for a in args] + ([out] if out is not None else [])
            shape = np.broadcast_shapes(*(o.shape for o in operands))
            it = np.nditer(operands, flags=["external_loop", "refs_ok", "zerosize_ok"],
                           op_flags=[["readonly"]] * len(operands))
            self.loops += sum(1 for _ in it)
            self.elements += int(np.prod(shape))
            return real(*args, out=out, **kw) if out is not None else real(*args, **kw)

        return call


def layer(size: int, pool: int, stride: int, kind: str, ceil: bool, channels: int = 3, batch: int = 2,
          width: int | None = None):
    arch = parse_arch({"name": "t", "input": {"height": size, "width": width or size + 1, "channels": 2}, "batch": batch,
                       "layers": [{"type": "conv", "filters": channels, "kernel": 1, "pool": pool, "pool_stride": stride,
                                   "pool_type": kind, "pool_ceil": ceil},
                                  {"type": "full", "units": 10}]})
    return arch.sizes()[0], batch


def run_kernel(op: str, sz, batch: int, avg: bool, monkeypatch) -> Recorder:
    """Run calib.windows's kernel of `op` in the buffers calib.layers.conv makes for it (with
    1/count per window in ceil mode when the last windows cover fewer elements)."""
    P, t = sz.pool, sz.pool_stride
    inv = windows.pool_inverse_count(sz.a_conv, sz.b_conv, P, t, sz.a_next, sz.b_next, np.float32) \
        if avg and partial(sz) else None
    a_shape, next_shape = (sz.d_next, batch, sz.a_conv, sz.b_conv), (sz.d_next, batch, sz.a_next, sz.b_next)
    rng = np.random.default_rng(0)
    A = rng.standard_normal(a_shape).astype(np.float32)
    Znext, dZ, dA = np.empty(next_shape, np.float32), rng.standard_normal(next_shape).astype(np.float32), np.zeros(
        a_shape, np.float32)
    spread = np.empty(next_shape, np.float32) if t < P or avg else None
    small = np.min_scalar_type(P * P - 1)
    pos, mask = np.empty(next_shape, np.intp), np.empty(next_shape, bool)
    pos_small, step = np.empty(next_shape, small), np.empty(next_shape, small)
    windows.pool_strided(A, Znext, pos, mask, pos_small, step, P, t)  # the positions pool_grad reads
    recorder = Recorder()
    monkeypatch.setattr(windows, "np", recorder)
    if op == "pool" and avg:
        windows.avg_pool_strided(A, Znext, P, t, inv)
    elif op == "pool":
        windows.pool_strided(A, Znext, pos, mask, pos_small, step, P, t)
    elif avg:
        windows.avg_pool_grad_strided(dZ, dA, spread, P, t, inv)
    else:
        windows.pool_grad_strided(dZ, pos, dA, mask, spread, P, t)
    monkeypatch.undo()
    return recorder


def partial(sz) -> bool:
    """Ceil mode's last windows cover fewer elements (costmodel.model.step.op_spec)."""
    return sz.pool_ceil and ((sz.a_next - 1) * sz.pool_stride + sz.pool > sz.a_conv
                             or (sz.b_next - 1) * sz.pool_stride + sz.pool > sz.b_conv)


#: inputs (height, width) with many windows, with one column or row of them (c = 1 at some
#: offsets), and a 1 x 1 output (VGG's last pooling); windows 2-3 with strides 1-3
CASES = [(size, width, pool, stride, kind, ceil) for (size, width), (pool, stride), kind, ceil in itertools.product(
    ((5, 6), (8, 9), (11, 12), (3, 3), (2, 2), (9, 3), (4, 2)), ((2, 2), (3, 2), (2, 1), (3, 3), (2, 3)),
    ("max", "avg"), (False, True)) if pool <= min(size, width)]


@pytest.mark.parametrize("size,width,pool,stride,kind,ceil", CASES)
@pytest.mark.parametrize("op", ["pool", "pool_grad"])
def test_the_counted_loops_are_the_kernels(op, size, width, pool, stride, kind, ceil, monkeypatch):
    sz, batch = layer(size, pool, stride, kind, ceil, width=width)
    avg = kind == "avg"
    recorded = run_kernel(op, sz, batch, avg, monkeypatch)
    assert window_loops(op, sz, batch, avg, partial(sz)) == (recorded.loops, recorded.elements)


def test_inner_loops_are_numpys_own():
    """costmodel's count of one call's inner loops is np.nditer's, on views of every kind."""
    from costmodel.machine.backends.numpy import inner_loops

    X = np.zeros((3, 4, 7, 9), np.float32)
    w = X.itemsize
    for view in (X, X[:, :, ::2, ::2], X[:, :, :3, :], X[:, :, :, :1], X[:, :, 1:2, ::3], X[:, :1], X[:, :, :0]):
        chunks = sum(1 for _ in np.nditer([view], flags=["external_loop", "zerosize_ok"])) if view.size else 0
        assert inner_loops(view.shape, tuple(s // w for s in view.strides)) == chunks, view.strides


def test_small_inputs_with_many_channels_run_more_loops_per_byte():
    """What the loops are for: at the same bytes, a pooling of small inputs over many
    channels and instances runs several times the inner loops of one of large inputs."""
    small, i_small = layer(10, 3, 2, "max", True, channels=40, batch=512)
    large, i_large = layer(53, 3, 2, "max", True, channels=52, batch=15)
    per_byte = [window_loops("pool_grad", sz, i, False)[0] / (sz.d_next * i * sz.a_conv * sz.b_conv)
                for sz, i in ((small, i_small), (large, i_large))]
    assert per_byte[0] > 3 * per_byte[1]


def test_the_threaded_poolings_of_the_strided_implementation_are_fitted_on_the_loops():
    from costmodel.machine.backends import backend
    from costmodel.machine.backends.base import ModelKey
    from costmodel.machine.backends.numpy import WINDOW_FEATURES
    from costmodel.machine.timemodel import FEATURES

    be = backend("numpy")
    assert be.features(ModelKey(("pool_grad",), ("overlap", "threaded")), "strided") == WINDOW_FEATURES
    assert be.features(ModelKey(("pool",), ("threaded",)), "strided") == WINDOW_FEATURES
    for key, impl in ((ModelKey(("pool_grad",), ("overlap",)), "strided"), (ModelKey(("pool",)), "index"),
                      (ModelKey(("conv_matmul",), ("threaded",)), "strided")):
        assert be.features(key, impl) == FEATURES
