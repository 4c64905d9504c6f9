"""The console script's end (costmodel.present.terminal.exit_process): what it prints reaches
a pipe and a file whole, its exit status is the command's, a closed pipe ends it quietly, and
atexit handlers and non-daemon threads still run, though the interpreter's teardown is skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

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



def test_a_reader_that_closes_the_pipe_on_the_help_ends_it_as_on_a_command():
    """rich writes the help; on a closed pipe it exits 1 (Console.on_broken_pipe): 141 here, as
    for a command's output."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "--help"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, bufsize=0)
    proc.stdout.read(1)
    proc.stdout.close()  # `| head -c 1`
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
    # the thread joins before the atexit handlers run; whether it prints before the command's
    # last line depends on how fast the machine prints it (a loaded one took over 0.2 s)
    assert lines[-1] == "ATEXIT" and "THREAD" in lines[:-1], lines[-3:]
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


def _closed(fd: int):
    return lambda: os.close(fd)


def test_a_closed_stdout_or_stderr_is_no_error_and_no_traceback():
    no_stdout = subprocess.run([sys.executable, str(ROOT / "cli.py"), "costs", ARCH], stderr=subprocess.PIPE,
                               text=True, cwd=ROOT, timeout=120, preexec_fn=_closed(1))
    assert no_stdout.returncode == 0 and "Traceback" not in no_stdout.stderr
    # with stderr closed, a warning must not land in stdout's data
    no_stderr = subprocess.run([sys.executable, str(ROOT / "cli.py"), "predict", ARCH, "--format", "json"],
                               stdout=subprocess.PIPE, text=True, cwd=ROOT, timeout=120, preexec_fn=_closed(2))
    assert no_stderr.returncode == 0
    assert json.loads(no_stderr.stdout)["ops"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_stdout_on_a_full_disk_is_one_line():
    with open("/dev/full", "w") as full:
        out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "costs", ARCH], stdout=full,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip() == "costmodel: error: cannot write the output: No space left on device"
