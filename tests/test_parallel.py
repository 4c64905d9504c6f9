"""Data-parallel SG on torch.distributed (calib/parallel): gradients and weights against one
process on the whole mini-batch, the measure and calibrate --network commands, and bad input
(docs/data-parallel.md). Workers are real processes in a gloo group on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from costmodel.model.ops import op_list
from tests.conftest import ROOT
from tests.test_cnn import example

runner = CliRunner()
DIGITS = ROOT / "examples" / "digits-small.yaml"


def _torch():
    return pytest.importorskip("torch")


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("costmodel: error: ")
    return lines[0]


def _plan(P: int = 2):
    from calib.parallel.process_group import plan_group

    return plan_group(workers=P, init=None, rank=None, world_size=None, threads=1, timeout=60, oversubscribe=True)


def _grads_task(ctx, arch, steps):
    """Both backends, blocking and overlapped: gradients after one step, weights after more."""
    from calib.parallel.step import numpy_grads_after_allreduce
    from calib.parallel.ddp import ddp_grads_after_allreduce

    return {(backend, overlap): (numpy_grads_after_allreduce(ctx, arch, "index", overlap, steps) if backend == "numpy"
                                 else ddp_grads_after_allreduce(ctx, arch, overlap, steps))
            for backend in ("numpy", "torch") for overlap in (False, True)}


def _rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def test_gradients_and_weights_match_one_process_on_the_whole_batch():
    _torch()
    from calib.backends.torch import TorchStep
    from calib.cnn import ReferenceCNN
    from calib.measure import synthetic_batch
    from calib.parallel.launch import run

    arch = example(DIGITS, batch=8, dtype="float64")
    steps = 10
    results = run(_plan(2), _grads_task, (arch, steps))

    X, Y = synthetic_batch(arch, 0)
    cnn = ReferenceCNN(arch, seed=0)
    cnn.loss_and_grads(X, Y)
    grads = cnn.gradients()
    cnn = ReferenceCNN(arch, seed=0)
    for _ in range(steps + 1):
        cnn.step(X, Y)
    params = cnn.parameters()
    ts = TorchStep(arch, ReferenceCNN(arch, seed=0), X, Y)
    ts.step()
    torch_grads = [p.grad.detach().numpy().copy() for p in ts.params]
    for _ in range(steps):
        ts.step()

    for overlap in (False, True):
        first, second = (r[("numpy", overlap)] for r in results)
        for rank in (first, second):
            assert list(rank["grads"]) == list(grads) == ["W1", "b1", "W2", "b2", "W3", "b3", "W4", "b4"]
            for name in grads:
                assert _rel(rank["grads"][name], grads[name]) <= 1e-10
                assert _rel(rank["params"][name], params[name]) <= 1e-10
        for name in params:  # identical on every worker
            assert np.array_equal(first["params"][name], second["params"][name])

        first, second = (r[("torch", overlap)] for r in results)
        for rank in (first, second):
            for g, g1 in zip(rank["grads"], torch_grads):
                assert _rel(g, g1) <= 1e-10
            for p, p1 in zip(rank["params"], ts.params):
                assert _rel(p, p1.detach().numpy()) <= 1e-10
        for a, b in zip(first["params"], second["params"]):
            assert np.array_equal(a, b)


def _measure(*args) -> dict:
    res = runner.invoke(app, ["measure", str(DIGITS), "--steps", "2", "--warmup", "1", "--format", "json",
                              "--timeout", "60", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_measure_numpy_workers_reports_every_worker_with_allreduce_rows():
    _torch()
    data = _measure("--workers", "2", "--threads", "1", "--overlap", "--oversubscribe")
    assert (data["workers"], data["batch"], data["batch_per_worker"], data["overlap"]) == (2, 32, 16, True)
    arch = example(DIGITS, batch=16)
    contract = sorted((r.layer, r.op, r.phase) for r in op_list(arch))
    assert [r["rank"] for r in data["ranks"]] == [0, 1]
    for worker in data["ranks"]:
        rows = worker["ops"]
        compute = sorted((r["layer"], r["op"], r["phase"]) for r in rows if r["phase"] != "communication")
        assert compute == contract  # every op of the contract at I/P, once
        comm = [r for r in rows if r["phase"] == "communication"]
        assert [r["layer"] for r in comm] == [4, 3, 2, 1]  # one per layer, as the backward produces them
        assert all(r["op"] == "allreduce" and r["seconds"] > 0 and r["wait_seconds"] >= 0 for r in comm)
        assert [r["bytes"] for r in comm] == [4 * (640 + 10), 4 * (64 * 128 + 64), 4 * (4608 + 32), 4 * (144 + 16)]
        assert sum(r["fraction"] for r in rows) == pytest.approx(1.0)
        assert worker["communication_seconds"] >= worker["wait_seconds"] >= 0
        assert worker["total_seconds"] == pytest.approx(sum(r["seconds"] + r.get("wait_seconds", 0) for r in rows))


def test_measure_torch_workers_has_one_allreduce_row_per_bucket():
    _torch()
    data = _measure("--workers", "2", "--threads", "1", "--backend", "torch", "--oversubscribe")
    assert data["impl"] == "torch" and not data["overlap"]
    for worker in data["ranks"]:
        comm = [r for r in worker["ops"] if r["phase"] == "communication"]
        # digits-small's gradients (55 kB) fit DDP's first bucket
        assert [(r["bucket"], r["layers"]) for r in comm] == [(0, [4, 3, 2, 1])]
        assert comm[0]["bytes"] == 4 * (144 + 16 + 4608 + 32 + 64 * 128 + 64 + 640 + 10)
        # a blocking hook: nothing is left to wait for before the update
        assert comm[0]["wait_seconds"] == pytest.approx(0.0, abs=1e-3)
        assert sum(r["fraction"] for r in worker["ops"]) == pytest.approx(1.0)


def test_calibrate_network_stores_a_fit_in_the_profile(tmp_path):
    _torch()
    from costmodel.machine.profile import load_profile

    path = tmp_path / "profile.json"
    # --accept-noisy: this test checks the fit, not the machine (tests/test_noise.py checks the refusal)
    res = runner.invoke(app, ["calibrate", "--network", "--workers", "2", "--quick", "--oversubscribe",
                              "--accept-noisy", "-o", str(path)])
    assert res.exit_code == 0, res.output
    network = load_profile(path).network
    assert network.load is not None and network.accepted_noisy == network.load.disturbed
    assert network.link == "loopback" and network.workers == 2 and network.backend == "gloo"
    sizes = [p.message_bytes for p in network.points]
    assert sizes[0] == 4 and sizes[-1] == 64 * 1024 * 1024 and len(sizes) == 13
    assert network.alpha_seconds >= 0 and network.beta_seconds_per_byte >= 0
    assert [p.message_bytes for p in network.points if not p.fitted] == [4]  # fewer than 2P elements
    assert network.fit_error == pytest.approx(np.median([abs(p.error) for p in network.points if p.fitted]))
    assert re.search(r"latency [\d.]+ [mu]?s, [\d.]+ [kMG]?B/s", res.stdout)
    # a given link replaces the section; the rest of the profile stays
    res = runner.invoke(app, ["calibrate", "--network", "--link", "10GbE", "-o", str(path)])
    assert res.exit_code == 0, res.output
    again = load_profile(path)
    assert again.network.link == "given" and again.network.name == "10GbE" and again.network.points == []
    assert again.fingerprint == load_profile(path).fingerprint


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_worker_killed_mid_step_stops_the_others_and_leaves_no_process():
    _torch()
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "measure", str(DIGITS), "--workers", "2",
                             "--threads", "1", "--oversubscribe", "--steps", "1000000", "--timeout", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        pids = None
        for line in proc.stderr:  # the launcher names the workers once they have joined
            match = re.search(r"pids (\d+) (\d+)", line)
            if match:
                pids = [int(match.group(1)), int(match.group(2))]
                break
        assert pids is not None
        time.sleep(1.0)  # stepping now
        family = _descendants(proc.pid)
        assert set(pids) <= family
        os.kill(pids[1], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)  # bounded: the others stop within --timeout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2
    assert f"worker 1 of 2 (pid {pids[1]}) was killed by SIGKILL" in _one_line_error(err)
    time.sleep(0.5)
    assert not [pid for pid in family if _alive(pid)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_init_address_is_one_line_after_the_timeout():
    _torch()
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "measure", str(DIGITS), "--init",
                           f"tcp://127.0.0.1:{_free_port()}", "--rank", "1", "--world-size", "2", "--timeout", "2"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    line = _one_line_error(proc.stderr)
    assert "could not join the gloo group" in line and "timeout 2 s" in line
    assert time.monotonic() - start < 120


def test_two_processes_joined_by_init_run_ddp_and_exit_cleanly():
    """The group given by --init, as across machines: both ranks' DDP steps end with status 0,
    without the abort torch's static destructors caused at interpreter shutdown."""
    _torch()
    port = _free_port()
    cmd = [sys.executable, str(ROOT / "cli.py"), "measure", str(DIGITS), "--backend", "torch", "--batch", "8",
           "--steps", "2", "--warmup", "1", "--init", f"tcp://127.0.0.1:{port}", "--world-size", "2", "--timeout", "60"]
    other = subprocess.Popen([*cmd, "--rank", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        first = subprocess.run([*cmd, "--rank", "0"], capture_output=True, text=True, cwd=ROOT, timeout=120)
        out, err = other.communicate(timeout=120)
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    for code, stderr in ((first.returncode, first.stderr), (other.returncode, err)):
        assert code == 0, stderr
        assert "terminate called" not in stderr and "Fatal Python error" not in stderr
    assert "allreduce" in first.stdout


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "--workers: 0 workers"),
    (["--workers", "-1"], "--workers: -1 workers"),
    (["--workers", str(len(os.sched_getaffinity(0)) + 1)], "--oversubscribe"),
    (["--workers", "3", "--oversubscribe"], "does not divide the mini-batch I=32"),
    (["--rank", "1"], "--rank and --world-size join a group given by --init"),
    (["--init", "udp://x:1", "--rank", "0", "--world-size", "2"], "--init: 'udp://x:1' is not tcp://HOST:PORT"),
    (["--init", "tcp://x:70000", "--rank", "0", "--world-size", "2"], "a port 1-65535"),
    (["--init", "tcp://x:1234"], "give --rank R and --world-size P too"),
    (["--init", "tcp://x:1234", "--rank", "2", "--world-size", "2"], "--rank: 2 is not in 0..1"),
    (["--init", "tcp://x:1234", "--rank", "0", "--world-size", "2", "--workers", "2"], "leave --workers out"),
    (["--overlap"], "--overlap overlaps the allreduces"),
    (["--workers", "2", "--timeout", "0"], "--timeout"),
])
def test_measure_bad_parallel_options_one_line_exit_2(args, message):
    res = runner.invoke(app, ["measure", str(DIGITS), *args])
    assert res.exit_code == 2, res.output
    assert message in _one_line_error(res.stderr)
    assert res.stdout == ""


@pytest.mark.parametrize("args, message", [
    (["--network", "--link", "5GbE"], "--link: '5GbE' is not one of 1GbE, 10GbE, 25GbE, 100GbE"),
    (["--network", "--latency", "50us"], "give both --latency and --bandwidth"),
    (["--network", "--latency", "fast", "--bandwidth", "1GB/s"], "--latency: 'fast' is not a time"),
    (["--network", "--latency", "5us", "--bandwidth", "0GB/s"], "not a positive rate"),
    (["--network", "--link", "1GbE", "--latency", "5us"], "either --link or"),
    (["--network", "--workers", "1"], "an allreduce among one worker moves nothing"),
    (["--network", "--dtype", "float32"], "--dtype is for the op models"),
    (["--link", "10GbE"], "--link goes with --network"),
    (["--workers", "2"], "--workers goes with --network"),
    (["--network", "--link", "10GbE", "--accept-noisy"], "--accept-noisy is for a measured network"),
])
def test_calibrate_bad_network_options_one_line_exit_2(args, message, tmp_path):
    res = runner.invoke(app, ["calibrate", *args, "-o", str(tmp_path / "p.json")])
    assert res.exit_code == 2, res.output
    assert message in _one_line_error(res.stderr)
    assert not (tmp_path / "p.json").exists()


def test_given_links_read_as_facts():
    from calib.parallel.network import LINKS, TCP_EFFICIENCY, given_network, parse_bandwidth, parse_latency

    assert parse_latency("50us") == pytest.approx(50e-6)
    assert parse_latency("0.2 ms") == pytest.approx(2e-4)
    assert parse_bandwidth("1.25GB/s") == pytest.approx(1.25e9)
    assert parse_bandwidth("10Gbit/s") == pytest.approx(1.25e9)
    assert parse_bandwidth("100 Mb/s") == pytest.approx(12.5e6)
    net = given_network(link="10gbe", latency=None, bandwidth=None, workers=None)
    assert net.name == "10GbE" and net.alpha_seconds == LINKS["10GbE"][0]
    assert 1 / net.beta_seconds_per_byte == pytest.approx(10e9 / 8 * TCP_EFFICIENCY)
    net = given_network(link=None, latency="45us", bandwidth="1.1GB/s", workers=4)
    assert (net.alpha_seconds, net.workers, net.link) == (pytest.approx(45e-6), 4, "given")


def test_fit_ring_recovers_alpha_and_beta():
    from calib.parallel.network import SIZES, fit_ring, measured_network
    from costmodel.machine.parallel import ring_allreduce_seconds

    alpha, beta = 40e-6, 8e-10
    seconds = {n: ring_allreduce_seconds(n, 4, alpha, beta) for n in SIZES}
    got = fit_ring(seconds, 4)
    assert got == pytest.approx((alpha, beta), rel=1e-5)
    net = measured_network(seconds, 4, "measured", 5)
    assert net.max_error == pytest.approx(0.0, abs=1e-5)


def test_fit_ring_keeps_the_large_messages_when_the_small_ones_scatter():
    """Loopback as measured on a 2-core VM: small messages scatter 0.8-1.7 ms, 1 MiB is an odd
    fast point. A step's large gradients must not be bought with them: the relative-error least
    squares predicted 16 and 64 MiB 85 % too fast."""
    from calib.parallel.network import fit_ring
    from costmodel.machine.parallel import ring_allreduce_seconds

    seconds = {16: 1.438e-3, 64: 0.996e-3, 256: 1.054e-3, 1024: 0.988e-3, 4096: 1.390e-3, 16384: 0.992e-3,
               65536: 1.727e-3, 262144: 0.862e-3, 1048576: 0.3375e-3, 4194304: 4.089e-3, 16777216: 13.690e-3,
               67108864: 39.233e-3}
    alpha, beta = fit_ring(seconds, 2)
    for n in (4194304, 16777216, 67108864):
        assert abs(ring_allreduce_seconds(n, 2, alpha, beta) / seconds[n] - 1) < 0.25
    small = [ring_allreduce_seconds(n, 2, alpha, beta) / seconds[n] - 1 for n in seconds if n <= 65536]
    assert max(abs(e) for e in small) < 0.5


def test_plan_shares_the_cores_out():
    from calib.parallel.process_group import plan_group

    plan = plan_group(workers=2, init=None, rank=None, world_size=None, threads=None, cores={0, 1, 2, 3})
    assert [p.cores for p in plan.placements] == [(0, 1), (2, 3)] and plan.threads == 2
    plan = plan_group(workers=3, init=None, rank=None, world_size=None, threads=1, cores={4, 5}, oversubscribe=True)
    assert [p.cores for p in plan.placements] == [(4,), (5,), (4,)] and plan.oversubscribed
    # torchrun's environment forms the group when nothing else is asked
    env = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "RANK": "3", "WORLD_SIZE": "4"}
    plan = plan_group(workers=None, init=None, rank=None, world_size=None, threads=None, environ=env, cores={0, 1})
    assert (plan.mode, plan.world_size, plan.placements[0].rank) == ("joined", 4, 3)
    assert plan.init_method == "tcp://10.0.0.1:29500"
    assert plan_group(workers=None, init=None, rank=None, world_size=None, threads=None, environ={}) is None


def test_profile_show_reads_the_network_section_as_machine_facts():
    from calib.parallel.network import SIZES, measured_network
    from costmodel.machine.parallel import ring_allreduce_seconds
    from costmodel.present.profile_text import render_profile
    from tests.test_transfer import synthetic_profile

    seconds = {n: ring_allreduce_seconds(n, 2, 45e-6, 1 / 1.1e9) for n in SIZES}
    profile = synthetic_profile().model_copy(update={"network": measured_network(seconds, 2, "loopback", 5)})
    text = render_profile(profile, "table")
    assert "Network (gloo allreduce, 2 workers, loopback): latency 45.0 us, 1.1 GB/s" in " ".join(text.split())
    assert "fit error: median 0.0 %" in text and "67.1 MB" in text


@pytest.mark.parametrize("args", [["--link", "10GbE"], ["--workers", "2", "--quick"]])
def test_calibrate_network_refuses_a_missing_folder_before_it_runs(args, tmp_path, monkeypatch):
    """-o in a folder that does not exist: one line, nothing created, before any benchmark."""
    import calib.parallel.commands as commands

    monkeypatch.setattr(commands, "run_benchmark", lambda *a, **k: pytest.fail("benchmarked before checking -o"))
    out = tmp_path / "missing" / "p.json"
    res = runner.invoke(app, ["calibrate", "--network", *args, "--oversubscribe", "-o", str(out)])
    assert res.exit_code == 2, res.output
    assert "no folder" in _one_line_error(res.stderr) and not out.parent.exists()
