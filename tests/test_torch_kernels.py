"""The rules by which the torch backend tells oneDNN's kernels apart (which grouped
convolutions run as one im2col and product per image and group: grouped_gemm) against the
kernels this machine's PyTorch runs, read from ONEDNN_VERBOSE. A behaviour test: no times."""

import itertools
import os
import subprocess
import sys

import pytest

from costmodel.machine.backends.torch import depthwise, grouped_gemm, simd_lanes
from costmodel.model.arch import parse_arch

torch = pytest.importorskip("torch")

#: (input channels, filters, groups, kernel, input size, stride, padding): depthwise layers over
#: kernels, inputs, strides and paddings (the weight gradient's rule), and grouped ones over
#: channels per group
DEPTHWISE = [(8, 8, 8, h, a, s, p) for h, a, s in itertools.product((1, 3, 5), (2, 3, 4, 5, 7, 8), (1, 2))
             for p in sorted({0, h // 2}) if a + 2 * p >= h]
GROUPED = [(g * ic, g * oc, g, 3, 6, 1, 1) for g, (ic, oc) in itertools.product(
    (2, 8), ((1, 2), (2, 2), (2, 4), (3, 6), (4, 4), (8, 8), (8, 16), (16, 16)))]
LAYERS = DEPTHWISE + GROUPED

RUN = """
import sys, torch
for d, dn, g, h, a, s, p in eval(sys.argv[1]):
    conv = torch.nn.Conv2d(d, dn, h, stride=s, padding=p, groups=g)
    x = torch.randn(2, d, a, a, requires_grad=True)
    conv(x).sum().backward()
"""


def _arch(d, dn, g, h, a, s, p):
    return parse_arch({"name": "g", "input": {"height": a, "width": a, "channels": d}, "batch": 2, "loss": "mse",
                       "layers": [{"type": "conv", "filters": dn, "kernel": h, "padding": p, "stride": s,
                                   "groups": g}, {"type": "full", "units": 2}]})


def _kernels(isa: str | None) -> dict[str, dict[str, str]]:
    """descriptor (g..mb2_ic..oc.._ih..) -> {"forward_training": impl, "backward_data": ..., ...}."""
    # two threads: at one, PyTorch runs an unstrided 1x1 convolution of a batch under 16
    # without oneDNN (aten::thnn_conv2d), a case the torch backend does not model
    env = dict(os.environ, ONEDNN_VERBOSE="1", OMP_NUM_THREADS="2")
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    out = subprocess.run([sys.executable, "-c", RUN, repr(LAYERS)], env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout
    kernels: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        f = line.split(",")
        if len(f) > 8 and f[3:6] == ["exec", "cpu", "convolution"]:
            kernels.setdefault(f[-2], {})[f[7]] = f[6]
    return kernels


def _descriptor(d, dn, g, h, a, s, p) -> str:
    o = (a + 2 * p - h) // s + 1
    return f"g{g}mb2_ic{d}oc{dn}_ih{a}oh{o}kh{h}sh{s}dh0ph{p}_iw{a}ow{o}kw{h}sw{s}dw0pw{p}"


@pytest.mark.parametrize("isa,lanes", [(None, None), ("AVX2", 8)], ids=["native", "AVX2"])
def test_grouped_gemm_names_the_kernels_onednn_runs(isa, lanes):
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this PyTorch has no oneDNN")
    from costmodel.machine.fingerprint import take_fingerprint

    flags = take_fingerprint(1)["cpu_flags"]
    if "avx2" not in flags:
        pytest.skip("the rules are read on AVX2 and AVX-512")
    lanes = lanes or simd_lanes(flags, 4)
    kernels = _kernels(isa)
    checked = 0
    for layer in LAYERS:
        sz = _arch(*layer).sizes()[0]
        ran = kernels[_descriptor(*layer)]
        backward = "gemm" in ran["backward_weights"] or "gemm" in ran.get("backward_data", "")
        assert grouped_gemm(sz, "backward", lanes, False) == backward, (layer, ran)
        if sz.a >= sz.h:  # a kernel wider than its input: oneDNN's other fallbacks, not modelled
            assert grouped_gemm(sz, "forward", lanes, False) == ("gemm" in ran["forward_training"]), (layer, ran)
        if depthwise(sz) and not grouped_gemm(sz, "backward", lanes, False):
            assert "jit_dw" in ran["backward_weights"]
        checked += 1
    assert checked == len(LAYERS)


def test_grouped_gemm_rules_by_hand():
    """One and two filters per input channel; channels per group by the SIMD block; float64."""
    dw = _arch(8, 8, 8, 3, 8, 1, 1).sizes()[0]
    mult2 = _arch(8, 16, 8, 3, 8, 1, 1).sizes()[0]
    blocked = _arch(32, 64, 2, 3, 8, 1, 1).sizes()[0]
    plain = _arch(8, 16, 1, 3, 8, 1, 1).sizes()[0]
    assert depthwise(dw) and not depthwise(mult2) and not depthwise(plain)
    assert not grouped_gemm(dw, "forward", 16, False) and not grouped_gemm(dw, "backward", 16, False)
    assert grouped_gemm(_arch(8, 8, 8, 3, 2, 1, 1).sizes()[0], "backward", 16, False)  # a 3x3 kernel on a 2x2 input
    assert not grouped_gemm(_arch(8, 8, 8, 3, 5, 2, 1).sizes()[0], "backward", 16, False)  # 5x5, stride 2
    assert grouped_gemm(_arch(8, 8, 8, 5, 8, 1, 2).sizes()[0], "backward", 16, False)  # a 5x5 kernel
    assert grouped_gemm(mult2, "forward", 16, False) and grouped_gemm(mult2, "backward", 8, False)
    assert not grouped_gemm(blocked, "forward", 16, False) and not grouped_gemm(blocked, "backward", 8, False)
    assert not grouped_gemm(plain, "forward", 16, False)  # not grouped
    assert grouped_gemm(dw, "forward", 8, True)  # float64: im2col per image and group
