"""`calibrate --backend torch` and `predict --backend torch`: PyTorch's rows derived from the
architecture (costmodel.machine.backends.torch) agree with what torch.profiler measures; their
costs follow the documented rules; a tiny torch calibration predicts a network it never saw."""

import json
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli import app
from costmodel.machine.backends import OTHER, ModelKey
from costmodel.machine.backends.torch import (FRESH_BYTES, FUSED, LANE_FEATURES, TorchBackend, fused_elements,
                                              group_model_key, lane_waste_flops, simd_lanes, torch_groups)
from costmodel.machine.profile import Entry, load_profile
from costmodel.model.ops import op_keys, op_list
from costmodel.model.step import step_costs

from costmodel.model.arch import load_arch
from tests.conftest import EXAMPLES, ROOT
from tests.test_cnn import example, random_arch
from tests.test_cnn_vocab import VOCAB_ARCHS, vocab_arch, vocab_architectures

runner = CliRunner()


def groups(arch):
    return torch_groups(op_list(arch))


def rows_of(arch, lanes: int = 1):
    return TorchBackend().rows_of(step_costs(arch, "strided"), lanes)


def _name(g) -> str:
    return "+".join(g.ops) if g.ops else OTHER


# -- the groups, without torch ----------------------------------------------------------------

@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_groups_cover_every_op_once(path):
    arch = example(path, batch=4)
    refs = op_list(arch)
    covered = [refs[i].key for g in groups(arch) for i in g.members]
    assert sorted(covered) == sorted(op_keys(arch))  # every op of the contract in exactly one group
    for g in groups(arch):
        if g.fused:
            assert set(g.ops) <= set(FUSED[(g.phase, g.layer_type)][0])
    others = [g for g in groups(arch) if not g.ops]
    assert [g.layer for g in others if g.phase == "forward"] == list(range(1, arch.L + 1))
    assert [(g.layer, g.layer_type) for g in others if g.phase == "backward"] == [(0, "step")]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_group_flops_are_their_ops_and_fused_bytes_skip_phi(path):
    arch = example(path, batch=8)
    costs = step_costs(arch, "strided")
    for g, row in zip(groups(arch), rows_of(arch), strict=True):
        assert row.key == (g.layer, _name(g), g.phase)
        flops = sum(int(costs.flops[i]) for i in g.scope)
        nbytes = sum(int(costs.bytes[i]) for i in g.scope)
        if not g.ops:
            assert row.flops == row.bytes == 0
            assert row.extra["scope_flops"] == row.basis["flops"] == flops
        else:
            assert row.flops == flops
        if g.fused and not row.basis["gemm_calls"]:
            assert row.bytes < nbytes  # no phi, no padded copy
        elif g.ops:  # a single op, or a grouped convolution run as im2col and products (grouped_gemm)
            assert row.bytes == nbytes
        if row.basis["gemm_calls"]:
            assert g.sizes.g > 1 and row.basis["gemm_calls"] == arch.batch * g.sizes.g
            assert row.model.variant in (("grouped",), ("depthwise",))


def test_float64_convolutions_are_costed_as_im2col():
    """PyTorch runs float64 convolutions as im2col + BLAS: phi's bytes count, no lane waste."""
    arch = example(next(p for p in EXAMPLES if p.stem == "cifar10-demo-layer4"), batch=8, dtype="float64")
    costs = step_costs(arch, "strided")
    for g, row in zip(groups(arch), rows_of(arch, lanes=7), strict=True):
        if g.fused:
            assert row.bytes == sum(int(costs.bytes[i]) for i in g.scope)
        assert row.basis["flops_lane_waste"] == 0


def test_fused_elements_by_hand():
    arch = example(next(p for p in EXAMPLES if p.stem == "cifar10-demo-layer4"), batch=16)
    fused = {(g.layer, g.phase): g for g in groups(arch) if g.fused}
    sz = arch.sizes()[1]  # layer 2: a conv layer with an input gradient
    I = 16
    Z, S = sz.d * I * sz.a * sz.b, sz.d_next * I * sz.a_conv * sz.b_conv
    W = sz.d_next * sz.h * sz.h * sz.d
    g = fused[(2, "forward")]
    assert fused_elements(g.sizes, g.ops, g.phase, I) == (Z + W + sz.d_next, S)
    g = fused[(2, "backward")]
    assert fused_elements(g.sizes, g.ops, g.phase, I) == (Z + S + W, W + sz.d_next + Z)
    sz1 = arch.sizes()[0]
    Z1, S1 = sz1.d * I * sz1.a * sz1.b, sz1.d_next * I * sz1.a_conv * sz1.b_conv
    W1 = sz1.d_next * sz1.h * sz1.h * sz1.d
    g = fused[(1, "backward")]
    assert fused_elements(g.sizes, g.ops, g.phase, I) == (Z1 + S1, W1 + sz1.d_next)  # no input gradient


def test_lane_waste_flops():
    arch = example(next(p for p in EXAMPLES if p.stem == "cifar10-demo-layer4"), batch=4)
    s1, s2 = arch.sizes()[:2]
    lanes = 7  # no channel count of the example is a multiple of 7
    up = lambda n: -(-n // lanes) * lanes / n  # noqa: E731
    assert lane_waste_flops(s1, 1, 10**6, lanes) == round(10**6 * (up(s1.d_next) - 1))  # layer 1's input: plain
    assert lane_waste_flops(s2, 2, 10**6, lanes) == round(10**6 * (up(s2.d) * up(s2.d_next) - 1))
    assert lane_waste_flops(s1, 1, 10**6, 1) == 0 and s1.d == 3
    assert lane_waste_flops(arch.sizes()[-1], arch.L, 10**6, lanes) == 0  # a full layer


def test_simd_lanes_and_model_keys():
    assert simd_lanes(["avx512f", "avx2"], 4) == 16 and simd_lanes(["avx2"], 4) == 8
    assert simd_lanes(["avx2"], 8) == 4 and simd_lanes([], 8) == 2
    assert str(group_model_key(("pad", "phi", "conv_matmul", "bias"), "forward", "mse")) == "phi+conv_matmul+bias"
    assert str(group_model_key(("phi", "conv_matmul", "bias"), "forward", "mse")) == "phi+conv_matmul+bias"
    assert str(group_model_key((), "backward", "mse")) == "other:backward"
    assert str(group_model_key(("loss_grad",), "backward", "softmax_ce")) == "loss_grad:softmax_ce"
    assert ModelKey.parse("phi+conv_matmul+bias") == ModelKey(("phi", "conv_matmul", "bias"))
    assert ModelKey.parse("conv_matmul:serial") == ModelKey(("conv_matmul",), ("serial",))


def test_conv_models_use_the_lane_feature():
    be = TorchBackend()
    assert be.features(ModelKey(("phi", "conv_matmul", "bias"))) == LANE_FEATURES
    assert "flops_lane_waste" not in be.features(ModelKey(("pool",)))
    for variant in ("grouped", "depthwise"):
        assert be.features(ModelKey(("phi", "conv_matmul", "bias"), (variant,))) == LANE_FEATURES + ("gemm_calls",)


def test_depthwise_and_grouped_convolutions_have_models_of_their_own():
    """jit_dw, oneDNN's depthwise kernel, and its gemm convolution: two models; a depthwise
    layer of a profile made before the split is priced by its grouped model."""
    arch = load_arch(ROOT / "benchmarks" / "archs" / "depthwise-separable.yaml")
    rows = {(r.layer, r.phase): r for r in rows_of(arch, lanes=16) if "conv_matmul" in r.ops or "conv_grad_W" in r.ops}
    assert rows[(2, "forward")].model.variant == ("grouped",)  # 2 filters per input channel: gemm
    assert rows[(2, "forward")].basis["gemm_calls"] == arch.batch * 24
    assert rows[(2, "forward")].basis["flops_lane_waste"] == 0
    assert rows[(4, "forward")].model.variant == ("depthwise",)
    assert rows[(4, "forward")].basis["gemm_calls"] == 0
    assert rows[(3, "forward")].model.variant == ()  # a 1x1 convolution
    depthwise_key = rows[(4, "forward")].model
    assert rows[(4, "forward")].legacy_model == ModelKey(depthwise_key.ops, ("grouped",))
    assert rows[(3, "forward")].legacy_model is None


def _model():
    return {"model": "nnls-linear", "features": ["calls"], "coef": [1e-6], "interval": [0.9, 1.1],
            "n_samples": 3}


def test_entry_keys_by_backend():
    Entry(dtype="float32", impl="torch", threads=2, backend="torch",
          ops={"phi+conv_matmul+bias": _model(), "other:forward": _model()})
    with pytest.raises(ValueError, match="unknown op 'phi\\+conv_matmul'"):
        Entry(dtype="float32", impl="index", threads=2, ops={"phi+conv_matmul": _model()})
    with pytest.raises(ValueError, match="unknown op 'softmax'"):
        Entry(dtype="float32", impl="torch", threads=2, backend="torch", ops={"softmax": _model()})


# -- against torch.profiler --------------------------------------------------------------------

def _measured_keys(arch):
    from calib.backends.torch import measure_torch

    result = measure_torch(arch, steps=1, warmup=0, threads=1)
    return [(o["layer"], o["op"], o["phase"]) for o in result["ops"]]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_groups_are_what_the_profiler_measures(path):
    pytest.importorskip("torch")
    arch = example(path, batch=2)
    assert _measured_keys(arch) == [r.key for r in rows_of(arch)]


@pytest.mark.parametrize("seed", range(12))
def test_groups_are_what_the_profiler_measures_random(seed):
    pytest.importorskip("torch")
    arch = random_arch(np.random.default_rng(seed), batch=2, dtype=("float32", "float64")[seed % 2])
    assert _measured_keys(arch) == [r.key for r in rows_of(arch)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(VOCAB_ARCHS))
def test_groups_are_what_the_profiler_measures_extended_vocabulary(name, dtype):
    """Batch norm (and its step counter), dropout, average and overlapping pooling, tanh and
    sigmoid, a `same` padding that differs between borders (nn.ZeroPad2d), grouped and
    depthwise convolutions, residual additions and the engine's sum of a block input's two
    gradients, global average pooling."""
    pytest.importorskip("torch")
    arch = vocab_arch(name, "softmax_ce" if dtype == "float32" else "mse", batch=2, dtype=dtype)
    assert _measured_keys(arch) == [r.key for r in rows_of(arch)]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=vocab_architectures(dtype="float32"), dtype=st.sampled_from(["float32", "float64"]))
def test_groups_are_what_the_profiler_measures_random_extended_vocabulary(arch, dtype):
    pytest.importorskip("torch")
    arch = arch.with_dtype(dtype)
    assert _measured_keys(arch) == [r.key for r in rows_of(arch)]


def test_padding_on_its_own_and_the_sum_of_two_gradients_are_rows_of_their_own():
    arch = vocab_arch("same-groups-avg-depthwise", batch=2, dtype="float32")
    names = {(r.layer, r.name, r.phase): r for r in rows_of(arch)}
    assert (1, "pad", "forward") in names and (1, "phi+conv_matmul+bias", "forward") in names
    assert str(names[(1, "pad", "forward")].model) == "pad"
    assert str(names[(1, "phi+conv_matmul+bias", "forward")].model) == "phi+conv_matmul+bias:grouped"
    assert str(names[(1, "pool", "forward")].model) == "pool:avg"
    assert str(names[(1, "activation", "forward")].model) == "activation:tanh"
    assert str(names[(2, "pool_grad", "backward")].model) == "pool_grad"  # overlapping max: the same kernel
    resnet = rows_of(vocab_arch("resnet-blocks", batch=2))
    assert [(r.layer, r.name) for r in resnet if r.name == "residual_add_grad"] == [(4, "residual_add_grad"),
                                                                                    (1, "residual_add_grad")]
    sz = arch.sizes()[0]  # the fused convolution reads the padded input
    row = names[(1, "phi+conv_matmul+bias", "forward")]
    assert row.bytes_read == 4 * (sz.d * 2 * sz.a_pad * sz.b_pad + sz.d_next * sz.h * sz.h * sz.d // sz.g + sz.d_next)


def test_torch_calibration_predicts_an_unseen_network(torch_profile):
    import torch

    from costmodel.machine.predict import predict

    profile = load_profile(torch_profile)
    entry = profile.entry("float32", "torch", 1, "torch")
    assert entry.versions == {"torch": torch.__version__}
    conv = [k for k in entry.ops if "conv_matmul" in k or "conv_grad_W" in k]
    assert conv and all(entry.ops[k].features == list(TorchBackend().features(ModelKey.parse(k))) for k in conv)
    assert all(entry.ops[k].features[:len(LANE_FEATURES)] == list(LANE_FEATURES) for k in conv)
    assert entry.ops["pool"].features == list(LANE_FEATURES[:-1])
    arch = example(next(p for p in EXAMPLES if p.stem == "digits-small"), batch=8)
    result = predict(arch, profile, threads=1, backend="torch")
    assert result.impl == "torch" and result.backend == "torch"
    assert [r.key for r in result.rows] == [r.key for r in rows_of(arch)]
    assert all(r.seconds > 0 for r in result.rows)
    with pytest.raises(Exception, match="--backend torch"):
        predict(arch, profile, threads=2, backend="torch")


def test_cli_predict_and_compare_torch(torch_profile):
    path = next(p for p in EXAMPLES if p.stem == "digits-small")
    res = runner.invoke(app, ["predict", str(path), "--backend", "torch", "--profile", str(torch_profile),
                              "--threads", "1", "--by", "kind", "--format", "json"])
    assert res.exit_code == 0, res.output
    kinds = {g["kind"] for g in json.loads(res.stdout)["groups"]}
    assert {"fused convolution", "framework overhead"} <= kinds
    res = runner.invoke(app, ["compare", str(path), "--backends", "torch", "--profile", str(torch_profile),
                              "--threads", "1", "--batch", "4", "--steps", "1", "--warmup", "0", "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["impl"] == "torch" and data["backend"] == "torch"
    assert sum(r["measured_fraction"] for r in data["ops"]) == pytest.approx(1.0)


def test_cli_predict_torch_without_a_torch_entry(tmp_path, monkeypatch):
    from costmodel.machine import fingerprint

    monkeypatch.setattr(fingerprint, "available_cores", lambda: 64)  # 3 threads are possible here: calibrate them
    path = next(p for p in EXAMPLES if p.stem == "digits-small")
    res = runner.invoke(app, ["predict", str(path), "--backend", "torch", "--threads", "3"])
    errors = [line for line in res.stderr.splitlines() if not line.startswith("costmodel: warning")]
    assert res.exit_code != 0 and len(errors) == 1
    assert "costmodel calibrate --dtype float32 --threads 3 --backend torch" in errors[0]


def test_cli_calibrate_torch_refuses_impl_and_needs_torch(monkeypatch, tmp_path):
    out = tmp_path / "p.json"
    res = runner.invoke(app, ["calibrate", "--backend", "torch", "--impl", "index", "-o", str(out)])
    assert res.exit_code != 0 and "--impl" in res.stderr and not out.exists()
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    res = runner.invoke(app, ["calibrate", "--backend", "torch", "--quick", "-o", str(out)])
    assert res.exit_code == 2 and "pip install 'costmodel[torch]'" in res.stderr and not out.exists()


@pytest.mark.parametrize("impl", ["strided", "index"])
@pytest.mark.parametrize("command", [["predict", "--backend", "torch"],
                                     ["measure", "--backend", "torch", "--steps", "1", "--warmup", "0"],
                                     ["compare", "--backends", "torch", "--steps", "1", "--warmup", "0"]])
def test_cli_impl_with_the_torch_backend_is_refused_not_ignored(command, impl):
    """PyTorch has no index or strided variant: --impl given with --backend torch is one line,
    exit status 2, before anything is predicted or measured."""
    path = next(p for p in EXAMPLES if p.stem == "digits-small")
    res = runner.invoke(app, [command[0], str(path), *command[1:], "--batch", "2", "--impl", impl])
    assert res.exit_code == 2 and res.stdout == ""
    refusal = "costmodel: error: --impl: the torch backend has one implementation, PyTorch's; leave --impl out"
    assert res.stderr.splitlines() == [refusal]


def test_torch_groups_have_course_names_and_plot(torch_profile, tmp_path):
    from costmodel.machine.predict import predict
    from costmodel.present.notation import course_name, course_tex
    from costmodel.present.plots import plot_predict

    arch = example(next(p for p in EXAMPLES if p.stem == "cifar10-demo-layer4"), batch=4)
    names = {r.name: course_name(r.text, r.layer) for r in rows_of(arch)}
    assert names["pad+phi+conv_matmul+bias"] == "conv(Z^3; W^3) + b^3, fused"  # the last conv layer
    assert names[OTHER] == "other (framework)" and all(course_tex(r.mathtext, 2) for r in rows_of(arch))
    profile = load_profile(torch_profile)
    result = predict(example(next(p for p in EXAMPLES if p.stem == "digits-small"), batch=8), profile,
                     threads=1, backend="torch")
    out = tmp_path / "torch.png"
    plot_predict(result, profile.ceilings, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bytes_fresh_counts_only_arrays_of_fresh_pages():
    """An output of at least FRESH_BYTES is mapped anew by every allocation; below, none is."""
    big = example(next(p for p in EXAMPLES if p.stem == "cifar10-demo-layer4"), batch=256, dtype="float64")
    rows = rows_of(big)
    assert any(r.basis["bytes_fresh"] for r in rows)
    for r in rows:
        assert r.basis["bytes_fresh"] == 0 or r.basis["bytes_fresh"] >= FRESH_BYTES
        assert r.basis["bytes_fresh"] <= r.bytes_written
    small = example(next(p for p in EXAMPLES if p.stem == "digits-small"), batch=8)
    assert all(r.basis["bytes_fresh"] == 0 for r in rows_of(small))


def test_a_speed_ratio_below_one_reads_as_slower():
    from calib.compare import _as_fast

    assert _as_fast(0.886) == "1.13x slower" and _as_fast(1.62) == "1.62x faster"
    assert _as_fast(None) == _as_fast(0.0) == "of unknown speed"
