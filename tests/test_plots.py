"""Plots: PNG and PDF written atomically, other suffixes refused in one line, and the --plot
options of predict, compare and sweep."""

import pytest
from typer.testing import CliRunner

from cli import app
from costmodel.errors import UsageError
from costmodel.machine.predict import predict
from costmodel.machine.profile import save_profile
from costmodel.machine.sweep import sweep
from costmodel.model.arch import load_arch
from costmodel.present.data import prediction_report, sweep_report
from costmodel.present.plots import (figure_compare, figure_predict, figure_sweep, plot_compare, plot_format,
                                     plot_predict, plot_sweep)

from tests.conftest import ROOT
from tests.test_explain import synthetic_profile

DIGITS = ROOT / "examples" / "digits-small.yaml"
MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".pdf": b"%PDF-"}


@pytest.fixture(scope="module")
def profile():
    return synthetic_profile()


@pytest.fixture(scope="module")
def result(profile):
    return predict(load_arch(DIGITS), profile, threads=2)


def _fake_measure(result):
    """calib.measure.measure replaced: the predicted times, 20 % more for the index
    manipulation and 5 % less for the rest, as if measured (no clock, no kernel)."""
    def measure(arch, **kwargs):
        ops = [{k: o[k] for k in ("layer", "layer_type", "op", "phase")}
               | {"seconds": o["seconds"] * (1.2 if o["kind"] == "index manipulation" else 0.95)}
               for o in prediction_report(result)["ops"]]
        total = sum(o["seconds"] for o in ops)
        return {"threads": 2, "total_seconds": total, "step_seconds": total * 1.02, "coverage": 1 / 1.02,
                "ops": [o | {"fraction": o["seconds"] / total} for o in ops]}

    return measure


@pytest.fixture
def compared(monkeypatch, profile, result):
    """What calib.compare_commands.compare returns, from the fake measurement."""
    import calib.measure
    from calib.compare_commands import compare

    monkeypatch.setattr(calib.measure, "measure", _fake_measure(result))
    return compare(load_arch(DIGITS), profile, impl="index", threads=2, steps=1, warmup=0)


def _written(path) -> bytes:
    data = path.read_bytes()
    assert data.startswith(MAGIC[path.suffix]) and len(data) > 1000
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    return data


@pytest.mark.parametrize("suffix", [".png", ".pdf"])
def test_predict_plot_writes_png_and_pdf(tmp_path, profile, result, suffix):
    path = tmp_path / f"predict{suffix}"
    plot_predict(result, profile.ceilings, path)
    _written(path)


def test_compare_plot(tmp_path, profile, compared):
    path = tmp_path / "compare.png"
    plot_compare(compared, profile.ceilings, path)
    _written(path)


def _sweep(profile, by: str) -> dict:
    arch = load_arch(DIGITS)
    return sweep_report(arch, "layers[0].filters", sweep(arch, profile, "layers[0].filters", [8, 16], threads=2),
                        by, "index")


@pytest.mark.parametrize("by", ["kind", "op"])
def test_sweep_plot(tmp_path, profile, by):
    path = tmp_path / f"sweep-{by}.pdf"
    plot_sweep(_sweep(profile, by), path)
    _written(path)


# -- what the figures show -------------------------------------------------------------------

def _bars(ax) -> dict[str, int]:
    """Legend label -> number of bar segments drawn with it."""
    return {c.get_label(): len(c.patches) for c in ax.containers}


@pytest.mark.parametrize("by, groups", [("kind", {"matrix product", "index manipulation", "elementwise", "loss",
                                                   "update"}),
                                         ("layer", {"layer 1", "layer 2", "layer 3", "layer 4", "layer 5"}),
                                         ("phase", {"forward", "backward", "update"})])
def test_the_predict_figure_shows_the_shares_by_the_chosen_grouping(profile, result, by, groups):
    fig = figure_predict(result, profile.ceilings, by)
    shares, roof, bandwidth = fig.axes[:3]
    assert shares.get_title() == f"Shares by {'op kind' if by == 'kind' else by}"
    assert shares.get_ylabel() == "share of the step (%)"
    assert [t.get_text() for t in shares.get_xticklabels()] == ["FLOPs", "bytes", "time\n(predicted)"]
    bars = _bars(shares)
    assert set(bars) <= groups and all(n == 3 for n in bars.values())  # one segment in each of the 3 bars
    assert {"layer": 5, "phase": 3}.get(by, len(bars)) == len(bars)
    assert (roof.get_xlabel(), roof.get_ylabel()) == ("arithmetic intensity (FLOP/byte)", "achieved FLOP/s")
    assert bandwidth.get_xlabel() == "bytes the op reads and writes"
    assert fig._suptitle.get_text().startswith("Predicted SG step of digits-small: I=32, float32, impl index")


def test_the_predict_figure_by_op_names_the_largest_ops_and_sums_the_rest(profile, result):
    bars = _bars(figure_predict(result, profile.ceilings, "op").axes[0])
    assert len(bars) == 10 and f"other ops ({len(result.rows) - 9})" in bars
    assert sum("[phi_grad]" in label for label in bars) >= 1  # named in the course's notation


def test_the_sweep_figure_has_one_bar_per_value(profile):
    fig = figure_sweep(_sweep(profile, "phase"))
    stacked, times = fig.axes[:2]
    assert [t.get_text() for t in stacked.get_xticklabels()] == ["$d^{2}$=8", "$d^{2}$=16"]
    assert set(_bars(stacked)) == {"forward", "backward", "update"}
    assert times.get_ylabel() == "predicted time of the step" and times.get_xlabel() == "layers[0].filters ($d^{2}$)"


def test_the_compare_figure_shows_predicted_beside_measured(profile, compared):
    fig = figure_compare(compared, profile.ceilings, "layer")
    shares, scatter = fig.axes[:2]
    assert [t.get_text() for t in shares.get_xticklabels()] == ["FLOPs", "bytes", "predicted", "measured"]
    assert all(n == 4 for n in _bars(shares).values())
    assert (scatter.get_xlabel(), scatter.get_ylabel()) == ("measured time per op", "predicted time per op")


def test_the_predict_command_plots_by_its_by(tmp_path, monkeypatch, profile_path):
    import costmodel.present.plots as plots

    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append(fig.axes[0].get_title()))
    for by in ("kind", "layer", "phase"):
        done = CliRunner().invoke(app, ["predict", str(DIGITS), "--profile", str(profile_path), "--threads", "2",
                                        "--by", by, "--plot", str(tmp_path / "p.png")])
        assert done.exit_code == 0, done.stderr
    assert drawn == ["Shares by op kind", "Shares by layer", "Shares by phase"]


@pytest.mark.parametrize("name, shown", [("plot.svg", ".svg"), ("plot.PNG.jpg", ".jpg"), ("plot", "(none)")])
def test_other_suffixes_are_refused_in_one_line(tmp_path, profile, result, name, shown):
    path = tmp_path / name
    with pytest.raises(UsageError) as info:
        plot_predict(result, profile.ceilings, path)
    assert str(info.value) == f"--plot {path}: the suffix {shown} is not one of .png, .pdf"
    assert not path.exists()
    assert plot_format(tmp_path / "UPPER.PDF") == "pdf"


def test_a_failed_drawing_leaves_the_old_file_alone(tmp_path, monkeypatch, profile, result):
    from matplotlib.figure import Figure

    path = tmp_path / "predict.png"
    path.write_bytes(b"old")

    def broken(self, fname, **kwargs):
        fname.write(b"half a picture")
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(RuntimeError):
        plot_predict(result, profile.ceilings, path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["predict.png"]


# -- the --plot options ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def profile_path(tmp_path_factory, profile):
    path = tmp_path_factory.mktemp("profile") / "profile.json"
    save_profile(profile, path)
    return path


def test_predict_and_sweep_commands_draw_the_plot(tmp_path, profile_path):
    runner = CliRunner()
    png = tmp_path / "predict.png"
    done = runner.invoke(app, ["predict", str(DIGITS), "--profile", str(profile_path), "--threads", "2",
                               "--plot", str(png)])
    assert done.exit_code == 0, done.stderr
    assert f"plot written to {png}\n" in done.stderr and "Predicted SG step" in done.stdout
    _written(png)
    pdf = tmp_path / "sweep" / "sweep.pdf"
    pdf.parent.mkdir()
    done = runner.invoke(app, ["sweep", str(DIGITS), "--vary", "batch=1,8", "--profile", str(profile_path),
                               "--threads", "2", "--plot", str(pdf)])
    assert done.exit_code == 0, done.stderr
    _written(pdf)


@pytest.mark.parametrize("command", [["predict"], ["sweep", "--vary", "batch=1,8"]])
def test_a_bad_suffix_is_exit_2_and_writes_nothing(tmp_path, profile_path, command):
    out = tmp_path / "plot.svg"
    done = CliRunner().invoke(app, [command[0], str(DIGITS), *command[1:], "--profile", str(profile_path),
                                    "--threads", "2", "--plot", str(out)])
    assert done.exit_code == 2
    assert done.stderr == f"costmodel: error: --plot {out}: the suffix .svg is not one of .png, .pdf\n"
    assert list(tmp_path.iterdir()) == []


def test_compare_refuses_a_bad_suffix_before_measuring(tmp_path, monkeypatch, profile_path):
    import calib.compare_commands

    def measured(*args, **kwargs):
        raise AssertionError("compare measured steps although the plot could not be written")

    monkeypatch.setattr(calib.compare_commands, "compare", measured)
    out = tmp_path / "compare.gif"
    done = CliRunner().invoke(app, ["compare", str(DIGITS), "--profile", str(profile_path), "--plot", str(out)])
    assert done.exit_code == 2
    assert done.stderr == f"costmodel: error: --plot {out}: the suffix .gif is not one of .png, .pdf\n"


def test_compare_command_draws_the_comparison(tmp_path, monkeypatch, profile_path, result):
    import calib.measure

    monkeypatch.setattr(calib.measure, "measure", _fake_measure(result))
    out = tmp_path / "compare.png"
    done = CliRunner().invoke(app, ["compare", str(DIGITS), "--profile", str(profile_path), "--plot", str(out)])
    assert done.exit_code == 0, done.stderr
    assert "Predicted against measured" in done.stdout
    _written(out)


def test_every_op_kind_has_a_colour():
    from costmodel.machine.backends.torch import FUSED, OTHER_KIND
    from costmodel.machine.parallel import COMMUNICATION
    from costmodel.model.ops import OP_KINDS
    from costmodel.present.plots import KIND_COLORS

    assert set(KIND_COLORS) == (set(OP_KINDS) | {kind for _, kind, _ in FUSED.values()} | {OTHER_KIND}
                                | {COMMUNICATION})
