"""The extended vocabulary's sizes (ARCH_FORMAT.md, "Extended vocabulary"): TensorFlow's SAME
padding, pooling with a stride and ceil mode as PyTorch computes them, the flat list of layers
of residual blocks, and parameter counts against the published ones and torch's."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodel.model.arch import load_arch, parse_arch

from tests.conftest import ALL_EXAMPLES, COURSE_EXAMPLES, ROOT, VOCAB_EXAMPLES


def conv_net(input_hw=(8, 8), channels=1, **conv):
    return parse_arch({"name": "t", "input": {"height": input_hw[0], "width": input_hw[1], "channels": channels},
                       "layers": [{"type": "conv", "filters": 2, "kernel": 3, **conv},
                                  {"type": "full", "units": 2}]})


@pytest.mark.parametrize("a", range(1, 13))
@pytest.mark.parametrize("h", range(1, 6))
@pytest.mark.parametrize("s", range(1, 4))
def test_same_padding_is_tensorflows(a, h, s):
    """output ceil(a/s); total padding max((out - 1) s + h - a, 0), the extra row at the
    bottom (TensorFlow's kernel_shape_util: padding_before = needed / 2)."""
    sz = conv_net((a, a + 1), kernel=h, stride=s, padding="same").sizes()[0]
    for size, before, after, out in ((a, sz.p_top, sz.p_bottom, sz.a_conv),
                                     (a + 1, sz.p_left, sz.p_right, sz.b_conv)):
        expected_out = math.ceil(size / s)
        needed = max((expected_out - 1) * s + h - size, 0)
        assert out == expected_out
        assert (before, after) == (needed // 2, needed - needed // 2)
    assert sz.a_pad == a + sz.p_top + sz.p_bottom and sz.b_pad == a + 1 + sz.p_left + sz.p_right
    assert sz.p == (sz.p_top if len({sz.p_top, sz.p_bottom, sz.p_left, sz.p_right}) == 1 else None)


def test_same_padding_with_an_odd_kernel_is_the_integer_padding():
    same, integer = conv_net(kernel=5, padding="same"), conv_net(kernel=5, padding=2)
    assert same.sizes() == integer.sizes()
    assert conv_net(padding="valid").sizes() == conv_net(padding=0).sizes()


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_same_padding_matches_torch_at_stride_1():
    """torch's padding='same' puts the extra row and column at the bottom and right too."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    sz = conv_net((5, 6), kernel=4, padding="same").sizes()[0]
    assert (sz.p_top, sz.p_bottom, sz.p_left, sz.p_right) == (1, 2, 1, 2)
    x = torch.randn(1, 1, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w = torch.randn(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = F.conv2d(F.pad(x, (sz.p_left, sz.p_right, sz.p_top, sz.p_bottom)), w)
    assert torch.equal(ours, F.conv2d(x, w, padding="same"))


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 20), pool=st.integers(2, 5), stride=st.integers(1, 5), ceil=st.booleans())
def test_pooled_size_is_torchs(size, pool, stride, ceil):
    """a' = floor or ceil((a_conv - P)/t) + 1, ceil mode without a window starting past the
    end: the output size of torch's MaxPool2d/AvgPool2d(P, t, ceil_mode=...)."""
    torch = pytest.importorskip("torch")
    if pool > size:
        return
    arch = conv_net((size + 2, size + 2), kernel=3, pool=pool, pool_stride=stride, pool_ceil=ceil)
    sz = arch.sizes()[0]
    assert sz.a_conv == size
    x = torch.zeros(1, 1, size, size)
    for module in (torch.nn.MaxPool2d(pool, stride, ceil_mode=ceil), torch.nn.AvgPool2d(pool, stride, ceil_mode=ceil)):
        assert tuple(module(x).shape[2:]) == (sz.a_next, sz.b_next)


def test_simplenn_python_mnist_pools_as_tensorflow_same():
    arch = load_arch(ROOT / "examples" / "simplenn-mnist-python.yaml")
    assert [(sz.a_conv, sz.a_next) for sz in arch.sizes()[:3]] == [(28, 14), (14, 7), (7, 4)]
    assert arch.sizes()[3].n_in == 4 * 4 * 64


def test_overlapping_ceil_pooling_of_cifar10_quick():
    """Caffe rounds up: 32 -> 16 -> 8 -> 4 with 3x3 windows of stride 2."""
    arch = load_arch(ROOT / "examples" / "cifar10-quick.yaml")
    assert [(sz.a_conv, sz.a_next, sz.pool, sz.pool_stride, sz.pool_type) for sz in arch.sizes()[:3]] == [
        (32, 16, 3, 2, "max"), (16, 8, 3, 2, "avg"), (8, 4, 3, 2, "avg")]


def test_residual_blocks_in_the_flat_list():
    """Every conv of a block, the projection and the addition get their own m; the addition
    reads F's last layer and the shortcut (the block's input, or the projection)."""
    arch = parse_arch({"name": "r", "input": {"height": 8, "width": 8, "channels": 3}, "layers": [
        {"type": "conv", "filters": 4, "kernel": 3, "padding": 1},
        {"type": "residual", "layers": [{"type": "conv", "filters": 4, "kernel": 3, "padding": 1},
                                        {"type": "conv", "filters": 4, "kernel": 3, "padding": 1, "activation": "none"}]},
        {"type": "residual", "layers": [{"type": "conv", "filters": 8, "kernel": 3, "padding": 1, "stride": 2, "batch_norm": True},
                                        {"type": "conv", "filters": 8, "kernel": 3, "padding": 1, "activation": "none"}]},
        {"type": "global_avg_pool"},
        {"type": "full", "units": 10}]})
    sizes = arch.sizes()
    assert arch.L == len(sizes) == 10 and arch.n_conv == 6
    table = [(sz.m, sz.kind, sz.inputs, sz.activation, (sz.a_next, sz.b_next, sz.d_next)) for sz in sizes]
    assert table == [
        (1, "conv", (0,), "relu", (8, 8, 4)),
        (2, "conv", (1,), "relu", (8, 8, 4)),
        (3, "conv", (2,), "none", (8, 8, 4)),
        (4, "residual_add", (3, 1), "relu", (8, 8, 4)),  # identity shortcut: reads layer 1
        (5, "conv", (4,), "relu", (4, 4, 8)),
        (6, "conv", (5,), "none", (4, 4, 8)),
        (7, "conv", (4,), "none", (4, 4, 8)),  # the projection: 1x1, stride 2, batch norm
        (8, "residual_add", (6, 7), "relu", (4, 4, 8)),
        (9, "global_avg_pool", (8,), "none", (1, 1, 8)),
        (10, "full", (9,), "none", (1, 1, 10)),
    ]
    projection = sizes[6]
    assert (projection.h, projection.s, projection.batch_norm, projection.p) == (1, 2, True, 0)
    assert projection.place == "layers[2] (residual): shortcut"
    assert sizes[2].place == "layers[1] (residual): layers[1] (conv)"
    assert not sizes[9].flatten and sizes[9].n_in == 8  # global average pooling: (d, I) already
    assert [sz.m for sz in sizes if sz.fork] == [1, 4]  # the blocks' inputs
    assert [arch.activation_of(m) for m in range(1, 11)] == [sz.activation for sz in sizes]


def test_old_files_keep_their_meaning():
    """A file without the new fields: symmetric padding p, pool stride = width, floor, max,
    relu, a chain of layers, flatten exactly after conv layers."""
    for path in COURSE_EXAMPLES:
        arch = load_arch(path)
        sizes = arch.sizes()
        assert arch.L == len(arch.layers) == len(sizes)
        for sz in sizes:
            assert sz.inputs == (sz.m - 1,)
            assert sz.kind in ("conv", "full")
            assert sz.activation == arch.activation_of(sz.m)
            if sz.kind == "conv":
                assert sz.p == sz.p_top == sz.p_bottom == sz.p_left == sz.p_right
                assert sz.a_pad == sz.a + 2 * sz.p and sz.pool_stride == sz.pool and not sz.pool_ceil
                assert sz.a_next == sz.a_conv // sz.pool and sz.g == 1 and sz.pool_type == "max"
            else:
                assert sz.flatten == (sz.m > 1 and arch.layers[sz.m - 2].type == "conv")


# -- parameter counts ------------------------------------------------------------------------

def test_published_parameter_counts():
    count = {p.stem: load_arch(p).parameter_count() for p in VOCAB_EXAMPLES}
    assert count["lenet5"] == 61_706  # the modern LeNet-5
    # ResNet-20: 0.27 M (He et al. 2016, Table 6); the projections (2,752) and conv biases (784)
    # of this format's version are 1.3 % of it
    assert count["resnet20-cifar10"] == 273_258
    assert abs(count["resnet20-cifar10"] - 0.27e6) / 0.27e6 < 0.015
    assert count["cifar10-quick"] == 145_578  # Caffe's cifar10_quick
    assert count["vgg11-cifar10"] == 28_144_010
    # VGG11 with batch norm: gamma and beta of every conv's filters
    assert count["vgg11-bn-cifar10"] - count["vgg11-cifar10"] == 2 * (64 + 128 + 2 * 256 + 4 * 512)


@pytest.mark.parametrize("path", ALL_EXAMPLES, ids=lambda p: p.stem)
def test_parameter_count_and_sizes_are_torchs(path):
    """torch's count of the same module, and every layer's output shape in torch."""
    torch = pytest.importorskip("torch")
    from calib.backends.torch import torch_net

    arch = load_arch(path).with_batch(2)
    net = torch_net(arch)
    assert sum(p.numel() for p in net.parameters()) == arch.parameter_count()
    x = torch.zeros(2, arch.input.channels, arch.input.height, arch.input.width)
    if arch.layers[0].type == "full":
        x = x.reshape(2, -1)
    outputs = [x]
    with torch.no_grad():
        for layer, sz in zip(net.layers, arch.sizes()):
            outputs.append(layer(*(outputs[i] for i in sz.inputs)))
            shape = (sz.n_out,) if sz.kind == "full" else (sz.d_next, sz.a_next, sz.b_next)
            assert tuple(outputs[-1].shape[1:]) == shape, sz.place


def test_parameter_count_of_a_grouped_and_normalised_layer():
    arch = parse_arch({"name": "g", "input": {"height": 5, "width": 5, "channels": 6}, "layers": [
        {"type": "conv", "filters": 9, "kernel": 3, "groups": 3, "batch_norm": True},
        {"type": "full", "units": 4, "batch_norm": True}, {"type": "full", "units": 2}]})
    conv, full, out = arch.sizes()
    assert conv.weight_shape == (9, 3 * 3 * 2)
    assert conv.n_params == 9 * 18 + 9 + 2 * 9
    assert full.n_params == 4 * 81 + 4 + 2 * 4 and out.n_params == 2 * 4 + 2
    assert arch.parameter_count() == conv.n_params + full.n_params + out.n_params


# -- where a file uses the extended vocabulary ---------------------------------------------------

def test_extended_vocabulary_is_found_where_it_is_used():
    assert all(load_arch(p).extended_vocabulary() is None for p in COURSE_EXAMPLES)
    # VGG11's 3x3 'same' convs are the course's padding 1
    assert load_arch(ROOT / "examples" / "vgg11-cifar10.yaml").extended_vocabulary() is None
    found = {p.stem: load_arch(p).extended_vocabulary() for p in VOCAB_EXAMPLES}
    assert found["lenet5"] == "layers[0] (conv): pool_type avg"
    assert found["simplenn-mnist-python"] == "layers[2] (conv): pool_ceil"  # 7 -> 4; 28 -> 14 is floor too
    assert found["cifar10-quick"] == "layers[0] (conv): pool_stride 2"
    assert found["resnet20-cifar10"] == "layers[0] (conv): batch_norm"
    assert conv_net(kernel=2, padding="same").extended_vocabulary() == \
        "layers[0] (conv): padding same (0/1 rows, 0/1 columns)"
    assert conv_net(activation="tanh").extended_vocabulary() == "layers[0] (conv): activation tanh"
