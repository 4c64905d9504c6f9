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


def layer(size: int, pool: int, stride: int, kind: str, ceil: bool, channels: int = 3, batch: int = 2):
    arch = parse_arch({"name": "t", "input": {"height": size, "width": size + 1, "channels": 2}, "batch": batch,
                       "layers": [{"type": "conv", "filters": channels, "kernel": 1, "pool": pool, "pool_stride": stride,
                                   "pool_type": kind, "pool_ceil": ceil},
                                  {"type": "full", "units": 10}]})
    return arch.sizes()[0], batch


def run_kernel(op: str, sz, batch: int, avg: bool, monkeypatch) -> Recorder:
    """Run calib.windows's kernel of `op` in the buffers calib.layers.conv makes for it."""
    P, t = sz.pool, sz.pool_stride
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
        windows.avg_pool_strided(A, Znext, P, t, None)
    elif op == "pool":
        windows.pool_strided(A, Znext, pos, mask, pos_small, step, P, t)
    elif avg:
        windows.avg_pool_grad_strided(dZ, dA, spread, P, t, None)
    else:
        windows.pool_grad_strided(dZ, pos, dA, mask, spread, P, t)
    monkeypatch.undo()
    return recorder


CASES = [(size, pool, stride, kind, ceil) for size, (pool, stride), kind, ceil in itertools.product(
    (5, 8, 11), ((2, 2), (3, 2), (2, 1), (3, 3), (2, 3)), ("max", "avg"), (False, True))]


@pytest.mark.parametrize("size,pool,stride,kind,ceil", CASES)
@pytest.mark.parametrize("op", ["pool", "pool_grad"])
def test_the_counted_loops_are_the_kernels(op, size, pool, stride, kind, ceil, monkeypatch):
    sz, batch = layer(size, pool, stride, kind, ceil)
    avg = kind == "avg"
    recorded = run_kernel(op, sz, batch, avg, monkeypatch)
    loops, elements = window_loops(op, sz, batch, avg)
    # the recorder sees every ufunc call and copy but not ndarray.fill (the zeroing of a
    # buffer: one loop each, over Z^{m+1} or dA)
    fills = loops - recorded.loops
    assert 0 <= fills <= 1 + (op == "pool" and not avg), (loops, recorded.loops)
    whole = sz.d_next * batch * sz.a_conv * sz.b_conv
    assert 0 <= elements - recorded.elements <= fills * whole, (elements, recorded.elements)


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
