"""predict as a user runs it: the shipped reference profile, the error for a missing setting,
the one-line warning, and the per-op JSON of DESIGN.md."""

import json

from typer.testing import CliRunner

from cli import app
from costmodel.model.arch import load_arch
from costmodel.model.ops import op_keys
from costmodel.machine.profile import embedded_profile_path, load_profile

from tests.conftest import COURSE_EXAMPLES as EXAMPLES  # the shipped profile predates the new ops


def test_reference_profile_ships_and_covers_both_impls_and_dtypes():
    profile = load_profile(embedded_profile_path())
    for dtype in ("float32", "float64"):
        for impl in ("index", "strided"):
            assert profile.entry(dtype, impl, 2).ops


def test_predict_without_own_profile_warns_once_and_gives_every_op(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    runner = CliRunner()
    for path in EXAMPLES:
        result = runner.invoke(app, ["predict", str(path), "--format", "json", "--threads", "2"])
        assert result.exit_code == 0, result.stderr
        assert result.stderr.count("\n") == 1 and "reference profile" in result.stderr
        data = json.loads(result.stdout)
        keys = [(o["layer"], o["op"], o["phase"]) for o in data["ops"]]
        assert keys == [(k.layer, k.op, k.phase) for k in op_keys(load_arch(path))]
        costs = json.loads(runner.invoke(app, ["costs", str(path), "--format", "json"]).stdout)
        for row, cost in zip(data["ops"], costs["ops"], strict=True):  # predict costs the ops as `costs` does
            assert {k: row[k] for k in ("flops", "bytes_read", "bytes_written")} == \
                {k: cost[k] for k in ("flops", "bytes_read", "bytes_written")}
            assert row["seconds_low"] <= row["seconds"] <= row["seconds_high"]


def test_missing_setting_names_the_calibrate_command(tmp_path, monkeypatch):
    from costmodel.machine import fingerprint

    monkeypatch.setattr(fingerprint, "available_cores", lambda: 64)  # 7 threads are possible here: calibrate them
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["predict", str(EXAMPLES[0]), "--threads", "7"])
    assert result.exit_code == 2  # a profile error names the file, exit 2 (issue 12)
    assert "run `costmodel calibrate --dtype float32 --impl index --threads 7`" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_profile_without_an_ops_model_is_refused_in_one_line(tmp_path, monkeypatch):
    """A profile (hand-edited, or of an older costmodel) that has no model for one of the
    network's ops, whose model uses a feature this costmodel does not know, or whose model has
    no positive coefficient (it would price the op at 0 s), is input that
    cannot be used: one line naming the op and the command that calibrates it, exit 2."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    data = json.loads(embedded_profile_path().read_text())
    entry = next(e for e in data["entries"] if (e["dtype"], e["impl"]) == ("float32", "index"))
    missing, unknown = tmp_path / "missing.json", tmp_path / "unknown.json"
    key = next(k for k in entry["ops"] if k.startswith("conv_matmul"))
    model = entry["ops"].pop(key)
    missing.write_text(json.dumps(data))
    entry["ops"][key] = {**model, "features": ["page_faults", *model["features"][1:]]}
    unknown.write_text(json.dumps(data))
    zero = tmp_path / "zero.json"
    entry["ops"][key] = {**model, "coef": [0.0] * len(model["coef"])}
    zero.write_text(json.dumps(data))
    for path, words in ((missing, f"has no model for op {key!r}: run `costmodel calibrate --dtype float32 --impl index"),
                        (unknown, f"model of {key!r} uses feature 'page_faults'"),
                        (zero, f"model of {key!r} has no positive coefficient")):
        result = CliRunner().invoke(app, ["predict", str(EXAMPLES[0]), "--profile", str(path), "--threads",
                                          str(entry["threads"])])
        assert result.exit_code == 2, result.stderr
        assert words in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith(f"costmodel: error: {path}: "), result.stderr
