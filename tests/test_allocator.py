"""The C allocator's declared state while steps are timed (calib.allocator): with glibc, a large
buffer comes from the heap, not from a fresh mapping whose pages every step would fault in
again; the state is named in measure's result."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from calib.allocator import WARM, _glibc

from tests.conftest import ROOT

glibc_only = pytest.mark.skipif(not _glibc() or not hasattr(ctypes.CDLL(None), "mallinfo2"),
                                reason="glibc >= 2.33 (mallinfo2) only")

#: mapped chunks (hblks) and their bytes (hblkhd) after a 64 MiB NumPy buffer is made, freed and
#: made again: glibc maps a request of 32 MiB or more afresh by default (NumPy's import maps a
#: few small chunks before the state is set)
CODE = """
import ctypes, sys
import numpy as np
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
if sys.argv[1] == "warm":
    from calib.allocator import warm_heap
    print(warm_heap())
a = np.ones(64 << 18, dtype=np.float32); del a
a = np.ones(64 << 18, dtype=np.float32)
info = libc.mallinfo2()
print(info.hblks, info.hblkhd)
"""


def _run(mode: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", CODE, mode], capture_output=True, text=True, cwd=ROOT,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    return out.stdout.split("\n")


@glibc_only
def test_a_large_buffer_comes_from_the_warm_heap_not_a_fresh_mapping():
    default = _run("default")
    assert int(default[0].split()[1]) >= 64 << 20  # the default maps it (the case the state exists for)
    warm = _run("warm")
    assert warm[0] == WARM
    assert int(warm[1].split()[1]) < 64 << 20  # only what was mapped before the state was set


@glibc_only
def test_the_state_is_set_once_and_named_in_measures_result(tmp_path):
    from calib.allocator import warm_heap
    from calib.measure import measure
    from costmodel.model.arch import load_arch

    assert warm_heap() == warm_heap() == WARM
    result = measure(load_arch(ROOT / "examples" / "mnist-mlp.yaml").with_batch(4), steps=1, warmup=0)
    assert result["allocator"] == WARM
