"""`calibrate --backend torch` and `predict --backend torch`: PyTorch's op groups derived from
the architecture (costmodel.machine.fused) agree with what torch.profiler measures; their costs follow
the documented rules; a tiny torch calibration predicts a network it never saw."""

import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from costmodel.model.evaluate import costs_report
from costmodel.machine.features import ALL_FEATURES, LANE_FEATURES, feature_rows, simd_lanes
from costmodel.machine.fused import (FUSED, OTHER, fused_elements, group_model_key, lane_waste_flops, torch_groups,
                             torch_rows)
from costmodel.model.ops import op_keys
from costmodel.machine.profile import Entry, load_profile, save_profile

from tests.conftest import EXAMPLES
from tests.test_calibrate import TINY
from tests.test_cnn import example, random_arch

runner = CliRunner()


# -- the groups, without torch ----------------------------------------------------------------

@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_groups_cover_every_op_once(path):
    arch = example(path, batch=4)
    groups = torch_groups(arch)
    covered = [k for g in groups for k in (g.scope if g.ops else ())]
    assert sorted(covered) == sorted(op_keys(arch))  # every op of the contract in exactly one group
    for g in groups:
        assert g.name == ("+".join(g.ops) if g.ops else OTHER)
        if g.fused:
            assert set(g.ops) <= set(FUSED[(g.key.phase, g.key.layer_type)])
    others = [g.key for g in groups if g.name == OTHER]
    assert [k.layer for k in others if k.phase == "forward"] == list(range(1, arch.L + 1))
    assert [(k.layer, k.layer_type) for k in others if k.phase == "backward"] == [(0, "step")]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_group_flops_are_their_ops_and_fused_bytes_skip_phi(path):
    arch = example(path, batch=8)
    ops = {(r["layer"], r["op"], r["phase"]): r for r in costs_report(arch, "strided")["ops"]}
    for g, row in zip(torch_groups(arch), torch_rows(arch), strict=True):
        assert (row["layer"], row["op"], row["phase"]) == tuple(g.key[i] for i in (0, 2, 3))
        members = [ops[(k.layer, k.op, k.phase)] for k in g.scope]
        if g.name == OTHER:
            assert row["flops"] == row["bytes"] == 0
            assert row["scope_flops"] == sum(m["flops"] for m in members)
        else:
            assert row["flops"] == sum(m["flops"] for m in members)
        if g.fused:
            assert row["bytes"] < sum(m["bytes"] for m in members)  # no phi, no padded copy
        elif g.name != OTHER:
            assert row["bytes"] == members[0]["bytes"]


def test_float64_convolutions_are_costed_as_im2col():
    """PyTorch runs float64 convolutions as im2col + BLAS: phi's bytes count, no lane waste."""
    arch = example(next(p for p in EXAMPLES if p.stem == "cifar10-demo-layer4"), batch=8, dtype="float64")
    ops = {(r["layer"], r["op"], r["phase"]): r for r in costs_report(arch, "strided")["ops"]}
    for g, row in zip(torch_groups(arch), torch_rows(arch, lanes=7), strict=True):
        if g.fused:
            assert row["bytes"] == sum(ops[(k.layer, k.op, k.phase)]["bytes"] for k in g.scope)
        assert row["flops_lane_waste"] == 0


def test_fused_elements_by_hand():
    arch = example(next(p for p in EXAMPLES if p.stem == "cifar10-demo-layer4"), batch=16)
    sz = arch.sizes()[1]  # layer 2: a conv layer with an input gradient
    groups = {(g.key.layer, g.key.phase): g for g in torch_groups(arch) if g.fused}
    I = 16
    Z, S = sz.d * I * sz.a * sz.b, sz.d_next * I * sz.a_conv * sz.b_conv
    W = sz.d_next * sz.h * sz.h * sz.d
    assert fused_elements(groups[(2, "forward")], I) == (Z + W + sz.d_next, S)
    assert fused_elements(groups[(2, "backward")], I) == (Z + S + W, W + sz.d_next + Z)
    sz1 = arch.sizes()[0]
    Z1, S1 = sz1.d * I * sz1.a * sz1.b, sz1.d_next * I * sz1.a_conv * sz1.b_conv
    W1 = sz1.d_next * sz1.h * sz1.h * sz1.d
    assert fused_elements(groups[(1, "backward")], I) == (Z1 + S1, W1 + sz1.d_next)  # no input gradient


def test_lane_waste_flops():
    arch = example(next(p for p in EXAMPLES if p.stem == "cifar10-demo-layer4"), batch=4)
    g1 = next(g for g in torch_groups(arch) if g.fused and g.key.layer == 1)
    g2 = next(g for g in torch_groups(arch) if g.fused and g.key.layer == 2)
    d1, d_next1 = g1.sizes.d, g1.sizes.d_next
    lanes = 7  # no channel count of the example is a multiple of 7
    up = lambda n: -(-n // lanes) * lanes / n  # noqa: E731
    assert lane_waste_flops(g1, 10**6, lanes) == round(10**6 * (up(d_next1) - 1))  # layer 1's input: plain
    assert lane_waste_flops(g2, 10**6, lanes) == round(10**6 * (up(g2.sizes.d) * up(g2.sizes.d_next) - 1))
    assert lane_waste_flops(g1, 10**6, 1) == 0 and d1 == 3
    single = next(g for g in torch_groups(arch) if g.name == "pool")
    assert lane_waste_flops(single, 10**6, lanes) == 0


def test_simd_lanes_and_model_keys():
    assert simd_lanes(["avx512f", "avx2"], 4) == 16 and simd_lanes(["avx2"], 4) == 8
    assert simd_lanes(["avx2"], 8) == 4 and simd_lanes([], 8) == 2
    assert group_model_key("pad+phi+conv_matmul+bias", "forward", "mse") == "phi+conv_matmul+bias"
    assert group_model_key("phi+conv_matmul+bias", "forward", "mse") == "phi+conv_matmul+bias"
    assert group_model_key(OTHER, "backward", "mse") == "other:backward"
    assert group_model_key("loss_grad", "backward", "softmax_ce") == "loss_grad:softmax_ce"


def test_feature_rows_reads_lane_waste_and_refuses_unknown_features():
    X = feature_rows({"flops": [1, 2], "bytes": [3, 4], "flops_lane_waste": [5, 6]}, {}, LANE_FEATURES)
    np.testing.assert_array_equal(X[:, -1], [5, 6])
    assert feature_rows({"flops": [1], "bytes": [3]}, {}, ALL_FEATURES)[0, -1] == 0
    with pytest.raises(ValueError, match="unknown feature 'speed'"):
        feature_rows({"flops": [1], "bytes": [3]}, {}, ("calls", "speed"))


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
    assert _measured_keys(arch) == [(g.key.layer, g.name, g.key.phase) for g in torch_groups(arch)]


@pytest.mark.parametrize("seed", range(12))
def test_groups_are_what_the_profiler_measures_random(seed):
    pytest.importorskip("torch")
    arch = random_arch(np.random.default_rng(seed), batch=2, dtype=("float32", "float64")[seed % 2])
    assert _measured_keys(arch) == [(g.key.layer, g.name, g.key.phase) for g in torch_groups(arch)]


@pytest.fixture(scope="module")
def torch_profile(tmp_path_factory):
    pytest.importorskip("torch")
    from calib.calibrate import Plan, calibrate, to_profile

    plan = Plan(dtypes=("float32",), impls=("torch",), points=10, rounds=1, chunk=5, limits=TINY,
                ceilings_seconds=0.5, backend="torch", probe_seconds=0.5)
    path = tmp_path_factory.mktemp("profile") / "profile.json"
    save_profile(to_profile(calibrate(plan, threads=1)), path)
    return path


def test_torch_calibration_predicts_an_unseen_network(torch_profile):
    import torch

    from costmodel.machine.predict import predict

    profile = load_profile(torch_profile)
    entry = profile.entry("float32", "torch", 1, "torch")
    assert entry.versions == {"torch": torch.__version__}
    conv = [k for k in entry.ops if "conv_matmul" in k or "conv_grad_W" in k]
    assert conv and all(entry.ops[k].features == list(LANE_FEATURES) for k in conv)
    assert entry.ops["pool"].features == list(LANE_FEATURES[:-1])
    arch = example(next(p for p in EXAMPLES if p.stem == "digits-small"), batch=8)
    result = predict(arch, profile, threads=1, backend="torch")
    assert result["impl"] == "torch" and result["backend"] == "torch"
    assert [(o["layer"], o["op"], o["phase"]) for o in result["ops"]] == \
        [(g.key.layer, g.name, g.key.phase) for g in torch_groups(arch)]
    assert all(o["seconds"] > 0 for o in result["ops"])
    assert sum(o["fraction"] for o in result["ops"]) == pytest.approx(1.0)
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


def test_cli_predict_torch_without_a_torch_entry(tmp_path):
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


def test_torch_groups_have_course_names_and_plot(torch_profile, tmp_path):
    from costmodel.present.explain import course_name, course_tex
    from costmodel.present.plots import plot_predict
    from costmodel.machine.predict import predict

    arch = example(next(p for p in EXAMPLES if p.stem == "cifar10-demo-layer4"), batch=4)
    names = {g.name: course_name(g.name, g.key.layer) for g in torch_groups(arch)}
    assert names["pad+phi+conv_matmul+bias"] == "conv(Z^3; W^3) + b^3, fused"  # the last conv layer
    assert names[OTHER] == "other (framework)" and all(course_tex(g.name, 2) for g in torch_groups(arch))
    profile = load_profile(torch_profile)
    result = predict(example(next(p for p in EXAMPLES if p.stem == "digits-small"), batch=8), profile,
                     threads=1, backend="torch")
    out = tmp_path / "torch.png"
    plot_predict(result, profile.ceilings, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bytes_fresh_counts_only_arrays_of_fresh_pages():
    """An output of at least FRESH_BYTES is mapped anew by every allocation; below, none is."""
    from costmodel.machine.fused import FRESH_BYTES

    big = example(next(p for p in EXAMPLES if p.stem == "cifar10-demo-layer4"), batch=256, dtype="float64")
    rows = torch_rows(big)
    assert any(r["bytes_fresh"] for r in rows)
    for r in rows:
        assert r["bytes_fresh"] == 0 or r["bytes_fresh"] >= FRESH_BYTES
        assert r["bytes_fresh"] <= r["bytes_written"]
    small = example(next(p for p in EXAMPLES if p.stem == "digits-small"), batch=8)
    assert all(r["bytes_fresh"] == 0 for r in torch_rows(small))
