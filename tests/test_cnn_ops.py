"""The ops the reference CNN runs, named by its own timers and trace hook as they run, are
exactly costmodel.model.ops.op_list, and every op reports the arrays of docs/ops.md."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calib.cnn import IMPLS, ReferenceCNN
from calib.timer import OpTimer
from costmodel.model.arch import Architecture
from costmodel.model.ops import op_keys, op_list
from tests.conftest import COURSE_EXAMPLES, STEP_EXAMPLES
from tests.test_cnn import EXAMPLES, build_valid, example, random_batch


def ran_ops(arch: Architecture, impl: str) -> tuple[list, list]:
    """(timer keys, trace keys) of one step, in the order the ops ran."""
    cnn = ReferenceCNN(arch, impl=impl)
    traced = []
    cnn.trace = lambda key, reads, writes: traced.append(key)
    timer = OpTimer()
    X, Y, _ = random_batch(arch, np.random.default_rng(0))
    cnn.step(X, Y, timer)
    return timer.keys(), traced


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("path", STEP_EXAMPLES, ids=lambda p: p.stem)
def test_example_ops_are_the_contract(path, impl):
    arch = example(path, batch=2)
    timed, traced = ran_ops(arch, impl)
    assert timed == op_keys(arch)
    assert traced == op_keys(arch)


@st.composite
def architectures(draw) -> Architecture:
    """Valid random architectures: each drawn layer is kept only if the network still parses."""
    data = {"name": "hypothesis", "batch": draw(st.integers(1, 3)),
            "dtype": draw(st.sampled_from(["float32", "float64"])),
            "loss": draw(st.sampled_from(["mse", "softmax_ce"])),
            "input": {"height": draw(st.integers(1, 10)), "width": draw(st.integers(1, 10)),
                      "channels": draw(st.integers(1, 3))}}
    output = {"type": "full", "units": draw(st.integers(1, 4))}
    conv = st.fixed_dictionaries({
        "type": st.just("conv"), "filters": st.integers(1, 3), "kernel": st.integers(1, 4),
        "padding": st.integers(0, 2), "stride": st.integers(1, 3), "pool": st.integers(1, 3),
        "activation": st.sampled_from(["relu", "none"])})
    full = st.fixed_dictionaries({"type": st.just("full"), "units": st.integers(1, 5),
                                  "activation": st.sampled_from(["relu", "none"])})
    return build_valid(data, draw(st.lists(conv, max_size=3)) + draw(st.lists(full, max_size=2)), output)


@settings(max_examples=60, deadline=None)
@given(arch=architectures(), impl=st.sampled_from(IMPLS))
def test_random_arch_ops_are_the_contract(arch, impl):
    timed, traced = ran_ops(arch, impl)
    assert timed == op_keys(arch)
    assert traced == op_keys(arch)


# -- the arrays of docs/ops.md ---------------------------------------------------------------

def expected_arrays(ref, arch: Architecture, impl: str) -> tuple[list, list]:
    """(reads, writes) of an op as (shape, dtype) pairs, transcribed from docs/ops.md."""
    I, f, ip = arch.batch, np.dtype(arch.dtype), np.dtype(np.intp)
    op, sz = ref.op, ref.sizes
    index = impl == "index"
    if ref.layer_type == "loss":
        n = arch.n_classes
        value = [((), f)]
        if op == "loss":
            return [((n, I), f)] * 2, ([((n, I), f)] if arch.loss == "softmax_ce" else []) + value
        return [((n, I), f)] * 2, [((n, I), f)]
    W, b = ((sz.d_next, sz.h * sz.h * sz.d) if sz.kind == "conv" else (sz.n_out, sz.n_in)), (sz.d_next,)
    if op == "update":
        # dW, W, v and the two scaled terms (lr/I) dW, (lr/C) W read back; W, v and the scaled terms written
        return [(W, f)] * 5 + [(b, f)] * 5, [(W, f)] * 4 + [(b, f)] * 4
    if sz.kind == "full":
        Z, S, X = (sz.d, I, sz.a, sz.b), (sz.n_out, I), (sz.n_in, I)
        return {
            "flatten": ([(Z, f)], [(X, f)]),
            "full_matmul": ([(W, f), (X, f)], [(S, f)]),
            "bias": ([(S, f), (b, f)], [(S, f)]),
            "activation": ([(S, f)], [(S, f)]),
            "activation_grad": ([(S, f)] * 2, [(S, f)]),
            "full_grad_W": ([(S, f), (X, f)], [(W, f)]),
            "bias_grad": ([(S, f)], [(b, f)]),
            "full_grad_input": ([(W, f), (S, f)], [(X, f)]),
            "flatten_grad": ([(X, f)], [(Z, f)]),
        }[op]
    K, N = sz.h * sz.h * sz.d, I * sz.a_conv * sz.b_conv
    Z, S, phi = (sz.d, I, sz.a, sz.b), (sz.d_next, N), (K, N)
    Zpad = (sz.d, I, sz.a_pad, sz.b_pad)
    src = Zpad if sz.p > 0 else Z
    A, pooled = (sz.d_next, I, sz.a_conv, sz.b_conv), (sz.d_next, I, sz.a_next, sz.b_next)
    idx_phi = [(phi, ip)] if index else []
    idx_pool = [((sz.pool ** 2, sz.d_next * I * sz.a_next * sz.b_next), ip)] if index else []
    return {
        "pad": ([(Z, f)], [(Zpad if index else Z, f)]),
        "phi": ([(src, f)] + idx_phi, [(phi, f)]),
        "conv_matmul": ([(W, f), (phi, f)], [(S, f)]),
        "bias": ([(S, f), (b, f)], [(S, f)]),
        "activation": ([(S, f)], [(S, f)]),
        "pool": ([(A, f)] + idx_pool, [(pooled, f), (pooled, ip)]),
        "pool_grad": ([(pooled, f), (pooled, ip)], [(A, f)]),
        "activation_grad": ([(S, f)] * 2, [(S, f)]),
        "conv_grad_W": ([(S, f), (phi, f)], [(W, f)]),
        "bias_grad": ([(S, f)], [(b, f)]),
        "conv_grad_input": ([(W, f), (S, f)], [(phi, f)]),
        "phi_grad": ([(phi, f)] + idx_phi, [(src, f)]),
        "pad_grad": ([(Z, f)], [(Z, f)]),
    }[op]


def _shapes(arrays: list) -> list:
    return [(a.shape, a.dtype) for a in arrays]


def check_trace(arch: Architecture, impl: str) -> None:
    cnn = ReferenceCNN(arch, impl=impl)
    calls = []
    cnn.trace = lambda key, reads, writes: calls.append((key, _shapes(reads), _shapes(writes)))
    X, Y, _ = random_batch(arch, np.random.default_rng(0))
    cnn.step(X, Y)
    refs = op_list(arch)
    assert [key for key, _, _ in calls] == [ref.key for ref in refs]
    for ref, (key, reads, writes) in zip(refs, calls):
        assert (reads, writes) == expected_arrays(ref, arch, impl), key


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("path", COURSE_EXAMPLES, ids=lambda p: p.stem)
def test_example_trace_reports_the_documented_arrays(path, impl):
    """The course's ops (the extended vocabulary's: tests/test_cnn_vocab.py's expected_arrays)."""
    check_trace(example(path, batch=3), impl)


@settings(max_examples=40, deadline=None)
@given(arch=architectures(), impl=st.sampled_from(IMPLS))
def test_random_arch_trace_reports_the_documented_arrays(arch, impl):
    check_trace(arch, impl)


def test_trace_views_and_buffers():
    """pad (strided) writes the interior of its padded buffer, pad_grad reads the interior of
    dZpad: views, as docs/ops.md says; the update writes the network's own parameters."""
    arch = example(EXAMPLES[0], batch=2)
    cnn = ReferenceCNN(arch, impl="strided")
    seen = {}
    cnn.trace = lambda key, reads, writes: seen.setdefault(key.op, (reads, writes))
    X, Y, _ = random_batch(arch, np.random.default_rng(0))
    cnn.step(X, Y)
    assert seen["pad"][1][0].base is not None and not seen["pad"][1][0].flags.c_contiguous
    assert not seen["pad_grad"][0][0].flags.c_contiguous
    assert seen["update"][1][0] is cnn.W[0] and seen["update"][1][4] is cnn.b[0]
    # the strided update's scaled terms go to one preallocated buffer per shape, read back
    scaled = seen["update"][1][2:4]
    assert scaled[0] is scaled[1] and scaled[0] is cnn.layers[0]._update_buffers[cnn.W[0].shape]
