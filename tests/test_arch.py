"""arch.yaml parsing and validation: every error case of ARCH_FORMAT.md, one line naming the place."""

import copy
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from costmodel.model.arch import load_arch, parse_arch
from costmodel.errors import ArchError
from costmodel.model.ops import op_keys, op_names

from tests.conftest import EXAMPLES, ROOT

BASE = yaml.safe_load((ROOT / "examples" / "mnist-demo-layer4.yaml").read_text())


def variant(change):
    data = copy.deepcopy(BASE)
    change(data)
    return data


def set_layer(i, **kw):
    return lambda d: d["layers"][i].update(kw)


CASES = [
    # (change, expected fragment of the one-line message)
    (set_layer(1, kernal=3), "layers[1] (conv): unknown key 'kernal'"),
    (lambda d: d.update(bogus=1), "unknown key 'bogus'"),
    (lambda d: d["input"].update(depth=1), "input: unknown key 'depth'"),
    (lambda d: d.update(optimizer={"lr": 0.1, "mom": 0.5}), "optimizer: unknown key 'mom'"),
    (lambda d: d.pop("name"), "missing required key 'name'"),
    (lambda d: d.pop("input"), "missing required key 'input'"),
    (lambda d: d.pop("layers"), "missing required key 'layers'"),
    (lambda d: d["input"].pop("width"), "input: missing required key 'width'"),
    (lambda d: d["layers"][0].pop("kernel"), "layers[0] (conv): missing required key 'kernel'"),
    (lambda d: d["layers"][3].pop("units"), "layers[3] (full): missing required key 'units'"),
    (lambda d: d["layers"][0].pop("type"), "layers[0]: missing required key 'type'"),
    (set_layer(0, kernel="3"), "layers[0] (conv): kernel: '3' has the wrong type"),
    (set_layer(0, kernel=True), "layers[0] (conv): kernel: true has the wrong type"),
    (set_layer(0, kernel=None), "layers[0] (conv): kernel: null has the wrong type"),  # `kernel:` left empty
    (lambda d: d["layers"].append(None), "layers[4]: expected a mapping, got null"),
    (set_layer(0, filters=2.5), "layers[0] (conv): filters: 2.5 has the wrong type"),
    (lambda d: d.update(batch=1.5), "batch: 1.5 has the wrong type"),
    (lambda d: d.update(name=5), "name: 5 has the wrong type"),
    (lambda d: d.update(input=[28, 28, 1]), "input: expected a mapping"),
    (lambda d: d.update(layers={"a": 1}), "layers: {'a': 1} has the wrong type"),
    (lambda d: d["layers"].__setitem__(0, "conv"), "layers[0]: expected a mapping"),
    (set_layer(0, kernel=0), "layers[0] (conv): kernel: 0 is not a positive integer"),
    (set_layer(1, filters=-4), "layers[1] (conv): filters: -4 is not a positive integer"),
    (set_layer(0, stride=0), "layers[0] (conv): stride: 0 is not a positive integer"),
    (set_layer(0, pool=0), "layers[0] (conv): pool: 0 is not a positive integer"),
    (set_layer(0, padding=-1), "layers[0] (conv): padding: -1 is not a non-negative integer"),
    (set_layer(3, units=0), "layers[3] (full): units: 0 is not a positive integer"),
    (lambda d: d["input"].update(height=-3), "input: height: -3 is not a positive integer"),
    (lambda d: d.update(batch=0), "batch: 0 is not a positive integer"),
    (lambda d: d.update(optimizer={"lr": -1.0}), "optimizer: lr: -1.0 is not a positive number"),
    # a number field's bound said of a number, whatever the input's own type (an int here)
    (lambda d: d.update(optimizer={"lr": 0}), "optimizer: lr: 0 is not a positive number"),
    (lambda d: d.update(optimizer={"momentum": -1}), "optimizer: momentum: -1 is not a non-negative number"),
    (lambda d: d.update(layers=[]), "layers: must not be empty"),
    (lambda d: d["layers"].append({"type": "conv", "filters": 3, "kernel": 1}),
     "layers[4] (conv): a conv layer cannot follow a full layer"),
    (lambda d: d["layers"].pop(), "layers[2]: the network must end with a full layer"),
    (set_layer(2, kernel=9, padding=0), "layers[2] (conv): kernel 9 does not fit the padded input 7x7"),
    (set_layer(2, pool=8), "layers[2] (conv): pooling window 8 is larger than the convolution output 7x7"),
    (set_layer(0, stride=40, pool=1), "layers[1] (conv): pooling window 2 is larger than the convolution output 1x1"),
    (lambda d: (set_layer(0, stride=40, pool=1)(d), set_layer(1, kernel=5)(d)),
     "layers[1] (conv): kernel 5 does not fit the padded input 3x3"),
    (lambda d: d.update(dtype="float16"), "dtype: 'float16' is not allowed"),
    (lambda d: d.update(loss="hinge"), "loss: 'hinge' is not allowed"),
    (set_layer(0, activation="gelu"), "layers[0] (conv): activation: 'gelu' is not allowed"),
    (set_layer(3, activation="softplus"), "layers[3] (full): activation: 'softplus' is not allowed"),
    (set_layer(0, type="dense"), "layers[0]: layer type must be 'conv', 'full', 'global_avg_pool' or 'residual' (got 'dense')"),
    # the extended vocabulary (ARCH_FORMAT.md, "Extended vocabulary")
    (set_layer(1, groups=3), "layers[1] (conv): groups 3 divides neither 32 input channels nor 64 filters"),
    (set_layer(1, groups=64), "layers[1] (conv): groups 64 does not divide the 32 input channels"),
    (set_layer(1, groups=32, filters=48), "layers[1] (conv): groups 32 does not divide the 48 filters"),
    (set_layer(1, groups=0), "layers[1] (conv): groups: 0 is not a positive integer"),
    (set_layer(0, pool=1, pool_ceil=True), "layers[0] (conv): pool_ceil needs a pooling window (pool is 1)"),
    (set_layer(0, pool=1, pool_stride=2), "layers[0] (conv): pool_stride 2 needs a pooling window (pool is 1)"),
    (set_layer(0, pool_stride=0), "layers[0] (conv): pool_stride: 0 is not a positive integer"),
    (set_layer(2, pool=8, pool_stride=1), "layers[2] (conv): pooling window 8 is larger than the convolution output 7x7"),
    (set_layer(0, padding="full"), "layers[0] (conv): padding: 'full' is not allowed (expected a non-negative integer, 'same' or 'valid')"),
    (set_layer(0, padding=1.5), "layers[0] (conv): padding: 1.5 has the wrong type"),
    (set_layer(0, padding=True), "layers[0] (conv): padding: true has the wrong type"),
    (set_layer(0, kernel=9, padding="valid", stride=4, pool=8),
     "layers[0] (conv): pooling window 8 is larger than the convolution output 5x5"),
    (set_layer(0, pool_type="min"), "layers[0] (conv): pool_type: 'min' is not allowed (expected 'max' or 'avg')"),
    (set_layer(0, pool_ceil="yes"), "layers[0] (conv): pool_ceil: 'yes' has the wrong type"),
    (set_layer(0, batch_norm=1), "layers[0] (conv): batch_norm: 1 has the wrong type"),
    (set_layer(3, batch_norm="true"), "layers[3] (full): batch_norm: 'true' has the wrong type"),
    (set_layer(0, dropout=1.0), "layers[0] (conv): dropout 1.0 is not in [0, 1)"),
    (set_layer(3, dropout=-0.1), "layers[3] (full): dropout -0.1 is not in [0, 1)"),
    (set_layer(3, dropout=float("nan")), "layers[3] (full): dropout nan is not in [0, 1)"),
    (set_layer(3, dropout="0.5"), "layers[3] (full): dropout: '0.5' has the wrong type"),
    (lambda d: d["layers"].insert(3, {"type": "residual", "layers": [
        {"type": "conv", "filters": 64, "kernel": 3, "padding": 1, "pool": 2}]}),
     "layers[3] (residual): layers[0] (conv): no pooling inside a residual block (pool 2)"),
    (lambda d: d["layers"].insert(3, {"type": "residual", "shortcut": "identity", "layers": [
        {"type": "conv", "filters": 32, "kernel": 3, "padding": 1}]}),
     "layers[3] (residual): an identity shortcut needs F to keep the shape 3x3x64, but F gives 3x3x32"),
    (lambda d: d["layers"].insert(3, {"type": "residual", "layers": [
        {"type": "conv", "filters": 64, "kernel": 3}]}),
     "layers[3] (residual): the projection shortcut (1x1, stride 1) gives 3x3x64, but F gives 1x1x64"),
    (lambda d: d["layers"].insert(3, {"type": "residual", "shortcut": "zero", "layers": [
        {"type": "conv", "filters": 64, "kernel": 3, "padding": 1}]}),
     "layers[3] (residual): shortcut: 'zero' is not allowed (expected 'identity', 'projection' or 'auto')"),
    (lambda d: d["layers"].insert(3, {"type": "residual", "activation": "gelu", "layers": [
        {"type": "conv", "filters": 64, "kernel": 3, "padding": 1}]}),
     "layers[3] (residual): activation: 'gelu' is not allowed"),
    (lambda d: d["layers"].insert(3, {"type": "residual", "layers": []}),
     "layers[3] (residual): layers: must not be empty"),
    (lambda d: d["layers"].insert(3, {"type": "residual"}), "layers[3] (residual): missing required key 'layers'"),
    (lambda d: d["layers"].insert(3, {"type": "residual", "layers": [{"type": "full", "units": 3}]}),
     "layers[3] (residual): layers[0]: type: 'full' is not allowed (expected 'conv')"),
    (lambda d: d["layers"].insert(3, {"type": "residual", "layers": [
        {"type": "conv", "filters": 64, "kernel": 3, "kernal": 3}]}),
     "layers[3] (residual): layers[0]: unknown key 'kernal'"),
    (lambda d: d["layers"].append({"type": "residual", "layers": [{"type": "conv", "filters": 1, "kernel": 1}]}),
     "layers[4] (residual): a residual block cannot follow a full layer"),
    (lambda d: d["layers"].append({"type": "global_avg_pool"}),
     "layers[4] (global_avg_pool): global_avg_pool cannot follow a full layer"),
    (lambda d: d["layers"].insert(0, {"type": "global_avg_pool"}),
     "layers[0] (global_avg_pool): global_avg_pool must follow a conv layer or a residual block"),
    (lambda d: d["layers"].__setitem__(slice(3, 3), [{"type": "global_avg_pool"}, {"type": "global_avg_pool"}]),
     "layers[4] (global_avg_pool): global_avg_pool must follow a conv layer or a residual block"),
    (lambda d: d["layers"].insert(3, {"type": "global_avg_pool", "size": 2}),
     "layers[3] (global_avg_pool): unknown key 'size'"),
]


@pytest.mark.parametrize("change, expected", CASES, ids=[c[1][:50] for c in CASES])
def test_invalid_architecture_names_the_place(change, expected):
    with pytest.raises(ArchError) as info:
        parse_arch(variant(change), "arch.yaml")
    message = str(info.value)
    assert message == f"arch.yaml: {expected}" or message.startswith(f"arch.yaml: {expected}")
    assert "\n" not in message


@pytest.mark.parametrize("text, expected", [
    ("name: [unclosed", "not valid YAML at line 2, column 1: did not find expected ',' or ']' "
                        r"\(while parsing a flow sequence from line 1, column 7\)"),
    ("- 1\n- 2\n", "the file must be a YAML mapping, not list"),
    ("", "the file is empty"),
    ("!!python/object/apply:os.system ['echo pwned']\n", "line 1: YAML tag refused"),
    ("name: !!python/name:os.system x\n", "line 1: YAML tag refused"),
])
def test_unreadable_files(tmp_path, text, expected):
    path = tmp_path / "arch.yaml"
    path.write_text(text)
    with pytest.raises(ArchError, match=expected):
        load_arch(path)


def test_missing_file(tmp_path):
    with pytest.raises(ArchError, match="no such file"):
        load_arch(tmp_path / "nope.yaml")


def test_yaml_tag_constructs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "arch.yaml"
    path.write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ArchError):
        load_arch(path)
    assert not marker.exists()


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_load_and_list_only_contract_ops(path):
    arch = load_arch(path)
    keys = op_keys(arch)
    assert len(keys) == len(set(keys))
    assert {k.op for k in keys} <= op_names()


def test_simplenn_sizes_of_the_7_layer_network():
    arch = load_arch(ROOT / "examples" / "cifar10-layer7.yaml")
    sizes = arch.sizes()
    assert [(s.a_conv, s.a_next, s.d_next) for s in sizes[:6]] == [
        (32, 32, 32), (32, 16, 32), (16, 16, 64), (16, 8, 64), (8, 8, 64), (8, 4, 128)]
    assert sizes[6].n_in == 4 * 4 * 128


def test_floor_in_sizes():
    data = variant(lambda d: d.update(input={"height": 9, "width": 12, "channels": 2},
                                      layers=[{"type": "conv", "filters": 4, "kernel": 3, "stride": 2, "pool": 2},
                                              {"type": "full", "units": 3}]))
    (conv, full) = parse_arch(data).sizes()
    assert (conv.a_conv, conv.b_conv) == ((9 - 3) // 2 + 1, (12 - 3) // 2 + 1) == (4, 5)
    assert (conv.a_next, conv.b_next) == (2, 2)
    assert full.n_in == 2 * 2 * 4


def test_op_list_leaves_out_ops_not_run():
    data = variant(lambda d: d.update(layers=[
        {"type": "conv", "filters": 4, "kernel": 3, "padding": 0, "pool": 1, "activation": "none"},
        {"type": "conv", "filters": 4, "kernel": 3, "padding": 1, "pool": 2},
        {"type": "full", "units": 10}]))
    keys = op_keys(parse_arch(data))
    ops_of = lambda m, phase: [k.op for k in keys if k.layer == m and k.phase == phase]
    assert ops_of(1, "forward") == ["phi", "conv_matmul", "bias"]
    assert ops_of(1, "backward") == ["conv_grad_W", "bias_grad"]  # no input gradient for layer 1
    assert ops_of(2, "backward") == ["pool_grad", "activation_grad", "conv_grad_W", "bias_grad",
                                     "conv_grad_input", "phi_grad", "pad_grad"]
    assert ops_of(3, "forward") == ["flatten", "full_matmul", "bias"]  # the output layer is linear
    assert ops_of(4, "forward") == ["loss"] and ops_of(4, "backward") == ["loss_grad"]


def test_cli_bad_file_one_line_exit_2(tmp_path):
    path = tmp_path / "arch.yaml"
    path.write_text(yaml.safe_dump(variant(set_layer(2, kernal=3))))
    result = CliRunner().invoke(app, ["measure", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"costmodel: error: {path}: layers[2] (conv): unknown key 'kernal' (did you mean 'kernel'?)"
    assert result.stdout == ""


def test_cli_process_bad_file_no_traceback(tmp_path):
    path = tmp_path / "arch.yaml"
    path.write_text("layers: [{type: conv, filters: 3, kernel: 99}]\nname: x\ninput: {height: 4, width: 4, channels: 1}\n")
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "measure", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "layers[0] (conv): kernel 99 does not fit the padded input 4x4" in proc.stderr


def test_version_and_help():
    runner = CliRunner()
    assert runner.invoke(app, ["--version"]).stdout.startswith("costmodel ")
    assert "measure" in runner.invoke(app, ["--help"]).stdout
