"""The reference CNN computes the right gradients: against central finite differences, against
PyTorch autograd on the same weights, and the index and strided implementations agree.

The helpers at the top (random architectures, data, PyTorch's gradients) are shared by the
other tests/test_cnn_*.py files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import costmodel.machine.backends.numpy
from calib.cnn import IMPLS, ReferenceCNN, one_hot, to_layout
from costmodel.model.arch import Architecture, load_arch, parse_arch
from costmodel.errors import ArchError

from tests.conftest import COURSE_EXAMPLES, EXAMPLES, STEP_EXAMPLES
LOSSES = ("mse", "softmax_ce")


# -- helpers ---------------------------------------------------------------------------------

def example(path: Path, batch: int, dtype: str | None = None) -> Architecture:
    return load_arch(path).with_batch(batch).with_dtype(dtype)


def random_arch(rng: np.random.Generator, *, batch: int = 2, dtype: str = "float64",
                max_conv: int = 3) -> Architecture:
    """A small random architecture: layer parameters are drawn one layer at a time and a
    layer is kept only if the network still parses with it."""
    data = {
        "name": "random",
        "input": {"height": int(rng.integers(3, 12)), "width": int(rng.integers(3, 12)),
                  "channels": int(rng.integers(1, 4))},
        "batch": batch, "dtype": dtype, "loss": str(rng.choice(LOSSES)),
    }
    output = {"type": "full", "units": int(rng.integers(2, 5))}
    candidates = [{"type": "conv", "filters": int(rng.integers(1, 5)),
                   "kernel": int(rng.integers(1, 5)), "padding": int(rng.integers(0, 3)),
                   "stride": int(rng.integers(1, 3)), "pool": int(rng.integers(1, 4)),
                   "activation": str(rng.choice(["relu", "relu", "none"]))}
                  for _ in range(int(rng.integers(0, max_conv + 1)))]
    candidates += [{"type": "full", "units": int(rng.integers(1, 7)),
                    "activation": str(rng.choice(["relu", "relu", "none"]))}
                   for _ in range(int(rng.integers(0, 3)))]
    return build_valid(data, candidates, output)


def build_valid(data: dict, candidates: list[dict], output: dict) -> Architecture:
    """The architecture of `data` with each candidate layer kept only if the network, closed by
    the `output` layer, still parses with it."""
    layers: list[dict] = []
    for layer in candidates:
        try:
            parse_arch({**data, "layers": layers + [layer, output]})
        except ArchError:
            continue
        layers.append(layer)
    return parse_arch({**data, "layers": layers + [output]})


def random_batch(arch: Architecture, rng: np.random.Generator, I: int | None = None):
    """Seeded inputs in the network's layout, one-hot labels and the integer labels."""
    I = I or arch.batch
    images = rng.standard_normal((I, arch.input.height, arch.input.width, arch.input.channels))
    y = rng.integers(0, arch.n_classes, I)
    return to_layout(images, arch), one_hot(y, arch.n_classes, arch.dtype), y


def randomize_biases(cnn: ReferenceCNN, rng: np.random.Generator) -> None:
    for b in cnn.b:
        b[...] = 0.1 * rng.standard_normal(b.shape)


def torch_loss_and_grads(arch: Architecture, W: list, b: list, X: np.ndarray, y: np.ndarray):
    """The loss and the gradients of every W^m and b^m by PyTorch autograd, in float64."""
    import torch
    import torch.nn.functional as F

    Ws = [torch.tensor(w, dtype=torch.float64, requires_grad=True) for w in W]
    bs = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in b]
    conv_net = arch.layers[0].type == "conv"
    z = torch.tensor(X.transpose(1, 0, 2, 3) if conv_net else X.T, dtype=torch.float64)
    for m, (sz, w, bias) in enumerate(zip(arch.sizes(), Ws, bs), start=1):
        if sz.kind == "conv":
            z = F.conv2d(z, w.reshape(sz.d_next, sz.d, sz.h, sz.h), bias, stride=sz.s, padding=sz.p)
        else:
            z = F.linear(z.flatten(1), w, bias)
        if arch.activation_of(m) == "relu":
            z = torch.relu(z)
        if sz.kind == "conv" and sz.pool > 1:
            z = F.max_pool2d(z, kernel_size=sz.pool, stride=sz.pool)
    target = torch.tensor(y)
    if arch.loss == "mse":
        loss = ((z - F.one_hot(target, arch.n_classes).to(torch.float64)) ** 2).sum()
    else:
        loss = F.cross_entropy(z, target, reduction="sum")
    loss.backward()
    return (loss.item(), [w.grad.numpy().reshape(v.shape) for w, v in zip(Ws, W)],
            [v.grad.numpy() for v in bs])


def rel_err(a, b) -> float:
    """||a - b|| / max(||a||, ||b||, tiny), the 2-norm over all elements."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.linalg.norm(a), np.linalg.norm(b), np.finfo(np.float64).tiny)
    return float(np.linalg.norm(a - b) / scale)


# -- finite differences ----------------------------------------------------------------------

FD_ARCHS = {
    # stride 2, pool 1 then pool 3, activation none, non-square input, two hidden full layers
    "conv-stride2-pool3": {
        "input": {"height": 7, "width": 9, "channels": 2},
        "layers": [{"type": "conv", "filters": 3, "kernel": 3, "padding": 1, "stride": 2},
                   {"type": "conv", "filters": 4, "kernel": 2, "pool": 3, "activation": "none"},
                   {"type": "full", "units": 5},
                   {"type": "full", "units": 3}]},
    # padding 0, pool 2 cropping an odd convolution output, a linear hidden full layer
    "conv-pad0-pool2": {
        "input": {"height": 8, "width": 6, "channels": 1},
        "layers": [{"type": "conv", "filters": 2, "kernel": 2, "pool": 2},
                   {"type": "conv", "filters": 3, "kernel": 3, "padding": 2, "pool": 2},
                   {"type": "full", "units": 4, "activation": "none"},
                   {"type": "full", "units": 3}]},
    "mlp": {
        "input": {"height": 3, "width": 4, "channels": 2},
        "layers": [{"type": "full", "units": 6},
                   {"type": "full", "units": 5, "activation": "none"},
                   {"type": "full", "units": 3}]},
}


def directional_fd(f, theta: np.ndarray, u: np.ndarray, eps: float) -> float:
    """d/dt f(theta + t u) at t = 0 by the fourth-order central stencil; theta is restored."""
    start = theta.copy()
    values = []
    for t in (-2 * eps, -eps, eps, 2 * eps):
        theta[...] = start + t * u
        values.append(f())
    theta[...] = start
    return (values[0] - 8 * values[1] + 8 * values[2] - values[3]) / (12 * eps)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", list(FD_ARCHS))
def test_gradients_match_finite_differences(name, loss, impl):
    arch = parse_arch({"name": name, "batch": 3, "dtype": "float64", "loss": loss, **FD_ARCHS[name]})
    rng = np.random.default_rng(7)
    cnn = ReferenceCNN(arch, impl=impl, seed=1)
    randomize_biases(cnn, rng)
    X, Y, _ = random_batch(arch, rng)
    _, dW, db = cnn.loss_and_grads(X, Y)
    for m, (theta, grad) in enumerate(zip(cnn.W + cnn.b, dW + db)):
        assert np.linalg.norm(grad) > 0, f"parameter {m}: zero gradient, the check would be empty"
        # a direction with a large component along the gradient, so g.u is far from 0
        r = rng.standard_normal(theta.shape)
        u = grad / np.linalg.norm(grad) + r / np.linalg.norm(r)
        u /= np.linalg.norm(u)
        fd = directional_fd(lambda: cnn.loss_and_grads(X, Y)[0], theta, u, eps=1e-5)
        assert rel_err(fd, np.vdot(grad, u)) <= 1e-8, f"parameter {m}"


# -- PyTorch autograd ------------------------------------------------------------------------

def _check_against_torch(arch: Architecture, impl: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cnn = ReferenceCNN(arch, impl=impl, seed=seed)
    randomize_biases(cnn, rng)
    X, Y, y = random_batch(arch, rng)
    loss, dW, db = cnn.loss_and_grads(X, Y)
    t_loss, t_dW, t_db = torch_loss_and_grads(arch, cnn.W, cnn.b, X, y)
    assert rel_err(loss, t_loss) <= 1e-8
    for m, (g, t) in enumerate(zip(dW + db, t_dW + t_db)):
        assert g.shape == t.shape
        assert rel_err(g, t) <= 1e-8, f"parameter {m}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("path", COURSE_EXAMPLES, ids=lambda p: p.stem)
def test_example_gradients_match_torch(path, impl):
    """The course's examples against torch_loss_and_grads (the examples of the extended
    vocabulary: tests/test_cnn_vocab.py, against the torch backend's network)."""
    pytest.importorskip("torch")
    _check_against_torch(example(path, batch=2, dtype="float64"), impl, seed=3)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("seed", range(12))
def test_random_arch_gradients_match_torch(seed, impl):
    pytest.importorskip("torch")
    _check_against_torch(random_arch(np.random.default_rng(seed), batch=3), impl, seed)


# -- the two implementations agree ---------------------------------------------------------

def _run(arch: Architecture, impl: str, X: np.ndarray, Y: np.ndarray):
    cnn = ReferenceCNN(arch, impl=impl, seed=5)
    out = cnn.predict(X)
    loss, dW, db = cnn.loss_and_grads(X, Y)
    for _ in range(2):
        cnn.step(X, Y)
    return loss, [out] + dW + db + cnn.W + cnn.b


def _without_batch_norm(paths) -> list:
    return [p for p in paths if not any(sz.batch_norm for sz in load_arch(p).sizes())]


#: float32 on the networks without batch norm: over a mini-batch of 4 through up to 27 layers,
#: batch norm amplifies the two implementations' rounding beyond 1e-5 (float64 checks them)
AGREE = ([(p.stem, "float64") for p in STEP_EXAMPLES] + [(p.stem, "float32") for p in _without_batch_norm(STEP_EXAMPLES)]
         + [(f"random-{i}", dtype) for i in range(6) for dtype in ("float32", "float64")])


@pytest.mark.parametrize("arch_id,dtype", AGREE, ids=[f"{a}-{d}" for a, d in AGREE])
def test_index_and_strided_agree(arch_id, dtype):
    if arch_id.startswith("random-"):
        arch = random_arch(np.random.default_rng(100 + int(arch_id[7:])), batch=4, dtype=dtype)
    else:
        arch = example(EXAMPLES[[p.stem for p in EXAMPLES].index(arch_id)], batch=4, dtype=dtype)
    X, Y, _ = random_batch(arch, np.random.default_rng(0))
    rtol = 1e-5 if dtype == "float32" else 1e-12
    index_loss, index_arrays = _run(arch, "index", X, Y)
    strided_loss, strided_arrays = _run(arch, "strided", X, Y)
    assert strided_loss == pytest.approx(index_loss, rel=rtol)
    for a, b in zip(index_arrays, strided_arrays):
        assert a.dtype == b.dtype == np.dtype(dtype)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, np.abs(a).max()))


# -- batch size changes, layout helpers ------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
def test_other_batch_size_rebuilds_buffers(impl):
    arch = example(EXAMPLES[0], batch=5, dtype="float64")
    X, Y, _ = random_batch(arch, np.random.default_rng(1), I=3)
    grown = ReferenceCNN(arch, impl=impl, seed=2)
    fresh = ReferenceCNN(arch.with_batch(3), impl=impl, seed=2)
    for a, b in zip(grown.loss_and_grads(X, Y)[1], fresh.loss_and_grads(X, Y)[1]):
        np.testing.assert_allclose(a, b, rtol=1e-13)
    assert grown.I == 3
    # predict runs in chunks of arch.batch and pads the last one
    X7, _, _ = random_batch(arch, np.random.default_rng(2), I=7)
    whole = ReferenceCNN(arch.with_batch(7), impl=impl, seed=2).predict(X7)
    np.testing.assert_allclose(grown.predict(X7), whole, rtol=1e-13)


def test_to_layout_and_one_hot():
    images = np.arange(2 * 3 * 4 * 2).reshape(2, 3, 4, 2)  # (I, height, width, channels)
    conv = parse_arch({"name": "c", "input": {"height": 3, "width": 4, "channels": 2},
                       "layers": [{"type": "conv", "filters": 1, "kernel": 1},
                                  {"type": "full", "units": 2}]})
    mlp = parse_arch({"name": "f", "input": {"height": 3, "width": 4, "channels": 2},
                      "layers": [{"type": "full", "units": 2}], "dtype": "float64"})
    Z = to_layout(images, conv)
    assert Z.shape == (2, 2, 3, 4) and Z.dtype == np.float32 and Z[1, 0, 2, 3] == images[0, 2, 3, 1]
    F = to_layout(images, mlp)  # rows (channel, row, column), as torch's flatten of NCHW
    assert F.shape == (24, 2) and F[1 * 12 + 2 * 4 + 3, 1] == images[1, 2, 3, 1]
    with pytest.raises(ValueError):
        to_layout(images[..., :1], conv)
    Y = one_hot(np.array([2, 0]), 3, np.float64)
    np.testing.assert_array_equal(Y, [[0, 1], [0, 0], [1, 0]])


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("arch_id", [p.stem for p in STEP_EXAMPLES] + [f"random-{i}" for i in range(6)])
def test_strided_threads_agree_with_index(arch_id, threads, monkeypatch):
    """Every op split among threads (thresholds at 0) computes what the index
    implementation computes in one thread."""

    monkeypatch.setattr(costmodel.machine.backends.numpy, "SPLIT_BYTES", 0)
    monkeypatch.setattr(costmodel.machine.backends.numpy, "SPLIT_FLOPS", 0)
    if arch_id.startswith("random-"):
        arch = random_arch(np.random.default_rng(200 + int(arch_id[7:])), batch=5)
    else:
        arch = example(EXAMPLES[[p.stem for p in EXAMPLES].index(arch_id)], batch=5, dtype="float64")
    X, Y, _ = random_batch(arch, np.random.default_rng(0))
    index_loss, index_arrays = _run(arch, "index", X, Y)
    cnn = ReferenceCNN(arch, impl="strided", seed=5, threads=threads)
    assert cnn.workers.threads == threads
    out = cnn.predict(X)
    loss, dW, db = cnn.loss_and_grads(X, Y)
    for _ in range(2):
        cnn.step(X, Y)
    assert loss == pytest.approx(index_loss, rel=1e-12)
    for a, b in zip(index_arrays, [out] + dW + db + cnn.W + cnn.b):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(a).max()))
