"""Every command on every example of the extended vocabulary, with a profile made by `calibrate`
(tests/conftest.py's tiny calibrations, NumPy and torch, one thread): costs (--symbolic too),
predict (every --by, both implementations, --backend torch, --plot), compare, explain, sweep
(a path into a residual block too), latex, the DataFrame API. The reference profile shipped
today predates the new ops (tests/test_shipped_profile.py runs on the course's examples)."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from costmodel.model.arch import load_arch
from costmodel.model.ops import op_keys

from tests.conftest import VOCAB_EXAMPLES

runner = CliRunner()
BATCH = 4
IDS = [p.stem for p in VOCAB_EXAMPLES]


def _small(tmp_path, path) -> str:
    """The example at a mini-batch of BATCH (a file, as a user passes one)."""
    data = yaml.safe_load(path.read_text())
    out = tmp_path / f"{path.stem}.yaml"
    out.write_text(yaml.safe_dump(data | {"batch": BATCH}))
    return str(out)


def _run(*args) -> str:
    result = runner.invoke(app, list(map(str, args)))
    assert result.exit_code == 0, (args, result.output)
    return result.stdout


def _residual_path(path) -> str | None:
    """`layers[k].layers[0].filters` of the example's first residual block, if it has one."""
    data = yaml.safe_load(path.read_text())
    k = next((i for i, layer in enumerate(data["layers"]) if layer["type"] == "residual"), None)
    return None if k is None else f"layers[{k}].layers[0].filters"


@pytest.mark.parametrize("path", VOCAB_EXAMPLES, ids=IDS)
def test_costs_of_every_example(path):
    arch = load_arch(path)
    for impl in ("index", "strided"):
        data = json.loads(_run("costs", path, "--format", "json", "--impl", impl))
        assert [(o["layer"], o["op"], o["phase"]) for o in data["ops"]] == \
            [(k.layer, k.op, k.phase) for k in op_keys(arch)]
    assert "layer" in _run("costs", path, "--format", "csv").splitlines()[0]
    symbolic = json.loads(_run("costs", path, "--format", "json", "--symbolic"))
    assert all(o["flops_order"].startswith("O(") or o["flops"] == o["flops_order"] == "0" for o in symbolic["ops"])
    assert "O(" in _run("costs", path, "--symbolic")


@pytest.mark.parametrize("path", VOCAB_EXAMPLES, ids=IDS)
def test_predict_explain_sweep_latex_of_every_example(tmp_path, path, torch_profile):
    arch_path = _small(tmp_path, path)
    keys = [(k.layer, k.op, k.phase) for k in op_keys(load_arch(arch_path))]
    common = ["--profile", torch_profile, "--threads", "1"]
    for impl in ("index", "strided"):
        data = json.loads(_run("predict", arch_path, *common, "--impl", impl, "--format", "json"))
        assert [(o["layer"], o["op"], o["phase"]) for o in data["ops"]] == keys
        assert all(o["seconds"] > 0 for o in data["ops"]) and data["total_seconds"] > 0
        for by in ("layer", "phase", "kind"):
            groups = json.loads(_run("predict", arch_path, *common, "--impl", impl, "--by", by,
                                     "--format", "json"))["groups"]
            assert sum(g["fraction"] for g in groups) == pytest.approx(1.0)
        facts = json.loads(_run("explain", arch_path, *common, "--impl", impl, "--format", "json"))
        assert facts["sections"] and facts["major_ops"]
    torch = json.loads(_run("predict", arch_path, *common, "--backend", "torch", "--format", "json"))
    assert torch["backend"] == "torch" and all(o["seconds"] > 0 for o in torch["ops"])
    json.loads(_run("predict", arch_path, *common, "--backend", "torch", "--by", "kind", "--format", "json"))
    assert "Sweep of batch" in _run("sweep", arch_path, *common, "--vary", "batch=1,8")
    inner = _residual_path(path)
    if inner is not None:
        sweep = json.loads(_run("sweep", arch_path, *common, "--vary", f"{inner}=8,16", "--format", "json"))
        assert [p["value"] for p in sweep["points"]] == [8, 16]
    tex = _run("latex", arch_path, *common)
    assert tex.count("\\begin{longtable}") == 3 and "\\mathcal{O}" in tex


def test_plots_of_the_extended_vocabulary(tmp_path, torch_profile):
    """Residual additions, batch norm and global average pooling in the plots, both backends
    (tests/test_plots.py checks what they draw)."""
    path = next(p for p in VOCAB_EXAMPLES if p.stem == "resnet20-cifar10")
    arch_path = _small(tmp_path, path)
    for backend in ("numpy", "torch"):
        out = tmp_path / f"{backend}.png"
        _run("predict", arch_path, "--backend", backend, "--profile", torch_profile, "--threads", "1", "--plot", out)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", ["lenet5", "digits-resnet", "mobilenet-cifar10"])
def test_compare_measures_and_predicts_the_extended_vocabulary(tmp_path, name, torch_profile):
    """Real steps of the reference CNN and of PyTorch against their predictions: the measured
    rows are the predicted ones."""
    path = next(p for p in VOCAB_EXAMPLES if p.stem == name)
    common = ["--profile", torch_profile, "--threads", "1", "--batch", "2", "--steps", "1", "--warmup", "0",
              "--format", "json"]
    for backends in ("numpy", "torch"):
        data = json.loads(_run("compare", path, *common, "--backends", backends))
        assert sum(r["measured_fraction"] for r in data["ops"]) == pytest.approx(1.0)
        assert sum(r["predicted_fraction"] for r in data["ops"]) == pytest.approx(1.0)


def test_dataframe_api_on_the_extended_vocabulary(torch_profile):
    pytest.importorskip("pandas")
    import costmodel

    arch = load_arch(next(p for p in VOCAB_EXAMPLES if p.stem == "resnet20-cifar10")).with_batch(BATCH)
    costs = costmodel.costs_frame(arch, vary={"batch": [1, 8]})
    assert {"residual_add", "residual_add_grad", "batch_norm", "global_avg_pool"} <= set(costs["op"])
    predicted = costmodel.predict_frame(arch, torch_profile, threads=1)
    assert len(predicted) == len(op_keys(arch)) and (predicted["seconds"] > 0).all()
    swept = costmodel.sweep_frame(arch, torch_profile, vary={"layers[1].layers[0].filters": [8, 16]}, threads=1)
    assert set(swept["layers[1].layers[0].filters"]) == {8, 16}
    assert costmodel.explain_report(arch, torch_profile, threads=1)["sections"]


def test_numpy_model_keys_of_the_extended_vocabulary():
    """A variant only where another kernel runs; a grouped product is threaded by its bytes
    (shared by groups, calib.workers.Workers.run), dropout never (the calling thread's
    generator); the course's ops keep their keys."""
    from costmodel.machine.backends.numpy import SPLIT_BYTES, SPLIT_FLOPS, NumpyBackend, kernel_variant, regime
    from costmodel.model.costs import OpSpec
    from costmodel.model.ops import MATMUL
    from costmodel.model.records import ELEMENTWISE

    assert kernel_variant("pool", OpSpec("conv", pool_type="avg")) == ("avg",)
    assert kernel_variant("pool", OpSpec("conv", pool_overlap=True)) == ()  # the same running maximum
    assert kernel_variant("pool_grad", OpSpec("conv", pool_overlap=True)) == ("overlap",)  # a scatter-add
    assert kernel_variant("activation_grad", OpSpec("full", activation="sigmoid")) == ("sigmoid",)
    assert kernel_variant("activation", OpSpec("residual_add")) == ()
    assert kernel_variant("conv_grad_input", OpSpec("conv", grouped=True)) == ("grouped",)
    assert kernel_variant("phi", OpSpec("conv", grouped=True)) == ()
    assert regime(MATMUL, 10 * SPLIT_FLOPS, SPLIT_BYTES - 1, True, "conv_matmul", grouped=True) == "serial"
    assert regime(MATMUL, 1, SPLIT_BYTES, True, "conv_matmul", grouped=True) == "threaded"
    assert regime(MATMUL, SPLIT_FLOPS, 1, True, "conv_matmul") == "threaded"
    assert regime(ELEMENTWISE, 0, 10 * SPLIT_BYTES, True, "dropout") == ""
    assert regime(ELEMENTWISE, 0, 10 * SPLIT_BYTES, True, "batch_norm") == "threaded"
    lenet5 = load_arch(next(p for p in VOCAB_EXAMPLES if p.stem == "lenet5"))
    rows = {(r.layer, r.name): str(r.model) for r in NumpyBackend().rows(lenet5, "index", 1, None)}
    assert rows[(1, "pool")] == "pool:avg" and rows[(1, "activation")] == "activation:tanh"
    assert rows[(1, "conv_matmul")] == "conv_matmul" and rows[(6, "loss")] == "loss:softmax_ce"
