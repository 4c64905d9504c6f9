"""Predicting data-parallel SG (costmodel.machine.backends.parallel): one worker's rows (its
compute at I/P, then the allreduces), the composition, speedup and efficiency against one worker,
the refusals, the sweep over the workers and its figure, and explain's section. On synthetic
profiles (tests/test_explain.py) with a network section; no clock, no torch."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

import costmodel
from cli import app
from costmodel.errors import UsageError
from costmodel.machine.backends.parallel import (ALLREDUCE, DataParallelBackend, Setting, predict_data_parallel,
                                                 worker_batch)
from costmodel.machine.backends import backend as get_backend
from costmodel.machine.parallel import (COMMUNICATION, bucket_collectives, communication_bound_batch, compose,
                                        gradient_tensors, ring_allreduce_seconds)
from costmodel.machine.links import LINKS, Link, given_link, network_link
from costmodel.machine.predict import predict
from costmodel.machine.profile import Network, load_profile, save_profile
from costmodel.machine.sweep import sweep
from costmodel.model.arch import load_arch
from costmodel.present.data import long_columns, long_rows, prediction_report, sweep_report
from costmodel.present.explain import explain
from costmodel.units import fmt_seconds

from tests.conftest import ROOT
from tests.test_explain import synthetic_profile

DIGITS = ROOT / "examples" / "digits-small.yaml"  # float32, I = 32 (conv, conv, full, full)
MLP = ROOT / "examples" / "mnist-mlp.yaml"
GOLDEN_PROFILE = ROOT / "tests" / "golden" / "profile.json"  # has a torch calibration
ALPHA, BETA = 100e-6, 1e-9  # the synthetic network: 100 us per message, 1 GB/s
runner = CliRunner()


def with_network(profile, alpha=ALPHA, beta=BETA):
    return profile.model_copy(update={"network": Network(alpha_seconds=alpha, beta_seconds_per_byte=beta,
                                                         workers=2, link="loopback")})


@pytest.fixture(scope="module")
def profile():
    return with_network(synthetic_profile())


@pytest.fixture(scope="module")
def bare_profile():
    """No network section."""
    return synthetic_profile()


@pytest.fixture(scope="module")
def digits():
    return load_arch(DIGITS)


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory, profile):
    path = tmp_path_factory.mktemp("dp") / "profile.json"
    save_profile(profile, path)
    return path


@pytest.fixture(scope="module")
def bare_path(tmp_path_factory, bare_profile):
    path = tmp_path_factory.mktemp("dp-bare") / "profile.json"
    save_profile(bare_profile, path)
    return path


def setting(profile, P, composition="sum", link=None):
    return Setting(P, network_link(profile.network, link), composition)


def dp_predict(arch, profile, P, composition="sum", **options):
    return predict_data_parallel(arch, profile, setting(profile, P, composition), threads=2, **options)


def _error(stderr: str) -> str:
    """The one error line (a warning line about the synthetic profile's machine may come first)."""
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("costmodel: error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


# -- the rows --------------------------------------------------------------------------------

def test_the_rows_are_the_single_machine_rows_at_I_over_P_then_one_allreduce_per_layer(digits, profile):
    P = 4
    pred = dp_predict(digits, profile, P)
    worker = predict(digits.with_batch(digits.batch // P), profile, threads=2)
    compute = [r for r in pred.rows if r.phase != COMMUNICATION]
    comm = [r for r in pred.rows if r.phase == COMMUNICATION]
    assert pred.rows[:len(compute)] == tuple(compute)  # the allreduces come after the compute rows
    assert [(r.row.key, r.seconds, r.seconds_low, r.seconds_high, r.terms) for r in compute] == \
           [(r.row.key, r.seconds, r.seconds_low, r.seconds_high, r.terms) for r in worker.rows]
    # the NumPy reference: one allreduce per layer with weights, as the backward produces them
    tensors = gradient_tensors(digits)
    assert [r.layer for r in comm] == [4, 3, 2, 1]
    for r in comm:
        mine = [t for t in tensors if t.layer == r.layer]
        assert (r.name, r.kind, r.flops, r.bytes) == (ALLREDUCE, COMMUNICATION, 0, sum(t.nbytes for t in mine))
        assert r.seconds == pytest.approx(sum(ring_allreduce_seconds(t.nbytes, P, ALPHA, BETA) for t in mine))
        assert r.terms["latency"] == pytest.approx(len(mine) * 2 * (P - 1) * ALPHA)
        assert r.terms["latency"] + r.terms["bandwidth"] == pytest.approx(r.seconds)
        assert r.row.extra["sent_bytes"] == pytest.approx(2 * (P - 1) / P * r.bytes)
        assert r.seconds_low == r.seconds == r.seconds_high  # no interval of their own
        assert r.row.text == "allreduce(dW$m, db$m)"
    assert pred.batch == digits.batch and pred.data_parallel.worker_batch == digits.batch // P
    assert all(r.fraction == pytest.approx(r.seconds / pred.total_seconds) for r in pred.rows)


def test_the_torch_backend_has_one_allreduce_per_ddp_bucket(digits):
    profile = with_network(load_profile(GOLDEN_PROFILE))
    P = 2
    pred = dp_predict(digits, profile, P, backend="torch")
    comm = [r for r in pred.rows if r.phase == COMMUNICATION]
    buckets = bucket_collectives(gradient_tensors(digits), P, ALPHA, BETA)
    assert [(r.layer, r.layer_type, r.bytes) for r in comm] == [(0, "bucket", b.nbytes) for b in buckets]
    assert [r.seconds for r in comm] == pytest.approx([b.seconds for b in buckets])
    worker = predict(digits.with_batch(digits.batch // P), profile, threads=2, backend="torch")
    assert [r.row.key for r in pred.rows if r.phase != COMMUNICATION] == [r.row.key for r in worker.rows]
    assert pred.backend == "torch" and pred.impl == "torch"


def test_the_wrapper_backend_lists_the_same_rows(digits, profile):
    link = network_link(profile.network)
    be = DataParallelBackend(get_backend("numpy"), 4, link)
    from costmodel.machine.timemodel import Machine

    rows = be.rows(digits, "index", 2, Machine.of(profile.fingerprint))
    pred = dp_predict(digits, profile, 4)
    assert [r.key for r in rows] == [r.row.key for r in pred.rows]
    assert "4 workers" in be.setting("index")


# -- composition, P = 1, speedup ---------------------------------------------------------------

def test_sum_is_compute_plus_communication_and_the_fractions_add_up_to_one(digits, profile):
    pred = dp_predict(digits, profile, 4)
    dp = pred.data_parallel
    compute = sum(r.seconds for r in pred.rows if r.phase != COMMUNICATION)
    comm = sum(r.seconds for r in pred.rows if r.phase == COMMUNICATION)
    assert (dp.compute_seconds, dp.communication_seconds) == (pytest.approx(compute), pytest.approx(comm))
    assert pred.total_seconds == pytest.approx(compute + comm) == dp.step_seconds
    assert dp.exposed_communication_seconds == dp.communication_seconds and dp.hidden_communication_seconds == 0
    assert sum(r.fraction for r in pred.rows) == pytest.approx(1.0)
    # the interval composes the compute rows' bounds; the allreduces add their own time to both
    low = sum(r.seconds_low for r in pred.rows)
    high = sum(r.seconds_high for r in pred.rows)
    assert (pred.total_seconds_low, pred.total_seconds_high) == (pytest.approx(low), pytest.approx(high))


@pytest.mark.parametrize("composition", ["sum", "overlap"])
def test_with_a_step_interval_the_compute_interval_is_composed_with_the_allreduces(digits, profile, composition):
    entries = [e.model_copy(update={"step_interval": (0.8, 1.3), "step_networks": 40}) for e in profile.entries]
    stepped = profile.model_copy(update={"entries": entries})
    P = 4
    worker = predict(digits.with_batch(digits.batch // P), stepped, threads=2)
    assert (worker.total_seconds_low, worker.total_seconds_high) == \
           (pytest.approx(0.8 * worker.total_seconds), pytest.approx(1.3 * worker.total_seconds))
    pred = dp_predict(digits, stepped, P, composition)
    dp = pred.data_parallel
    assert pred.total_seconds_low < pred.total_seconds < pred.total_seconds_high
    assert "composed with the allreduces" in pred.interval and worker.interval in pred.interval
    if composition == "sum":  # the compute's bounds plus the allreduces, which have none
        assert pred.total_seconds_low == pytest.approx(0.8 * dp.compute_seconds + dp.communication_seconds)
        assert pred.total_seconds_high == pytest.approx(1.3 * dp.compute_seconds + dp.communication_seconds)
    else:
        assert pred.total_seconds_low >= max(0.8 * dp.compute_seconds, dp.communication_seconds)


def test_overlap_hides_part_of_the_communication_behind_the_backward(digits, profile):
    P = 4
    summed, overlapped = dp_predict(digits, profile, P), dp_predict(digits, profile, P, "overlap")
    s, o = summed.data_parallel, overlapped.data_parallel
    assert o.composition == "overlap" and o.compute_seconds == pytest.approx(s.compute_seconds)
    assert o.communication_seconds == pytest.approx(s.communication_seconds)
    assert max(o.compute_seconds, o.communication_seconds) <= overlapped.total_seconds <= summed.total_seconds
    assert o.hidden_communication_seconds > 0  # layers 4..2's allreduces run while the backward goes on
    assert overlapped.total_seconds == pytest.approx(o.compute_seconds + o.exposed_communication_seconds)
    # the hidden communication counts in the compute rows' and the allreduces' fractions
    assert sum(r.fraction for r in overlapped.rows) == pytest.approx(1 + o.hidden_communication_seconds
                                                                   / overlapped.total_seconds)
    # the same schedule as the pure model's compose on the worker's rows
    from costmodel.machine.parallel import Row

    worker = predict(digits.with_batch(digits.batch // P), profile, threads=2)
    link = network_link(profile.network)
    be = DataParallelBackend(get_backend("numpy"), P, link)
    step = compose([Row(r.layer, r.name, r.phase, r.seconds) for r in worker.rows], be.collectives(digits),
                   "overlap", P)
    assert overlapped.total_seconds == pytest.approx(step.step_seconds)


@pytest.mark.parametrize("composition", ["sum", "overlap"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_one_worker_is_the_single_machine_prediction_exactly_with_no_communication_rows(digits, composition,
                                                                                          backend):
    profile = with_network(load_profile(GOLDEN_PROFILE))
    single = predict(digits, profile, threads=2, backend=backend)
    pred = dp_predict(digits, profile, 1, composition, backend=backend)
    assert not [r for r in pred.rows if r.phase == COMMUNICATION]  # nothing is allreduced: no rows, not 0 s
    assert pred.rows == single.rows
    assert (pred.total_seconds, pred.total_seconds_low, pred.total_seconds_high) == \
           (single.total_seconds, single.total_seconds_low, single.total_seconds_high)
    dp = pred.data_parallel
    assert (dp.speedup, dp.efficiency, dp.communication_seconds, dp.communication_bound) == (1.0, 1.0, 0.0, False)
    one = prediction_report(single)
    both = prediction_report(pred)
    assert both["ops"] == one["ops"] and both["total_seconds"] == one["total_seconds"]


def test_speedup_and_efficiency_are_against_one_worker_on_the_whole_batch(digits, profile):
    single = predict(digits, profile, threads=2)
    for P in (2, 4, 8):
        dp = dp_predict(digits, profile, P).data_parallel
        assert dp.one_worker_seconds == single.total_seconds
        assert dp.speedup == pytest.approx(single.total_seconds / dp.step_seconds)
        assert dp.efficiency == pytest.approx(dp.speedup / P)


def test_a_faster_link_gives_a_faster_step_and_communication_bound_follows_the_numbers(digits, profile):
    P = 8
    slow = predict_data_parallel(digits, profile, setting(profile, P, link=given_link(link="1GbE")), threads=2)
    fast = predict_data_parallel(digits, profile, setting(profile, P, link=given_link(link="100GbE")), threads=2)
    assert fast.total_seconds < slow.total_seconds
    for pred in (slow, fast):
        dp = pred.data_parallel
        assert dp.communication_bound == (dp.communication_seconds >= dp.compute_seconds)
        assert dp.link.source == "given"


def test_the_link_is_the_given_one_else_the_profiles_network_section(profile, bare_profile):
    link = network_link(profile.network)
    assert (link.alpha_seconds, link.beta_seconds_per_byte, link.name, link.source) == \
           (ALPHA, BETA, "loopback", "profile")
    given = given_link(link="10gbe")
    assert network_link(profile.network, given) is given and given.name == "10GbE"
    assert given.alpha_seconds == LINKS["10GbE"][0]
    described = given_link(latency="5us", bandwidth="10Gbit/s")
    assert described.alpha_seconds == pytest.approx(5e-6)
    assert described.beta_seconds_per_byte == pytest.approx(1 / 1.25e9)
    assert given_link() is None
    with pytest.raises(UsageError, match="calibrate --network"):
        network_link(bare_profile.network)


def test_workers_must_divide_the_batch_and_the_error_names_batches_that_work():
    assert worker_batch(128, 4) == 32
    with pytest.raises(UsageError, match=r"--workers 3 does not divide the mini-batch I=128.*--batch 126 or 129"):
        worker_batch(128, 3)
    with pytest.raises(UsageError, match=r"--batch 8"):
        worker_batch(5, 8)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(UsageError, match="--workers"):
            worker_batch(128, bad)


# -- the command line ------------------------------------------------------------------------

def _predict(profile_path, *args):
    return runner.invoke(app, ["predict", str(DIGITS), "--profile", str(profile_path), "--threads", "2", *args])


@pytest.mark.parametrize("options", [["--workers", "4", "--link", "10GbE"], ["--workers", "4", "--overlap"],
                                     ["--workers", "1", "--link", "10GbE"]], ids=["sum", "overlap", "one"])
def test_predict_workers_footer_breaks_between_clauses(profile_path, options):
    """The data-parallel footer's lines fit 80 columns, broken between clauses: the ring model and
    the composition's sum are each whole on one line."""
    import re

    table = _predict(profile_path, *options)
    assert table.exit_code == 0, table.stderr
    lines = table.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("data-parallel: "))
    end = next(i for i, line in enumerate(lines) if line.startswith("step: "))
    footer = lines[start:end]
    assert len(footer) > 4 and all(len(line) <= 80 for line in footer), footer
    assert all(line.strip() and (line.startswith("  ") or not line.startswith(" ")) for line in footer)
    composition = r"compute \S+ \w+ \+ (exposed )?communication \S+ \w+ = step \S+ \w+"
    assert sum(bool(re.search(composition, line)) for line in footer) == 1
    if options[1] != "1":
        assert sum("(ring model: 2 (P-1) alpha + 2 (P-1)/P n beta)" in line for line in footer) == 1


def test_predict_workers_json_is_the_per_op_object_plus_the_step_fields(profile_path, profile, digits):
    done = _predict(profile_path, "--workers", "4", "--overlap", "--format", "json")
    assert done.exit_code == 0, done.stderr
    report = json.loads(done.stdout)
    pred = dp_predict(digits, profile, 4, "overlap")
    dp = pred.data_parallel
    assert report["total_seconds"] == pytest.approx(pred.total_seconds)
    assert (report["workers"], report["worker_batch"], report["batch"], report["composition"]) == (4, 8, 32,
                                                                                                   "overlap")
    for key in ("compute_seconds", "communication_seconds", "exposed_communication_seconds",
                "hidden_communication_seconds", "one_worker_seconds", "speedup", "efficiency"):
        assert report[key] == pytest.approx(getattr(dp, key)), key
    assert report["link"] == {"name": "loopback", "source": "profile", "alpha_seconds": ALPHA,
                              "beta_seconds_per_byte": BETA}
    comm = [o for o in report["ops"] if o["phase"] == "communication"]
    assert [(o["layer"], o["op"], o["kind"]) for o in comm] == [(m, "allreduce", "communication")
                                                                for m in (4, 3, 2, 1)]
    assert {"layer", "layer_type", "op", "phase", "flops", "bytes", "seconds", "fraction"} <= set(comm[0])


@pytest.mark.parametrize("by", ["kind", "phase", "layer"])
def test_predict_workers_by_groups_includes_the_communication_rows(profile_path, by):
    done = _predict(profile_path, "--workers", "2", "--by", by, "--format", "json")
    assert done.exit_code == 0, done.stderr
    report = json.loads(done.stdout)
    groups = {g[by]: g for g in report["groups"]}
    comm = [o for o in json.loads(_predict(profile_path, "--workers", "2", "--format", "json").stdout)["ops"]
            if o["phase"] == "communication"]
    if by == "layer":
        for o in comm:  # every layer's allreduce is in its layer
            assert groups[o["layer"]]["seconds"] >= o["seconds"]
        assert sum(g["seconds"] for g in report["groups"]) == pytest.approx(report["total_seconds"])
    else:
        assert groups["communication"]["ops"] == len(comm)
        assert groups["communication"]["seconds"] == pytest.approx(sum(o["seconds"] for o in comm))


def test_predict_workers_table_and_csv(profile_path):
    table = _predict(profile_path, "--workers", "4", "--link", "10GbE")
    assert table.exit_code == 0, table.stderr
    assert "one worker of P=4" in table.stdout and "allreduce" in table.stdout
    assert "link 10GbE (given)" in table.stdout and "speedup" in table.stdout
    assert "composition sum" in table.stdout
    overlap = _predict(profile_path, "--workers", "4", "--overlap")
    assert "composition overlap" in overlap.stdout and "add up to more than 1" in overlap.stdout
    csv = _predict(profile_path, "--workers", "4", "--format", "csv")
    lines = csv.stdout.strip().splitlines()
    assert sum(",allreduce,communication," in line for line in lines) == 4


@pytest.mark.parametrize("args, message", [
    (["--workers", "3"], "--workers 3 does not divide the mini-batch I=32: every worker takes I/P instances; "
                         "give --batch 30 or 33"),
    (["--workers", "0"], "--workers: 0 workers"),
    (["--workers", "2", "--link", "5GbE"], "--link: '5GbE' is not one of 1GbE, 10GbE, 25GbE, 100GbE"),
    (["--workers", "2", "--latency", "50us"], "give both --latency and --bandwidth"),
    (["--workers", "2", "--link", "1GbE", "--bandwidth", "1GB/s"], "either --link or"),
    (["--link", "10GbE"], "--link goes with --workers P"),
    (["--overlap"], "--overlap goes with --workers P"),
])
def test_predict_refusals_are_one_line_exit_2(profile_path, args, message):
    done = _predict(profile_path, *args)
    assert done.exit_code == 2, done.output
    assert message in _error(done.stderr)
    assert done.stdout == ""


def test_predict_without_network_section_or_link_says_how_to_get_one(bare_path):
    done = _predict(bare_path, "--workers", "2")
    assert done.exit_code == 2
    line = _error(done.stderr)
    assert "no network section" in line and "costmodel calibrate --network" in line and "--link" in line
    assert _predict(bare_path, "--workers", "2", "--link", "1GbE").exit_code == 0


# -- the sweep over workers ------------------------------------------------------------------

WORKERS = [1, 2, 4, 8, 16, 32]


@pytest.fixture(scope="module")
def workers_sweep(digits, profile):
    points = sweep(digits, profile, "workers", WORKERS, threads=2, data_parallel=setting(profile, 1, "overlap"))
    return points, sweep_report(digits, "workers", points, "kind", "index")


def test_a_sweep_of_workers_predicts_each_P(digits, profile, workers_sweep):
    points, result = workers_sweep
    assert [P for P, _ in points] == WORKERS and result["symbol"] == "P"
    for P, pred in points:
        alone = dp_predict(digits, profile, P, "overlap")
        assert pred.total_seconds == pytest.approx(alone.total_seconds)
        assert pred.data_parallel.workers == P
    for point, (P, pred) in zip(result["points"], points):
        dp = pred.data_parallel
        assert (point["value"], point["workers"], point["speedup"], point["efficiency"]) == \
               (P, P, dp.speedup, dp.efficiency)
        assert point["exposed_communication_seconds"] == dp.exposed_communication_seconds
    assert result["data_parallel"]["composition"] == "overlap"
    columns = long_columns(result)
    assert columns[0] == "workers" and "speedup" in columns and columns.count("workers") == 1
    rows = long_rows(result)
    assert all(set(row) == set(columns) for row in rows)


def test_a_sweep_of_workers_refuses_values_that_do_not_divide_the_batch_naming_them(digits, profile):
    with pytest.raises(UsageError, match=r"--vary workers: 3, 5 do not divide the mini-batch I=32.*e\.g\. 60"):
        sweep(digits, profile, "workers", [1, 3, 4, 5], threads=2, data_parallel=setting(profile, 1))
    with pytest.raises(UsageError, match="3 does not divide"):
        sweep(digits, profile, "workers", [2, 3], threads=2, data_parallel=setting(profile, 1))
    with pytest.raises(UsageError, match="not a number of workers"):
        sweep(digits, profile, "workers", [0, 2], threads=2, data_parallel=setting(profile, 1))
    with pytest.raises(UsageError, match="needs a link"):
        sweep(digits, profile, "workers", [1, 2], threads=2)


def test_a_sweep_of_the_batch_on_P_workers_checks_every_batch(digits, profile):
    points = sweep(digits, profile, "batch", [64, 128], threads=2, data_parallel=setting(profile, 4))
    assert [pred.data_parallel.worker_batch for _, pred in points] == [16, 32]
    assert [pred.batch for _, pred in points] == [64, 128]
    with pytest.raises(UsageError, match=r"--vary batch=6: --workers 4 does not divide"):
        sweep(digits, profile, "batch", [8, 6], threads=2, data_parallel=setting(profile, 4))


def test_sweep_command_over_workers(profile_path):
    base = ["sweep", str(DIGITS), "--profile", str(profile_path), "--threads", "2"]
    done = runner.invoke(app, [*base, "--vary", "workers=1,2,4,8", "--link", "1GbE"])
    assert done.exit_code == 0, done.stderr
    for label in ("P=1", "P=8", "speedup T(1)/T(P)", "parallel efficiency", "communication", "link 1GbE"):
        assert label in done.stdout, label
    csv = runner.invoke(app, [*base, "--vary", "workers=1,2", "--format", "csv"])
    assert csv.stdout.splitlines()[0].startswith("workers,kind,ops,") and "speedup" in csv.stdout.splitlines()[0]
    bad = runner.invoke(app, [*base, "--vary", "workers=1,3"])
    assert bad.exit_code == 2 and "3 does not divide the mini-batch I=32" in _error(bad.stderr)
    both = runner.invoke(app, [*base, "--vary", "workers=1,2", "--workers", "2"])
    assert both.exit_code == 2 and "the sweep gives P" in _error(both.stderr)


def test_sweep_of_workers_without_network_or_link(bare_path):
    done = runner.invoke(app, ["sweep", str(DIGITS), "--profile", str(bare_path), "--threads", "2",
                               "--vary", "workers=1,2"])
    assert done.exit_code == 2 and "costmodel calibrate --network" in _error(done.stderr)


# -- the scaling figure ------------------------------------------------------------------------

def test_the_workers_figure_shows_the_split_and_the_speedup_against_ideal(workers_sweep):
    from costmodel.present.plots import figure_workers

    points, result = workers_sweep
    fig = figure_workers(result)
    times, gains = fig.axes
    assert times.get_title() == "Step time and its split (overlap)"
    assert (times.get_xlabel(), times.get_ylabel()) == ("workers P", "predicted time of one worker's step")
    assert [t.get_text() for t in times.get_xticklabels()] == [str(P) for P in WORKERS]
    compute, exposed = times.containers  # two stacked bar series
    assert [b.get_height() for b in compute] == pytest.approx([p.data_parallel.compute_seconds for _, p in points])
    assert [b.get_height() for b in exposed] == pytest.approx(
        [p.data_parallel.exposed_communication_seconds for _, p in points])
    assert [b.get_y() + b.get_height() for b in exposed] == pytest.approx([p.total_seconds for _, p in points])
    assert gains.get_title() == "Speedup against P (labels: parallel efficiency)"
    assert (gains.get_xlabel(), gains.get_ylabel()) == ("workers P", "speedup T(1)/T(P)")
    lines = {line.get_label(): line for line in gains.get_lines()}
    assert list(lines["ideal: speedup = P"].get_ydata()) == WORKERS
    assert list(lines["predicted speedup"].get_ydata()) == pytest.approx([p.data_parallel.speedup for _, p in points])
    labels = [t.get_text() for t in gains.texts]
    assert labels == [f"{100 * p.data_parallel.efficiency:.3g} %" for _, p in points]
    legend = [t.get_text() for t in times.get_legend().get_texts()]
    assert "all allreduces (ring model)" in legend and "ideal: T(1)/P" in legend
    comm_line = next(line for line in times.get_lines() if line.get_label() == "all allreduces (ring model)")
    assert len(comm_line.get_xdata()) == len(WORKERS) - 1  # P = 1 allreduces nothing
    assert fig._suptitle.get_text().startswith("Data-parallel SG on P workers: digits-small, I=32")
    assert "link loopback" in fig._suptitle.get_text()


def test_sweep_command_draws_the_workers_figure(tmp_path, profile_path):
    out = tmp_path / "scaling.png"
    done = runner.invoke(app, ["sweep", str(DIGITS), "--profile", str(profile_path), "--threads", "2",
                               "--vary", "workers=1,2,4", "--plot", str(out)])
    assert done.exit_code == 0, done.stderr
    assert out.read_bytes().startswith(b"\x89PNG")


def test_the_predict_figure_keeps_the_allreduces_off_the_roofline(digits, profile):
    from costmodel.present.plots import figure_predict

    pred = dp_predict(digits, profile, 4)
    fig = figure_predict(pred, profile.ceilings, by="kind")
    shares = fig.axes[0]
    assert "communication" in [t.get_text() for t in shares.get_legend().get_texts()]
    roof, bandwidth = fig.axes[1], fig.axes[2]
    plotted = sum(len(c.get_offsets()) for ax in (roof, bandwidth) for c in ax.collections
                  if c.get_label() == "communication")
    assert plotted == 0
    assert "one worker of P=4" in fig._suptitle.get_text()


# -- explain -----------------------------------------------------------------------------------

def _section(facts):
    [section] = [s for s in facts["sections"] if s["title"].startswith("Data-parallel SG")]
    return section


@pytest.mark.parametrize("link", ["1GbE", "100GbE"])
def test_explain_says_when_the_step_turns_communication_bound_with_the_numbers(digits, profile, link):
    facts = explain(digits, profile, threads=2, data_parallel=setting(profile, 4, link=given_link(link=link)))
    d = facts["data_parallel"]
    section = _section(facts)
    assert section["title"] == f"Data-parallel SG on P=4 workers ({link})"
    text = " ".join(section["sentences"])
    comm, compute = d["communication_seconds"], d["compute_seconds"]
    assert fmt_seconds(comm) in text and fmt_seconds(compute) in text
    assert f"speedup of {d['speedup']:.3g}" in text
    if d["communication_bound"]:
        assert comm >= compute and "communication-bound, and no overlap can hide them" in text
    else:
        assert comm < compute and "the step is compute-bound" in text
    # the threshold: at its batch a worker's compute takes at least the allreduces, one step of P below it less
    bound = d["communication_bound_batch"]
    assert bound is not None and bound % 4 == 0

    def compute_at(n):
        return predict(digits.with_batch(n), profile, threads=2).total_seconds

    assert compute_at(bound // 4) >= comm
    if bound > 4:
        assert compute_at(bound // 4 - 1) < comm
        assert f"below I={bound} the step is communication-bound" in text
        assert fmt_seconds(d["compute_at_bound_seconds"]) in text
    else:
        assert "compute-bound at every mini-batch" in text
    assert bound == communication_bound_batch(compute_at, comm, 4)


@pytest.mark.parametrize("link, expected, bound", [
    (Link(0.0, 0.0, "free", "given"), "compute-bound at every mini-batch", 4),  # the allreduces take 0 s
    (Link(1.0, 0.0, "one second a message", "given"), "communication-bound at every mini-batch up to there", None),
])
def test_explain_at_the_ends_of_the_batch_search(digits, profile, link, expected, bound):
    facts = explain(digits, profile, threads=2, data_parallel=Setting(4, link))
    d = facts["data_parallel"]
    assert d["communication_bound_batch"] == bound
    last = _section(facts)["sentences"][-1]
    assert expected in last
    if bound is None:
        assert f"up to I={d['max_batch']} ({d['max_batch'] // 4} per worker)" in last
    else:
        assert f"one instance per worker (I=4) takes {fmt_seconds(d['compute_at_bound_seconds'])}" in last


def test_explain_of_one_worker_says_nothing_is_allreduced(digits, profile):
    facts = explain(digits, profile, threads=2, data_parallel=setting(profile, 1))
    [sentence] = _section(facts)["sentences"]
    assert sentence.startswith("With P=1 worker there is nothing to allreduce")
    assert facts["data_parallel"]["communication_bound_batch"] is None


def test_explain_overlap_cites_what_the_backward_hides(digits, profile):
    facts = explain(digits, profile, threads=2, data_parallel=setting(profile, 2, "overlap"))
    d = facts["data_parallel"]
    text = " ".join(_section(facts)["sentences"])
    assert f"hides {fmt_seconds(d['hidden_communication_seconds'])} of the {fmt_seconds(d['communication_seconds'])}" \
        in text
    assert math.isclose(d["step_seconds"], d["compute_seconds"] + d["exposed_communication_seconds"])


def test_explain_command_with_workers(profile_path):
    done = runner.invoke(app, ["explain", str(DIGITS), "--profile", str(profile_path), "--threads", "2",
                               "--workers", "4", "--link", "10GbE"])
    assert done.exit_code == 0, done.stderr
    assert "Data-parallel SG on P=4 workers (10GbE)" in done.stdout
    bad = runner.invoke(app, ["explain", str(DIGITS), "--profile", str(profile_path), "--workers", "5"])
    assert bad.exit_code == 2 and "--workers 5 does not divide" in _error(bad.stderr)


# -- the DataFrame API -----------------------------------------------------------------------

def test_the_api_takes_workers_link_and_overlap(profile, digits):
    frame = costmodel.predict_frame(DIGITS, profile, threads=2, workers=4, link="1GbE", overlap=True)
    pred = predict_data_parallel(digits, profile, Setting(4, given_link(link="1GbE"), "overlap"), threads=2)
    assert list(frame["op"]) == [r.name for r in pred.rows]
    assert frame.attrs["total_seconds"] == pytest.approx(pred.total_seconds)
    assert frame.attrs["speedup"] == pytest.approx(pred.data_parallel.speedup)
    assert frame.attrs["link"]["name"] == "1GbE" and frame.attrs["workers"] == 4
    kinds = costmodel.predict_frame(DIGITS, profile, threads=2, workers=4, by="kind")
    assert "communication" in set(kinds["kind"])
    link = Link(1e-6, 1e-10, "mine", "given")
    assert costmodel.predict_frame(DIGITS, profile, threads=2, workers=2, link=link).attrs["link"]["name"] == "mine"
    swept = costmodel.sweep_frame(DIGITS, profile, threads=2, vary={"workers": [1, 2, 4]})
    assert sorted(set(swept["workers"])) == [1, 2, 4] and "efficiency" in swept.columns
    assert swept.attrs["data_parallel"]["link"]["source"] == "profile"
    facts = costmodel.explain_report(DIGITS, profile, threads=2, workers=2)
    assert facts["data_parallel"]["workers"] == 2
    with pytest.raises(UsageError, match="go with workers"):
        costmodel.predict_frame(DIGITS, profile, threads=2, link="1GbE")
    with pytest.raises(UsageError, match="does not divide"):
        costmodel.predict_frame(DIGITS, profile, threads=2, workers=3)
