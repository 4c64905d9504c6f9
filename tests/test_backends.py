"""`costmodel compare ARCH --backends numpy,torch`: NumPy's ops summed into torch's op groups,
and an explanation whose numbers and verdicts follow from the measurements."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from cli import app
from costmodel.model.ops import op_list
from tests.test_cnn import EXAMPLES, example

pytest.importorskip("torch")

from calib.compare import FASTER_RATIO, OTHER, assemble, group_rows  # noqa: E402
from costmodel.machine.backends.torch import torch_groups  # noqa: E402


def static_groups(arch) -> dict[tuple[int, str, str], str]:
    """The torch group of every op of the contract (costmodel.machine.backends.torch)."""
    refs = op_list(arch)
    return {(refs[i].layer, refs[i].op, refs[i].phase): "+".join(g.ops) for g in torch_groups(refs) for i in g.members}

runner = CliRunner()


def _synthetic(arch, seed: int = 0, scale_numpy=None, scale_torch=None):
    """NumPy rows for every op of the contract and torch rows for every group (plus 'other'),
    with distinct seconds; scale_* map (layer, op or group, phase) -> factor."""
    import numpy as np

    rng = np.random.default_rng(seed)
    numpy_rows = [{"layer": r.layer, "layer_type": r.layer_type, "op": r.op, "phase": r.phase,
                   "seconds": float(rng.uniform(1e-5, 1e-3))} for r in op_list(arch)]
    for row in numpy_rows:
        row["seconds"] *= (scale_numpy or {}).get((row["layer"], row["op"], row["phase"]), 1.0)
    groups = []
    for (m, _, phase), grp in static_groups(arch).items():
        if (m, grp, phase) not in groups:
            groups.append((m, grp, phase))
    groups += [(1, OTHER, "forward"), (0, OTHER, "backward")]
    torch_rows = [{"layer": m, "layer_type": "x", "op": grp, "phase": phase,
                   "seconds": float(rng.uniform(1e-5, 1e-3)) * (scale_torch or {}).get((m, grp, phase), 1.0)}
                  for m, grp, phase in groups]
    return numpy_rows, torch_rows


def _result(arch, numpy_rows, torch_rows, threads=2, thread_speedup=2.0):
    """The comparison of synthetic rows; PyTorch's 1-thread run is its rows times `thread_speedup`."""
    def side(rows, impl, n=threads):
        total = sum(r["seconds"] for r in rows)
        return {"impl": impl, "threads": n, "step_seconds": total, "total_seconds": total,
                "coverage": 1.0, "ops": rows}

    one = [{**r, "seconds": r["seconds"] * thread_speedup} for r in torch_rows]
    return assemble(arch, side(numpy_rows, "index"), {**side(torch_rows, "torch"), "torch_version": "x"},
                    side(one, "torch", 1))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_grouping_sums_numpy_ops_exactly(path):
    arch = example(path, batch=4)
    numpy_rows, torch_rows = _synthetic(arch)
    groups = group_rows(numpy_rows, torch_rows, arch)
    # one row per torch row, in its order; nothing NumPy-only left over
    assert [(g["layer"], g["group"], g["phase"]) for g in groups] == \
        [(r["layer"], r["op"], r["phase"]) for r in torch_rows]
    by_op = {(r["layer"], r["op"], r["phase"]): r["seconds"] for r in numpy_rows}
    for g in groups:
        if g["group"] == OTHER:
            assert g["numpy_seconds"] is None and g["ratio"] is None
            continue
        ops = g["ops"]
        assert "+".join(ops) == g["group"]
        assert g["numpy_seconds"] == pytest.approx(sum(by_op[(g["layer"], op, g["phase"])] for op in ops), rel=1e-12)
        assert set(g["numpy_ops"]) == set(ops)
        assert g["ratio"] == pytest.approx(g["numpy_seconds"] / g["torch_seconds"])
    # every NumPy op counted exactly once
    assert sum(g["numpy_seconds"] or 0 for g in groups) == pytest.approx(sum(by_op.values()))
    assert sum(g["numpy_fraction"] or 0 for g in groups) == pytest.approx(1.0)
    assert sum(g["torch_fraction"] for g in groups) == pytest.approx(1.0)


def test_static_groups_are_the_documented_ones():
    arch = example(next(p for p in EXAMPLES if p.stem == "cifar10-demo-layer4"), batch=2)
    g = static_groups(arch)
    assert g[(2, "phi", "forward")] == "pad+phi+conv_matmul+bias"
    assert g[(2, "phi_grad", "backward")] == "conv_grad_W+bias_grad+conv_grad_input+phi_grad+pad_grad"
    assert g[(1, "conv_grad_W", "backward")] == "conv_grad_W+bias_grad"
    assert g[(1, "pool", "forward")] == "pool"


def _numbers(text: str) -> list[str]:
    return re.findall(r"\d+(?:\.\d+)?", text)


def test_explanation_numbers_follow_the_input():
    arch = example(next(p for p in EXAMPLES if p.stem == "cifar10-demo-layer4"), batch=4)
    numpy_rows, torch_rows = _synthetic(arch, seed=1)
    first = _result(arch, numpy_rows, torch_rows)["explanation"]
    phi = next(r for r in numpy_rows if r["op"] == "phi" and r["layer"] == 2)
    phi["seconds"] *= 3.0
    second = _result(arch, numpy_rows, torch_rows)["explanation"]
    conv = lambda sections: next(s for sec in sections for s in sec["sentences"]  # noqa: E731
                                 if s.startswith("The fused convolution of layer 2"))
    assert _numbers(conv(first)) != _numbers(conv(second))
    # the new phi time itself is quoted
    assert "of the NumPy time" in conv(second)
    whole = " ".join(s for sec in second for s in sec["sentences"])
    assert re.search(r"phi\(pad\(Z\^2\)\) with its padding is [\d.]+ (us|ms)", whole)


def _verdict(result, reason):
    return next(v for v in result["verdicts"] if v["reason"] == reason)


@pytest.mark.parametrize("reason,groups", [
    ("fused convolution instead of phi + product", lambda g: g["phase"] == "forward" and "phi" in g["group"]),
    ("fused backward instead of scatter-add", lambda g: g["phase"] == "backward" and "phi_grad" in g["group"]),
])
def test_verdict_flips_at_its_threshold(reason, groups):
    arch = example(next(p for p in EXAMPLES if p.stem == "cifar10-demo-layer4"), batch=4)
    numpy_rows, torch_rows = _synthetic(arch, seed=2)
    # make the index ops dominate NumPy's time so only the ratio decides
    for r in numpy_rows:
        if r["op"] in ("phi", "pad", "phi_grad", "pad_grad"):
            r["seconds"] *= 10
    base = _result(arch, numpy_rows, torch_rows)
    selected = [g for g in base["ops"] if g["group"] != OTHER and groups(g)]
    n = sum(g["numpy_seconds"] for g in selected)
    keys = {(g["layer"], g["group"], g["phase"]) for g in selected}

    def with_ratio(ratio):
        t = sum(r["seconds"] for r in torch_rows if (r["layer"], r["op"], r["phase"]) in keys)
        scaled = [{**r, "seconds": r["seconds"] * (n / ratio) / t} if (r["layer"], r["op"], r["phase"]) in keys
                  else r for r in torch_rows]
        return _result(arch, numpy_rows, scaled)

    above, below = with_ratio(FASTER_RATIO * 1.05), with_ratio(FASTER_RATIO * 0.95)
    assert _verdict(above, reason)["numbers"]["ratio"] == pytest.approx(FASTER_RATIO * 1.05)
    assert _verdict(above, reason)["supported"] is True
    assert _verdict(below, reason)["supported"] is False
    text = lambda r: " ".join(s for sec in r["explanation"] for s in sec["sentences"])  # noqa: E731
    assert f'"{reason}": supported.' in text(above)
    assert f'"{reason}": not supported by these numbers.' in text(below)


@pytest.mark.parametrize("speedup, supported", [(FASTER_RATIO * 1.05, True), (FASTER_RATIO * 0.95, False)])
def test_the_threads_verdict_follows_the_1_thread_run(speedup, supported):
    """Threads explain PyTorch's faster elementwise ops only if its 1-thread run is at least
    FASTER_RATIO slower; the rest of the gap is its kernels'."""
    arch = example(next(p for p in EXAMPLES if p.stem == "cifar10-demo-layer4"), batch=4)
    numpy_rows, torch_rows = _synthetic(arch, seed=3)
    verdict = _verdict(_result(arch, numpy_rows, torch_rows, thread_speedup=speedup),
                       "threads used by elementwise ops")
    assert verdict["supported"] is supported
    numbers = verdict["numbers"]
    assert numbers["thread_speedup"] == pytest.approx(speedup)
    assert numbers["kernel_ratio"] == pytest.approx(numbers["ratio"] / speedup)


def test_the_threads_verdict_needs_the_1_thread_run():
    arch = example(next(p for p in EXAMPLES if p.stem == "cifar10-demo-layer4"), batch=4)
    numpy_rows, torch_rows = _synthetic(arch, seed=3)
    side = {"impl": "torch", "threads": 2, "step_seconds": 1.0, "total_seconds": 1.0, "coverage": 1.0,
            "ops": torch_rows, "torch_version": "x"}
    result = assemble(arch, {**side, "impl": "index", "ops": numpy_rows}, side)
    verdict = _verdict(result, "threads used by elementwise ops")
    assert verdict["supported"] is False
    assert "Without a 1-thread run" in " ".join(s for sec in result["explanation"] for s in sec["sentences"])


def test_elementwise_threads_needs_more_than_one_thread():
    arch = example(next(p for p in EXAMPLES if p.stem == "cifar10-demo-layer4"), batch=4)
    numpy_rows, torch_rows = _synthetic(arch, seed=3)
    torch_rows = [{**r, "seconds": r["seconds"] / 100} for r in torch_rows]  # far faster everywhere
    assert _verdict(_result(arch, numpy_rows, torch_rows, threads=2), "threads used by elementwise ops")["supported"]
    assert not _verdict(_result(arch, numpy_rows, torch_rows, threads=1),
                        "threads used by elementwise ops")["supported"]


def test_cli_compare_backends_json_on_digits():
    path = next(p for p in EXAMPLES if p.stem == "digits-small")
    res = runner.invoke(app, ["compare", str(path), "--backends", "numpy,torch", "--batch", "4", "--steps", "2",
                              "--warmup", "1", "--threads", "1", "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["batch"] == 4 and data["numpy"]["impl"] == "index" and data["torch"]["threads"] == 1
    arch = example(path, batch=4)
    expected = set(static_groups(arch).values())
    measured = {g["group"] for g in data["ops"] if g["group"] != OTHER}
    assert measured == expected  # torch's measured groups are the ones the mapping documents
    assert sum(g["numpy_seconds"] or 0 for g in data["ops"]) == pytest.approx(data["numpy"]["total_seconds"])
    assert sum(g["torch_seconds"] for g in data["ops"]) == pytest.approx(data["torch"]["total_seconds"])
    assert any(g["group"] == OTHER for g in data["ops"])
    assert data["step_ratio"] == pytest.approx(data["numpy"]["step_seconds"] / data["torch"]["step_seconds"])
    assert {v["reason"] for v in data["verdicts"]} == {
        "fused convolution instead of phi + product", "fused backward instead of scatter-add",
        "threads used by elementwise ops"}
    assert all(isinstance(s, str) for sec in data["explanation"] for s in sec["sentences"])


def test_cli_compare_backends_csv_and_bad_value():
    path = next(p for p in EXAMPLES if p.stem == "digits-small")
    res = runner.invoke(app, ["compare", str(path), "--backends", "numpy,torch", "--batch", "2", "--steps", "1",
                              "--warmup", "0", "--format", "csv"])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0].startswith("layer,layer_type,group,phase,numpy_seconds")
    res = runner.invoke(app, ["compare", str(path), "--backends", "torch,numpy"])
    assert res.exit_code != 0 and "--backends" in res.stderr


def test_cli_compare_backends_without_torch(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)
    res = runner.invoke(app, ["compare", str(EXAMPLES[0]), "--backends", "numpy,torch", "--batch", "2"])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'costmodel[torch]'" in lines[0]
