"""`costmodel import` and the architecture files every command reads besides arch.yaml
(simpleNN's .config, .onnx): the file is written atomically only on success, every failure is one
line with exit status 2, the extras are named when missing, and the heavy packages stay out of
the predict path."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from costmodel.model.arch import load_arch, parse_arch

from tests.conftest import ROOT
from tests.test_simplenn_config import DEMO

MODELS = ROOT / "tests" / "import_models.py"
runner = CliRunner()


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("costmodel: error: "), result.stderr
    return lines[0]


# -- simpleNN configs, read by every command ------------------------------------------------------

def test_a_config_is_read_by_load_arch_as_the_shipped_example(tmp_path):
    path = tmp_path / "mnist-demo-layer4.config"
    path.write_text(DEMO)
    shipped = load_arch(ROOT / "examples" / "mnist-demo-layer4.yaml")
    assert load_arch(path) == shipped


@pytest.mark.parametrize("command", [["costs"], ["predict", "--by", "kind"], ["explain"]])
def test_commands_read_a_config(tmp_path, command):
    path = tmp_path / "mnist-demo-layer4.config"
    path.write_text(DEMO)
    result = runner.invoke(app, [command[0], str(path), *command[1:]])
    assert result.exit_code == 0, result.stderr
    same = runner.invoke(app, [command[0], str(ROOT / "examples" / "mnist-demo-layer4.yaml"), *command[1:]])
    assert result.stdout == same.stdout


def test_a_bad_config_line_is_named(tmp_path):
    path = tmp_path / "bad.config"
    path.write_text(DEMO.replace("wd_filter = [5,3,3];", "wd_filter = [5,3,eval('3')];"))
    line = _one_line_error(runner.invoke(app, ["costs", str(path)]))
    assert re.search(r"bad.config: line 9: wd_filter: .*is not an integer", line)


def test_import_a_config(tmp_path):
    config = tmp_path / "mnist-demo-layer4.config"
    config.write_text(DEMO)
    out = tmp_path / "demo.yaml"
    result = runner.invoke(app, ["import", str(config), "-o", str(out), "--batch", "64"])
    assert result.exit_code == 0, result.stderr
    arch = load_arch(out)
    assert arch == load_arch(ROOT / "examples" / "mnist-demo-layer4.yaml").with_batch(64)
    assert out.read_text().startswith("# Imported by costmodel ")


def test_a_config_that_is_not_a_regular_file(tmp_path):
    (tmp_path / "d.config").mkdir()
    line = _one_line_error(runner.invoke(app, ["costs", str(tmp_path / "d.config")]))
    assert "a directory, not a regular file" in line


# -- PyTorch modules through the command ----------------------------------------------------------

def test_import_writes_the_file_and_says_so(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "sub" / "lenet.yaml"
    out.parent.mkdir()  # an output's folder must exist: a typo in it is refused
    result = runner.invoke(app, ["import", f"{MODELS}:lenet5", "--input", "1x32x32", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr.strip().endswith(f"61,706 parameters -> {out}")
    assert load_arch(out).parameter_count() == 61_706
    assert list(out.parent.iterdir()) == [out]  # no temporary left


def test_import_prints_the_file_and_keeps_the_model_files_prints_off_it(tmp_path):
    pytest.importorskip("torch")
    model = tmp_path / "model.py"
    model.write_text(MODELS.read_text() + "\nprint('hello from the model file')\n")
    result = runner.invoke(app, ["import", f"{model}:mlp", "--input", "1x28x28", "--name", "my mlp"])
    assert result.exit_code == 0, result.stderr
    assert "hello from the model file" in result.stderr and "hello" not in result.stdout
    arch = parse_arch(yaml.safe_load(result.stdout))
    assert arch.name == "my mlp" and arch.loss == "softmax_ce"


@pytest.mark.parametrize("args, words", [
    (["{models}:raises", "--input", "1x8x8"], "calling it with no arguments raised ValueError: this factory fails"),
    (["{models}:not_a_module", "--input", "1x8x8"], "returned a list, not a torch.nn.Module"),
    (["{models}:with_lstm", "--input", "1x8x8"], "rnn (LSTM): not supported"),
    (["{models}:without_bias", "--input", "1x8x8"], "conv (Conv2d): a conv without bias"),
    (["{models}:lenet5"], "give the input of one instance with --input CxHxW"),
    (["{models}:lenet5", "--input", "32x32"], "--input '32x32': give CxHxW"),
    (["{bad}:make", "--input", "1x8x8"], "running the file raised ZeroDivisionError: division by zero"),
    (["{missing}:make", "--input", "1x8x8"], "no such file"),
    (["model.pt"], "give FILE.py:NAME"),
])
def test_a_failed_import_is_one_line_and_writes_nothing(tmp_path, args, words):
    pytest.importorskip("torch")
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1 / 0\n")
    out = tmp_path / "out.yaml"
    out.write_text("the old file\n")
    args = [a.format(models=MODELS, bad=bad, missing=tmp_path / "none.py") for a in args]
    line = _one_line_error(runner.invoke(app, ["import", *args, "-o", str(out)]))
    assert words in line
    assert out.read_text() == "the old file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.py", "out.yaml"]


def test_an_unwritable_output_is_refused_before_the_import(tmp_path):
    (tmp_path / "dir.yaml").mkdir()
    line = _one_line_error(runner.invoke(app, ["import", f"{MODELS}:raises", "--input", "1x8x8", "-o",
                                               str(tmp_path / "dir.yaml")]))
    assert "a directory, not a file that can be replaced" in line


def test_without_torch_the_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    line = _one_line_error(runner.invoke(app, ["import", f"{MODELS}:lenet5", "--input", "1x32x32"]))
    assert line == ("costmodel: error: importing a PyTorch module needs PyTorch: pip install "
                    "'costmodel[torch]'")


# -- ONNX files through the commands --------------------------------------------------------------

@pytest.fixture(scope="module")
def cnn6_onnx(tmp_path_factory):
    pytest.importorskip("onnx")
    torch = pytest.importorskip("torch")
    from tests.import_models import NETWORKS
    from tests.test_import_onnx import export

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cli") / "cnn6.onnx"
    factory, shape, _ = NETWORKS["simplenn_cnn_6layers"]
    export(factory(), shape, path)
    return path


def test_predict_reads_an_onnx_file_directly(cnn6_onnx, tmp_path):
    result = runner.invoke(app, ["predict", str(cnn6_onnx), "--by", "kind", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "cnn6.yaml"
    assert runner.invoke(app, ["import", str(cnn6_onnx), "-o", str(out)]).exit_code == 0
    again = runner.invoke(app, ["predict", str(out), "--by", "kind", "--format", "json"])
    assert again.stdout == result.stdout
    assert load_arch(cnn6_onnx) == load_arch(out)


def test_a_broken_onnx_file_is_one_line_for_every_command(cnn6_onnx, tmp_path):
    path = tmp_path / "cut.onnx"
    path.write_bytes(cnn6_onnx.read_bytes()[:1000])
    for command in (["costs"], ["predict"], ["import", "-o", str(tmp_path / "x.yaml")]):
        line = _one_line_error(runner.invoke(app, [command[0], str(path), *command[1:]]))
        assert f"{path}: not " in line
    assert not (tmp_path / "x.yaml").exists()


def test_without_onnx_the_extra_is_named(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x08\x07")
    line = _one_line_error(runner.invoke(app, ["costs", str(path)]))
    assert line == "costmodel: error: reading an ONNX file needs the onnx package: pip install 'costmodel[onnx]'"


# -- the README's two lines -----------------------------------------------------------------------

def test_the_readmes_import_lines_work(tmp_path, monkeypatch, tiny_profile):
    """(predict with conftest's tiny calibration: the shipped reference profile predates batch norm)"""
    pytest.importorskip("torch")
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Your own network.*?```bash\n(.*?)```", text, re.S).group(1)
    lines = [line.split("#")[0].split() for line in block.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0][:2] == ["costmodel", "import"] and lines[1][:2] == ["costmodel", "predict"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.py").write_text(MODELS.read_text())
    lines[1] += ["--profile", str(tiny_profile[0]), "--threads", "1"]
    for words in lines:
        result = runner.invoke(app, words[1:])
        assert result.exit_code == 0, result.stderr


# -- layout: the importers are light, the predict path of an arch.yaml does not touch them -------

def test_the_importers_import_neither_torch_nor_onnx_until_used():
    code = ("import sys, costmodel.importers.graph, costmodel.importers.source, costmodel.importers.torchmodule, "
            "costmodel.importers.onnxfile; print([m for m in ('torch', 'onnx') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


def test_predicting_an_arch_yaml_imports_no_importer():
    # printed by an atexit handler: the command line ends by os._exit after the atexit handlers
    code = ("import atexit, sys, runpy; sys.argv = ['costmodel', 'predict', 'examples/cifar10-layer7.yaml']\n"
            "atexit.register(lambda: print('LOADED:' + ','.join(m for m in ('torch', 'onnx', 'costmodel.importers') "
            "if m in sys.modules)))\n"
            "runpy.run_path('cli.py', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "LOADED:"
