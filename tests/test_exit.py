"""The console script's end (costmodel.present.terminal.exit_process): what it prints reaches
a pipe and a file whole, its exit status is the command's, a closed pipe ends it quietly, and
atexit handlers and non-daemon threads still run, though the interpreter's teardown is skipped."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

PROFILE = str(ROOT / "tests" / "golden" / "profile.json")
ARCH = str(ROOT / "examples" / "cifar10-layer7.yaml")


def _cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, **kwargs)


def test_a_piped_json_output_is_whole_and_the_status_zero():
    out = _cli("predict", ARCH, "--profile", PROFILE, "--threads", "2", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ops"]


def test_an_output_redirected_to_a_file_is_whole(tmp_path):
    target = tmp_path / "costs.csv"
    with target.open("w") as handle:
        out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "costs", ARCH, "--format", "csv"],
                             stdout=handle, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = target.read_text().splitlines()
    assert lines[0].startswith("layer") and len(lines) > 40


def test_a_bad_input_keeps_its_exit_status():
    out = _cli("predict", "no-such-file.yaml")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "no such file" in out.stderr


def test_a_reader_that_closes_the_pipe_ends_it_quietly():
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "costs", ARCH, "--format", "csv"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.readline()
    proc.stdout.close()  # `| head -1`
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 141)
    assert b"Traceback" not in err and b"BrokenPipe" not in err


def test_atexit_handlers_and_threads_run_before_the_process_ends():
    code = ("import atexit, runpy, sys, threading, time\n"
            "sys.argv = ['costmodel', 'examples']\n"
            "def late():\n    time.sleep(0.2)\n    print('THREAD', flush=True)\n"
            "threading.Thread(target=late).start()\n"
            "atexit.register(lambda: print('ATEXIT'))\n"
            "runpy.run_path('cli.py', run_name='__main__')\n"
            "print('NOT REACHED')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-2:] == ["THREAD", "ATEXIT"]
    assert "NOT REACHED" not in out.stdout


def test_an_idle_thread_pool_does_not_keep_the_process_alive():
    # the strided implementation's workers are a ThreadPoolExecutor's: idle, they wait for work
    # until threading's exit hook tells them to stop
    code = ("import runpy, sys\n"
            "from concurrent.futures import ThreadPoolExecutor\n"
            "pool = ThreadPoolExecutor(1)\n"
            "pool.submit(int).result()\n"
            "sys.argv = ['costmodel', 'examples']\n"
            "runpy.run_path('cli.py', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
