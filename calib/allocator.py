"""The C allocator's state while steps are timed: a warm heap (glibc), declared and the same in
every process that measures or calibrates (docs/torch-mapping.md, "Fresh pages").

What it fixes (measured 2026-12-01, 2-core AMD EPYC VM, glibc 2.36, torch 2.13): glibc serves a
request from the top of its heap when the top is large enough, and otherwise maps a request of
at least its mmap threshold (at most 32 MiB) afresh, whose pages the step then faults in and
zeroes again, ~2 GB/s in this VM. So the same PyTorch step took a different time in every
process, by how much heap earlier work had left: mlp-4096 138-143 ms in fresh `measure
--backend torch` processes and 66 ms inside a long benchmark process; mnist-mlp 2.4 ms and 1.2
ms. In the state set here (one arena, no mmap, a large top pad, no trimming) three fresh
processes measured mlp-4096 at 70.7-71.0 ms and mnist-mlp at 1.23-1.28 ms: every buffer is
faulted in once, in the warm-up step, and reused from the heap after it, as in a long training
process. One arena, because without mmap a thread's arena cannot grow past 64 MiB (with
several, the strided step hung). NumPy's steps did not move (NumPy asks the kernel for huge
pages for its large arrays).

It costs address space, not memory: pages are resident once touched, and freed ones stay
resident for the process's life. A training process in glibc's default state can be slower by
its re-faulted buffers of 32 MiB or more; GLIBC_TUNABLES=glibc.malloc.mmap_max=0:
glibc.malloc.arena_max=1:glibc.malloc.top_pad=536870912:glibc.malloc.trim_threshold=1073741824
at its start puts it in the measured state.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
M_ARENA_MAX = -8
#: each growth of the heap takes this much more, so that a step's large buffers fit in its top
TOP_PAD = 512 << 20
#: free memory at the top of the heap is given back to the kernel only beyond this
TRIM_THRESHOLD = 1 << 30
#: how the measured steps' allocator state is named in results ("allocator")
WARM = "warm heap (glibc: one arena, no mmap, M_TOP_PAD 512 MiB, M_TRIM_THRESHOLD 1 GiB)"

_state: str | None = None


def warm_heap() -> str:
    """Put this process's C allocator in the measured state (module docstring) and return its
    name: WARM with glibc; "default (not glibc)" elsewhere, where nothing is changed. Once per
    process; later calls return the same. Called by every function that times steps (measure,
    measure_torch, calibrate, the data-parallel workers)."""
    global _state
    if _state is None:
        _state = _set() if _glibc() else "default (not glibc)"
    return _state


def _glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc ")
    except (AttributeError, ValueError, OSError):
        return False


def _set() -> str:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        done = all(libc.mallopt(param, value) == 1 for param, value in
                   ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
    except (OSError, AttributeError):
        done = False
    return WARM if done else "default (mallopt refused)"
