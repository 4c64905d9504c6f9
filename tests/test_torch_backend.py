"""`costmodel measure --backend torch`: the same step in PyTorch, per op group from
torch.profiler, mapped onto the contract (docs/torch-mapping.md)."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from cli import app
from costmodel.model.ops import op_list
from tests.conftest import COURSE_EXAMPLES, ROOT, STEP_EXAMPLES
from tests.test_cnn import EXAMPLES, example

runner = CliRunner()


def _needs_torch():
    pytest.importorskip("torch")


@pytest.mark.parametrize("path", STEP_EXAMPLES, ids=lambda p: p.stem)
def test_measure_torch_covers_every_op(path):
    _needs_torch()
    from calib.backends.torch import OTHER, measure_torch

    batch = 8 if path in COURSE_EXAMPLES else 2  # the extended vocabulary's examples are larger
    arch = example(path, batch=batch)
    result = measure_torch(arch, steps=2, warmup=1)
    assert {k: result[k] for k in ("arch", "batch", "dtype", "impl")} == {
        "arch": arch.name, "batch": batch, "dtype": arch.dtype, "impl": "torch"}
    rows = result["ops"]
    assert len({(r["layer"], r["op"], r["phase"]) for r in rows}) == len(rows)
    # every op of the contract is in exactly one row (alone or in a merged group) of its layer
    covered = [(r["layer"], op, r["phase"]) for r in rows if r["op"] != OTHER for op in r["op"].split("+")]
    assert sorted(covered) == sorted((ref.layer, ref.op, ref.phase) for ref in op_list(arch))
    # time that maps to no op is an "other" row, never dropped: the autograd engine's own time
    assert any(r["op"] == OTHER and r["layer"] == 0 and r["seconds"] > 0 for r in rows)
    assert all(r["seconds"] >= 0 for r in rows)
    assert result["total_seconds"] == pytest.approx(sum(r["seconds"] for r in rows))
    assert sum(r["fraction"] for r in rows) == pytest.approx(1.0)


def test_measure_torch_sets_threads():
    torch = pytest.importorskip("torch")
    from calib.backends.torch import measure_torch

    before = torch.get_num_threads()
    result = measure_torch(example(EXAMPLES[0], batch=2), steps=1, warmup=0, threads=1)
    assert result["threads"] == 1
    assert torch.get_num_threads() == before


def test_cli_measure_torch_prints_json():
    _needs_torch()
    path = next(p for p in EXAMPLES if p.stem == "cifar10-demo-layer4")
    res = runner.invoke(app, ["measure", str(path), "--backend", "torch", "--batch", "8", "--steps", "2",
                              "--warmup", "1", "--threads", "1", "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["impl"] == "torch" and data["threads"] == 1 and data["batch"] == 8
    ops = {(r["layer"], r["op"], r["phase"]) for r in data["ops"]}
    assert (2, "pad+phi+conv_matmul+bias", "forward") in ops
    assert (2, "conv_grad_W+bias_grad+conv_grad_input+phi_grad+pad_grad", "backward") in ops
    assert (1, "conv_grad_W+bias_grad", "backward") in ops
    assert all(r["flops"] is None for r in data["ops"] if r["op"] == "other")
    assert "step_seconds" in data and "coverage" in data


def test_cli_measure_torch_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    path = EXAMPLES[0]
    res = runner.invoke(app, ["measure", str(path), "--backend", "torch", "--batch", "2", "--steps", "1"])
    assert res.exit_code == 2
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "pip install 'costmodel[torch]'" in lines[0]


def test_measure_torch_prints_no_profiler_chatter_on_stderr():
    """torch 2.13's Kineto writes 'USDT: ... profiler_start/stop' lines straight to fd 2 around
    every profiled step; the command's stderr is for its own lines only (a fresh process: the
    level is read when torch's profiler starts)."""
    import os
    import subprocess

    pytest.importorskip("torch")
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    res = subprocess.run([sys.executable, str(ROOT / "cli.py"), "measure", str(EXAMPLES[0]), "--backend", "torch",
                          "--batch", "2", "--steps", "2", "--warmup", "1"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert not [line for line in res.stderr.splitlines() if "profiler_st" in line or line.startswith("USDT")]
