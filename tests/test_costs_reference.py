"""The symbolic shapes, bytes and memory kept against the arrays the reference CNN really
reads and writes (its trace hook reports them per op, docs/ops.md): every example, random
networks of the course's layers and of the extended vocabulary, both implementations."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costmodel.model.arch import load_arch, parse_arch
from costmodel.model.costs import IMPLS
from costmodel.model.step import step_costs

from tests.conftest import EXAMPLES
from tests.test_cnn_vocab import VOCAB_ARCHS, vocab_arch
from tests.test_cnn_vocab import vocab_architectures as _vocab_architectures

cnn_module = pytest.importorskip("calib.cnn", reason="calib/cnn.py (the reference CNN) is not there yet")

BATCH = 2


def _traced_step(arch, impl):
    """One step of the reference CNN; [(key, reads, writes)] as its trace hook reports them."""
    cnn = cnn_module.ReferenceCNN(arch, impl, seed=0)
    record = []
    cnn.trace = lambda key, reads, writes: record.append((key, list(reads), list(writes)))
    first, I = arch.sizes()[0], arch.batch
    rng = np.random.default_rng(0)
    shape = (first.d, I, first.a, first.b) if first.kind == "conv" else (first.n_in, I)
    X = rng.standard_normal(shape).astype(arch.dtype)
    Y = np.eye(arch.n_classes, I, dtype=arch.dtype)
    cnn.step(X, Y)
    return record


def _shape_and_kind(x):
    x = np.asarray(x)
    return tuple(x.shape), {np.dtype(np.intp): "index", np.dtype(bool): "bool"}.get(x.dtype, "float")


def _check_against_reference(arch, impl):
    costs, record = step_costs(arch, impl), _traced_step(arch, impl)
    assert [ref.key for ref in costs.ops] == [key for key, _, _ in record]
    for i, (key, reads, writes) in enumerate(record):
        cost = costs.cost(i)  # the op's arrays with integer shapes
        assert [(tuple(x.shape), x.kind) for x in cost.reads] == [_shape_and_kind(x) for x in reads], key
        assert [(tuple(x.shape), x.kind) for x in cost.writes] == [_shape_and_kind(x) for x in writes], key
        assert all(np.asarray(x).dtype in (np.intp, np.dtype(bool), np.dtype(arch.dtype)) for x in reads + writes)
        assert costs.bytes_read[i] == sum(np.asarray(x).nbytes for x in reads), key
        assert costs.bytes_written[i] == sum(np.asarray(x).nbytes for x in writes), key
    _check_memory_kept(costs, record)


def _check_memory_kept(costs, record):
    """What the step holds between forward and backward: the distinct arrays forward ops
    write that backward ops read (compared by memory, so views and in-place updates count
    once) weigh exactly the model's memory kept, summed over the step."""
    written = [x for key, _, writes in record if key.phase == "forward"
               for x in writes if isinstance(x, np.ndarray) and x.ndim > 0]
    read = [x for key, reads, _ in record if key.phase == "backward" for x in reads]
    held = []
    for y in sorted(written, key=lambda y: -y.nbytes):
        if any(np.shares_memory(x, y) for x in read) and not any(np.shares_memory(y, z) for z in held):
            held.append(y)
    assert int(costs.memory_kept.sum()) == sum(y.nbytes for y in held)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("impl", IMPLS)
def test_shapes_bytes_and_memory_kept_equal_the_reference_cnn(path, impl):
    _check_against_reference(load_arch(path).with_batch(BATCH), impl)


@st.composite
def architectures(draw):
    """Small valid architectures: conv layers (any padding, stride, pooling), then full ones."""
    height, width = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    a, b = height, width
    layers = []
    for _ in range(draw(st.integers(0, 3))):
        p = draw(st.integers(0, 2))
        h = draw(st.integers(1, min(a, b) + 2 * p))
        s = draw(st.integers(1, 3))
        a_conv, b_conv = (a + 2 * p - h) // s + 1, (b + 2 * p - h) // s + 1
        pool = draw(st.integers(1, min(3, a_conv, b_conv)))
        layers.append({"type": "conv", "filters": draw(st.integers(1, 4)), "kernel": h,
                       "padding": p, "stride": s, "pool": pool,
                       "activation": draw(st.sampled_from(["relu", "none"]))})
        a, b = a_conv // pool, b_conv // pool
    for _ in range(draw(st.integers(1, 3))):
        layers.append({"type": "full", "units": draw(st.integers(1, 5)),
                       "activation": draw(st.sampled_from(["relu", "none"]))})
    return parse_arch({
        "name": "random", "input": {"height": height, "width": width,
                                    "channels": draw(st.integers(1, 3))},
        "batch": draw(st.integers(1, 3)), "dtype": draw(st.sampled_from(["float32", "float64"])),
        "loss": draw(st.sampled_from(["mse", "softmax_ce"])), "layers": layers})


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=architectures(), impl=st.sampled_from(IMPLS))
def test_shapes_bytes_and_memory_kept_of_random_architectures(arch, impl):
    _check_against_reference(arch, impl)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=_vocab_architectures(dtype="float32"), dtype=st.sampled_from(["float32", "float64"]),
       impl=st.sampled_from(IMPLS))
def test_shapes_bytes_and_memory_kept_of_random_networks_of_the_extended_vocabulary(arch, dtype, impl):
    """Random networks of the extended vocabulary (tests/test_cnn_vocab.py's strategy: `same`
    padding, groups, average/overlapping/ceil pooling, tanh/sigmoid, batch norm, dropout,
    residual blocks with identity and projection shortcuts, global average pooling)."""
    _check_against_reference(arch.with_dtype(dtype), impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(VOCAB_ARCHS))
def test_shapes_bytes_and_memory_kept_of_the_extended_vocabulary(name, impl):
    for loss in ("mse", "softmax_ce"):
        _check_against_reference(vocab_arch(name, loss, batch=2), impl)
