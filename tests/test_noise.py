"""Noise detection: the load monitor's arithmetic on fake /proc readings, and the real thing: a busy
process spinning on every core makes `measure` warn and `calibrate` refuse (or, with
--accept-noisy, write a profile marked noisy). No test asserts a time."""

import json
import os
import subprocess
import sys
from contextlib import contextmanager

import pytest
from typer.testing import CliRunner

from calib.calibrate import Plan
from calib.design import SweepLimits
from calib.noise import CpuTicks, Load, LoadMonitor, read_cpu_ticks, relative_spread, weighted_median, worst_of
from cli import app
from costmodel.machine.profile import load_profile
from costmodel.present.profile_text import render_profile

from tests.conftest import ROOT

DIGITS = ROOT / "examples" / "digits-small.yaml"
TINY_PLAN = Plan(dtypes=("float32",), impls=("index",), points=4, rounds=2, chunk=6,
                 limits=SweepLimits(max_elements=1e5, max_flops=1e7, max_weights=1e5),
                 ceilings_seconds=0.3, probe_seconds=0.3)

STAT = """cpu  900 0 300 5000 10 0 5 40 0 0
cpu0 400 0 100 2500 5 0 2 20 0 0
cpu1 500 0 200 2500 5 0 3 20 0 0
intr 12345
"""
SELF = "4242 (python (x) y) R 1 2 3 0 -1 4194304 117 0 0 0 70 30 0 0 20 0 1 0 114922"


def test_read_cpu_ticks_sums_the_watched_cpus_and_reads_own_time():
    ticks = read_cpu_ticks([0, 1], STAT, SELF)
    assert ticks == CpuTicks(busy=400 + 100 + 2 + 500 + 200 + 3, steal=40, own=70 + 30)
    assert read_cpu_ticks([1], STAT, SELF).busy == 703


def fake_monitor(ticks, seconds=2.0, cpus=(0, 1), **limits):
    """A monitor whose clock and /proc readings are scripted: `ticks` is (start, end)."""
    clock = iter([0.0, seconds])
    reads = iter(ticks)
    monitor = LoadMonitor(cpus, clock=lambda: next(clock), read=lambda: next(reads), **limits)
    monitor.tick = 100
    return monitor


def test_other_processes_time_is_busy_time_minus_our_own():
    # 2 s on 2 CPUs = 400 ticks; busy +300 of which 100 ours: others used 200 = 50 %
    with fake_monitor([CpuTicks(0, 0, 0), CpuTicks(300, 0, 100)]) as monitor:
        pass
    load = monitor.load
    assert load.other_cpu == pytest.approx(0.5) and load.disturbed
    assert load.reasons == ["other processes used 50 % of the 2 available cores' time (limit 10 %)"]


def test_a_quiet_machine_is_not_disturbed_and_a_tick_or_two_is_no_load():
    with fake_monitor([CpuTicks(0, 0, 0), CpuTicks(304, 3, 300)]) as monitor:
        monitor.add_spreads([0.02, 0.5], [1.0, 0.01])  # the large spread belongs to a tiny op
    assert monitor.load.other_cpu == 0 and monitor.load.steal == 0 and monitor.load.spread == 0.02
    assert not monitor.load.disturbed and monitor.load.reasons == []


def test_steal_and_spread_are_reasons_too():
    with fake_monitor([CpuTicks(0, 0, 0), CpuTicks(100, 40, 100)]) as monitor:
        monitor.add_spreads([0.3, 0.4, 0.01], [2.0, 1.0, 1.0])
    assert monitor.load.steal == pytest.approx(0.1) and monitor.load.spread == pytest.approx(0.3)
    assert [r.split(" ")[0] for r in monitor.load.reasons] == ["steal"]
    # a spread alone proves no other load: a note, not a disturbance
    assert [r.split(" ")[0] for r in monitor.load.notes] == ["repeated"]


def test_a_large_spread_without_other_load_is_a_note_not_a_disturbance():
    with fake_monitor([CpuTicks(0, 0, 0), CpuTicks(300, 0, 300)]) as monitor:
        monitor.add_spreads([0.3, 0.25, 0.28], [1.0, 1.0, 1.0])
    load = monitor.load
    assert not load.disturbed and load.reasons == []
    assert load.notes == ["repeated samples spread 28 % (limit 15 %)"]


def test_a_disturbed_sweep_disturbs_a_calibration_whose_average_is_quiet():
    # the whole calibration: 10 s on 2 CPUs = 2000 ticks, others 100 (5 %): quiet on average
    with fake_monitor([CpuTicks(0, 0, 0), CpuTicks(1100, 0, 1000)], seconds=10.0) as whole:
        pass
    # one 2 s sweep inside it had all of those 100 ticks of 400 (25 %)
    with fake_monitor([CpuTicks(0, 0, 0), CpuTicks(300, 0, 200)]) as sweep:
        pass
    with fake_monitor([CpuTicks(0, 0, 0), CpuTicks(200, 0, 200)]) as other_sweep:
        pass
    assert not whole.load.disturbed and sweep.load.disturbed and not other_sweep.load.disturbed
    load = worst_of(whole.load, {"float32/index": other_sweep.load, "float32/strided": sweep.load})
    assert load.disturbed and load.other_cpu == whole.load.other_cpu
    assert load.reasons == ["float32/strided: other processes used 25 % of the 2 available cores' time (limit 10 %)"]
    assert not worst_of(whole.load, {"float32/index": other_sweep.load}).disturbed


def test_without_proc_only_the_spread_is_judged():
    with fake_monitor([None, None]) as monitor:
        monitor.add_spreads([0.01])
    assert not monitor.load.disturbed and monitor.load.other_cpu == 0


def test_weighted_median_and_relative_spread():
    assert weighted_median([1, 2, 3], [1, 1, 1]) == 2
    assert weighted_median([1, 2, 3], [1, 1, 10]) == 3
    with pytest.raises(ValueError):
        weighted_median([], [])
    assert relative_spread([1.0, 1.1, 0.9]) == pytest.approx(0.2)
    assert relative_spread([1.0]) == 0.0 and relative_spread([0.0, 0.0]) == 0.0


def test_a_calibration_sample_carries_the_spread_of_its_rounds():
    from calib.backends.timing import chunked_sweep

    laps = iter([{(1, "phi", "forward"): 1.0}, {(1, "phi", "forward"): 1.2}, {(1, "phi", "forward"): 0.8}])
    samples = chunked_sweep([None], chunk=1, rounds=3, seed=0, build=lambda i, a: None,
                            run_round=lambda visits: {i: next(laps) for i, _ in visits})
    assert samples == [{"point": 0, "layer": 1, "op": "phi", "phase": "forward", "seconds": 1.0,
                        "spread": pytest.approx(0.4)}]



def test_a_short_step_is_visited_after_enough_warm_steps_to_last_the_warm_visit():
    from calib.backends.timing import MAX_WARM_STEPS, WARM_VISIT_SECONDS, warm_steps

    assert warm_steps(WARM_VISIT_SECONDS) == 0 and warm_steps(10 * WARM_VISIT_SECONDS) == 0
    assert warm_steps(WARM_VISIT_SECONDS / 2) == 2
    assert warm_steps(WARM_VISIT_SECONDS / 3 * 1.01) == 3  # 3 steps last >= WARM_VISIT_SECONDS
    assert warm_steps(0.0) == warm_steps(1e-9) == MAX_WARM_STEPS


def test_a_run_in_two_core_placements_is_noted_not_refused():
    from calib.noise import HANDOFF_CHANGE_LIMIT, handoff_note, worst_of

    assert handoff_note([2e-5, 2e-5 * HANDOFF_CHANGE_LIMIT]) is None
    assert handoff_note([2e-5, None]) is None and handoff_note([]) is None
    assert "20-42 us" in handoff_note([2e-5, 4.2e-5])
    samples = iter([2e-5, 4.2e-5])
    with fake_monitor([CpuTicks(0, 0, 0), CpuTicks(0, 0, 0)], handoff=lambda: next(samples)) as monitor:
        pass
    load = monitor.load
    assert not load.disturbed and load.handoff_seconds == [2e-5, 4.2e-5]
    assert [n for n in load.notes if "hand-off changed" in n]
    # a calibration judges its sweeps' samples together: each sweep steady, the two apart
    steady = [Load(1.0, 2, 0.0, 0.0, None, False, handoff_seconds=[h, h]) for h in (2e-5, 4.2e-5)]
    whole = worst_of(Load(3.0, 2, 0.0, 0.0, None, False), {"float32/index": steady[0], "float64/index": steady[1]})
    assert not whole.disturbed and len(whole.handoff_seconds) == 4
    assert [n for n in whole.notes if "hand-off changed" in n]


def test_the_handoff_is_a_time_or_none_on_one_core():
    from calib.noise import handoff_seconds

    sample = handoff_seconds(reps=4)
    assert sample is None if len(os.sched_getaffinity(0)) < 2 else sample > 0

# -- a real busy machine ---------------------------------------------------------------------------

@contextmanager
def busy_cores():
    """One process spinning on each core this process may run on, each already spinning when the
    block starts (a spinner says so on its stdout once its loop runs: a Python start-up takes
    longer than a short `measure`)."""
    spin = "import sys\nprint('spinning', flush=True)\nwhile True: pass"
    spinners = [subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True)
                for _ in range(len(os.sched_getaffinity(0)))]
    try:
        for p in spinners:
            assert p.stdout.readline() == "spinning\n"
        yield
    finally:
        for p in spinners:
            p.kill()
            p.wait()


@pytest.fixture
def tiny_plan(monkeypatch):
    monkeypatch.setattr(Plan, "make", classmethod(lambda cls, **kw: TINY_PLAN))


def test_busy_cores_refuse_a_calibration_and_accept_noisy_marks_it(tmp_path, tiny_plan):
    out = tmp_path / "profile.json"
    runner = CliRunner()
    with busy_cores():
        refused = runner.invoke(app, ["calibrate", "--quick", "--threads", "1", "-o", str(out)])
        accepted = runner.invoke(app, ["calibrate", "--quick", "--threads", "1", "-o", str(out), "--accept-noisy"])
    assert refused.exit_code == 2, refused.output
    errors = [line for line in refused.stderr.splitlines() if line.startswith("costmodel: error:")]
    assert len(errors) == 1 and "Traceback" not in refused.stderr
    assert errors[0].startswith("costmodel: error: the machine was disturbed while calibrating (other processes used")
    assert "no profile written" in errors[0] and refused.stdout == ""
    assert accepted.exit_code == 0, accepted.output
    profile = load_profile(out)
    entry = profile.entries[0]
    assert entry.accepted_noisy and entry.load.disturbed and entry.load.other_cpu > 0
    assert "NOISY: calibrated on a disturbed machine" in render_profile(profile)
    assert "written with --accept-noisy" in render_profile(profile)
    assert [p.name for p in tmp_path.iterdir()] == ["profile.json"]


def test_busy_cores_make_measure_warn(tmp_path):
    with busy_cores():
        result = CliRunner().invoke(app, ["measure", str(DIGITS), "--steps", "30", "--warmup", "1",
                                          "--threads", "1", "--format", "json"])
    assert result.exit_code == 0, result.output
    load = json.loads(result.stdout)["load"]
    assert load["disturbed"] and load["other_cpu"] > 0
    warnings = [line for line in result.stderr.splitlines() if "disturbed machine" in line]
    assert len(warnings) == 1 and warnings[0].startswith("costmodel: warning: measured on a disturbed machine")


def test_threads_above_the_available_cores_are_refused(tmp_path):
    too_many = str(len(os.sched_getaffinity(0)) + 1)
    runner = CliRunner()
    for args in (["measure", str(DIGITS)], ["calibrate", "--quick", "-o", str(tmp_path / "p.json")],
                 ["compare", str(DIGITS)], ["latex", str(DIGITS), "--measured"]):
        result = runner.invoke(app, [*args, "--threads", too_many])
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr == (f"costmodel: error: --threads {too_many}: this machine has "
                                 f"{int(too_many) - 1} core{'s' if int(too_many) > 2 else ''} available to "
                                 "this process (os.sched_getaffinity)\n")
    assert list(tmp_path.iterdir()) == []


def test_busy_cores_refuse_a_network_calibration_and_accept_noisy_marks_it(tmp_path):
    """`calibrate --network` (local workers): its workers' time is this process's children's,
    other processes' is load; a busy machine writes nothing, or with --accept-noisy a marked section."""
    pytest.importorskip("torch")
    out = tmp_path / "profile.json"
    runner = CliRunner()
    args = ["calibrate", "--network", "--workers", "2", "--quick", "--oversubscribe", "-o", str(out)]
    with busy_cores():
        refused = runner.invoke(app, args)
        assert not out.exists()
        accepted = runner.invoke(app, [*args, "--accept-noisy"])
    assert refused.exit_code == 2, refused.output
    errors = [line for line in refused.stderr.splitlines() if line.startswith("costmodel: error:")]
    assert len(errors) == 1 and "Traceback" not in refused.stderr
    assert errors[0].startswith("costmodel: error: the machine was disturbed while the allreduce benchmark ran "
                                "(other processes used")
    assert "nothing written" in errors[0] and refused.stdout == ""
    assert accepted.exit_code == 0, accepted.output
    network = load_profile(out).network
    assert network.accepted_noisy and network.load.disturbed and network.load.other_cpu > 0
    assert "NOISY: benchmarked on a disturbed machine" in render_profile(load_profile(out))
    assert "written with --accept-noisy" in render_profile(load_profile(out))


def test_read_cpu_ticks_counts_waited_for_children_as_own():
    children = SELF.replace(" 70 30 0 0 20 ", " 70 30 500 200 20 ")
    assert read_cpu_ticks([0, 1], STAT, children).own == 70 + 30 + 500 + 200
