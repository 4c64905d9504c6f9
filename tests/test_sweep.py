"""`costmodel sweep` and the Python API: parsing --vary, one prediction per value, the
DataFrames and their columns, and an `import costmodel` that stays light."""

import json
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

import costmodel
from cli import app
from costmodel.api import GROUP_COLUMNS, PREDICT_COLUMNS, STEP_ATTRS
from costmodel.model.arch import load_arch
from costmodel.errors import CostModelError, UsageError
from costmodel.api import COSTS_COLUMNS as COLUMNS
from costmodel.machine.profile import save_profile
from costmodel.machine.sweep import parse_vary, sweep as sweep_steps, symbol
from costmodel.present.data import sweep_report

from tests.conftest import ROOT, predicted


def sweep(arch, profile, name, values, by="kind", **options) -> dict:
    return sweep_report(arch, name, sweep_steps(arch, profile, name, values, **options), by, "index")
from tests.test_explain import synthetic_profile

MNIST = ROOT / "examples" / "mnist-demo-layer4.yaml"
DIGITS = ROOT / "examples" / "digits-small.yaml"


@pytest.fixture(scope="module")
def profile():
    return synthetic_profile()


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory, profile):
    path = tmp_path_factory.mktemp("profile") / "profile.json"
    save_profile(profile, path)
    return path


# -- --vary ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("batch=1,8,64,512", ("batch", [1, 8, 64, 512])),
    (" layers[1].filters = 16, 32 ,64 ", ("layers[1].filters", [16, 32, 64])),
    ("dtype=float32,float64", ("dtype", ["float32", "float64"])),
    ("optimizer.lr=0.1,1e-2", ("optimizer.lr", [0.1, 0.01])),
])
def test_parse_vary(text, expected):
    assert parse_vary(text) == expected


@pytest.mark.parametrize("text, message", [
    ("batch", "--vary 'batch': no '='; expected NAME=V1,V2,... such as batch=1,8,64,512"),
    ("=1,2", "--vary '=1,2': no name before '='"),
    ("batch=", "--vary 'batch=': no values after '='"),
    ("batch=1,,8", "--vary 'batch=1,,8': value 2 is empty"),
    ("batch=8,1,8", "--vary 'batch=8,1,8': value 8 is listed twice"),
])
def test_parse_vary_errors_are_one_line_naming_the_bad_part(text, message):
    with pytest.raises(UsageError) as info:
        parse_vary(text)
    assert str(info.value) == message


@pytest.mark.parametrize("vary, message", [
    ("layers[9].filters=16,32", "layers[9].filters: no such place in architecture 'mnist-demo-layer4'"),
    ("layers[0].filtres=16", "layers[0].filtres=16: layers[0] (conv): unknown key 'filtres'"),
    ("batch=8,0", "batch=0: batch: 0 is not a positive integer"),
    ("batch=8,x", "batch=x: batch: 'x' has the wrong type"),
])
def test_values_that_do_not_fit_the_architecture_fail_before_any_prediction(profile, vary, message):
    name, values = parse_vary(vary)
    with pytest.raises(CostModelError) as info:
        sweep(load_arch(MNIST), profile, name, values, threads=2)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.mark.parametrize("name, expected", [
    ("batch", "I"), ("layers[1].filters", "d^3"), ("layers[2].units", "n^4"), ("layers[0].kernel", "h^1"),
    ("layers[0].pool", "h^1_pool"), ("layers[9].filters", "d^{11}"), ("input.height", "a^1"), ("dtype", "dtype"),
])
def test_symbols_in_the_course_notation(name, expected):
    assert symbol(name) == expected


# -- one prediction per value ----------------------------------------------------------------

@pytest.mark.parametrize("name, values, by", [("batch", [1, 8, 64, 512], "kind"),
                                              ("layers[1].filters", [16, 32, 64], "op"),
                                              ("layers[0].kernel", [3, 5], "layer")])
def test_sweep_equals_predict_at_each_value(profile, name, values, by):
    arch = load_arch(MNIST)
    result = sweep(arch, profile, name, values, threads=2, by=by)
    assert result["values"] == values and [p["value"] for p in result["points"]] == values
    for value, point in zip(values, result["points"]):
        varied = arch.with_batch(value) if name == "batch" else arch.model_copy(
            update={"layers": _with_layer_field(arch, name, value)})
        expected = predicted(varied, profile, by, threads=2)
        assert point["total_seconds"] == pytest.approx(expected["total_seconds"])
        groups = [{k: v for k, v in g.items() if k not in ("name", "mathtext")} for g in point["groups"]]
        assert groups == expected["ops" if by == "op" else "groups"]


def _with_layer_field(arch, name, value):
    index, field = int(name[len("layers["):name.index("]")]), name.rsplit(".", 1)[1]
    layers = list(arch.layers)
    layers[index] = layers[index].model_copy(update={field: value})
    return layers


def test_sweep_command_table_csv_json(profile_path, profile):
    runner = CliRunner()
    base = ["sweep", str(DIGITS), "--vary", "batch=1,8", "--profile", str(profile_path), "--threads", "2"]
    table = runner.invoke(app, base)
    assert table.exit_code == 0, table.stderr
    assert "I=1" in table.stdout and "I=8" in table.stdout and "matrix product" in table.stdout
    csv = runner.invoke(app, base + ["--format", "csv", "--by", "op"]).stdout.splitlines()
    assert csv[0] == ("batch,layer,layer_type,op,phase,kind,seconds,seconds_low,seconds_high,fraction,flops,bytes,"
                      "step_seconds")
    n_ops = len(predicted(load_arch(DIGITS), profile, threads=2)["ops"])
    assert len(csv) == 1 + 2 * n_ops
    data = json.loads(runner.invoke(app, base + ["--format", "json"]).stdout)
    assert [p["value"] for p in data["points"]] == [1, 8] and data["symbol"] == "I"


def test_sweep_command_bad_vary_is_one_line_exit_2(profile_path):
    result = CliRunner().invoke(app, ["sweep", str(DIGITS), "--vary", "batch:1,8", "--profile", str(profile_path)])
    assert result.exit_code == 2
    assert result.stderr == ("costmodel: error: --vary 'batch:1,8': no '='; expected NAME=V1,V2,... "
                             "such as batch=1,8,64,512\n")


# -- the Python API --------------------------------------------------------------------------

def test_predict_frame_has_the_documented_columns_and_the_predictions(profile):
    frame = costmodel.predict_frame(DIGITS, profile, threads=2)
    result = predicted(load_arch(DIGITS), profile, threads=2)
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == PREDICT_COLUMNS
    assert frame["seconds"].tolist() == pytest.approx([o["seconds"] for o in result["ops"]])
    assert (frame["intensity"] == frame["flops"] / frame["bytes"]).all()
    assert set(frame.attrs) == {*STEP_ATTRS, "profile"} and frame.attrs["total_seconds"] == pytest.approx(frame.seconds.sum())
    assert {"path", "reference", "machine_match", "differences", "transferred"} <= set(frame.attrs["profile"])
    kinds = costmodel.predict_frame(load_arch(DIGITS), profile, threads=2, batch=8, by="kind")
    assert list(kinds.columns) == ["kind", *GROUP_COLUMNS] and kinds.attrs["batch"] == 8
    assert kinds["fraction"].sum() == pytest.approx(1.0)


def test_costs_frame_is_the_cost_table_and_varies(profile):
    arch_dict = load_arch(DIGITS).model_dump()
    frame = costmodel.costs_frame(arch_dict, impl="strided", batch=4)
    pd.testing.assert_frame_equal(frame, costmodel.costs_frame(load_arch(DIGITS), impl="strided", batch=4))
    assert list(frame.columns) == COLUMNS and frame.attrs["flop_convention"].startswith("FLOPs:")
    many = costmodel.costs_frame(DIGITS, vary={"batch": [1, 2], "layers[0].filters": [8, 16]})
    assert list(many.columns) == ["variant", "layers[0].filters", "batch", *COLUMNS]
    assert many["variant"].nunique() == 4


def test_sweep_frame_is_one_row_per_value_and_group(profile):
    frame = costmodel.sweep_frame(DIGITS, profile, vary="layers[1].filters=16,32", threads=2)
    assert list(frame.columns) == ["layers[1].filters", "kind", "ops", "seconds", "seconds_low", "seconds_high",
                                   "fraction", "flops", "bytes", "step_seconds"]
    assert frame.groupby("layers[1].filters")["fraction"].sum().tolist() == pytest.approx([1.0, 1.0])
    assert frame.attrs["symbol"] == "d^3"
    same = costmodel.sweep_frame(DIGITS, profile, vary={"layers[1].filters": [16, 32]}, threads=2)
    pd.testing.assert_frame_equal(frame, same)
    with pytest.raises(UsageError, match="give one name and its values, not 2"):
        costmodel.sweep_frame(DIGITS, profile, vary={"batch": [1], "layers[1].filters": [16]})


def test_explain_report_as_facts_or_text(profile):
    facts = costmodel.explain_report(DIGITS, profile, threads=2)
    assert facts["arch"] == "digits-small" and facts["sections"]
    text = costmodel.explain_report(DIGITS, profile, threads=2, text=True)
    assert text.startswith("Where the time of an SG step of digits-small goes (predicted)\n")


def test_import_costmodel_stays_light():
    code = ("import sys, costmodel; heavy = [m for m in ('pandas', 'sympy', 'matplotlib', 'sklearn') "
            "if m in sys.modules]; print(','.join(heavy)); print('predict_frame' in dir(costmodel))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["", "True"]


def test_the_api_names_survive_importing_the_modules_of_the_same_stem():
    import costmodel.machine.predict  # noqa: F401  (binds costmodel.machine.predict to the module)
    import costmodel.machine.sweep  # noqa: F401

    assert callable(costmodel.predict_frame) and callable(costmodel.sweep_frame)
    with pytest.raises(AttributeError, match="no attribute 'predict_frames'"):
        costmodel.predict_frames
