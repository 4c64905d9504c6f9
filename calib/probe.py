"""A short probe of this machine (about 2.5 s) that a profile made elsewhere is transferred by.

The same probe runs when a profile is made (`calibrate` stores it in the profile's ``probe``)
and on the machine that uses the profile, so a transfer compares like with like: each ratio
is this machine's probe over the profile machine's, for the same kernel on the same shape
(costmodel.machine.transfer applies them). It measures:

- **products** by shape class, dtype and thread count: ``square`` (640^3, a large product near
  the BLAS's peak), ``conv`` (64 x 576 times 576 x 8192: W^m phi(pad(Z)) of a 3x3 layer of 64
  channels over 8 images of 32x32, the tall-skinny products of conv layers) and ``small``
  (64^3, where the call and the blocking overhead weigh); np.matmul with out= under
  threadpoolctl, and with `torch` also torch.mm (and for ``conv`` the convolution itself,
  torch.nn.functional.conv2d, whose FLOPs are the same);
- **bandwidth** by working-set level: np.add(a, b, out=c) (one thread) over a working set
  inside L1 (half of L1d), L2 (half of L2), L3 (four times L2, at most half of L3) and memory
  (twice L3, at least 32 MiB), from this machine's cache sizes;
- **per-call time** of a tiny op: np.add on one-element arrays, and torch.add with `torch`.

Every figure is the best of repeated samples (a sample lasts at least MIN_SAMPLE_SECONDS) with
the garbage collector off: the best is what the machine can do, and it is the least disturbed
by other load. `cached_probe` keeps the result in the user's cache directory, next to
profile.json, keyed by the fingerprint's speed-relevant fields.

The best of samples cannot undo load that lasts the whole probe: with a 2-core test suite
running beside it, a probe made the transferred MLPs 6-9x too slow (measured 2026-12-01,
benchmarks/portability.py). So `cached_probe` records the load while it probes
(calib.noise.LoadMonitor: other processes' CPU time, steal); a disturbed probe is taken once
more, and a probe still disturbed serves this run only: it is not cached, and one warning line
says so.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from costmodel.machine.profile import Probe, default_profile_path

from calib.machine import _gc_off

#: shape classes of the product probe: (m, k, n) of an (m x k) @ (k x n) product
SHAPES = {"square": (640, 640, 640), "conv": (64, 576, 8192), "small": (64, 64, 64)}
#: the convolution torch's "conv" class runs: input (I, d, a, b), d' filters of h x h, padding 1;
#: as a product W (d' x h h d) phi (h h d x I a b): the "conv" shape above
TORCH_CONV = {"input": (8, 64, 32, 32), "filters": 64, "kernel": 3}
LEVELS = ("L1", "L2", "L3", "memory")
#: cache sizes assumed when the OS does not report them
DEFAULT_CACHES = {"L1d": 32 << 10, "L2": 1 << 20, "L3": 32 << 20}
MIN_SAMPLE_SECONDS = 2e-3
BUDGET_SECONDS = 2.5
PROBE_NAME = "probe-{key}.json"


def working_sets(caches: dict) -> dict[str, int]:
    """The working set (bytes) of the bandwidth probe inside each level, from the cache sizes."""
    c = {**DEFAULT_CACHES, **{k: v for k, v in caches.items() if v}}
    return {"L1": c["L1d"] // 2, "L2": c["L2"] // 2, "L3": min(4 * c["L2"], c["L3"] // 2),
            "memory": min(max(2 * c["L3"], 32 << 20), 256 << 20)}


def best_per_call(fn, budget: float) -> float:
    """Seconds of one call of `fn`: after one untimed call, the best over samples of `inner`
    calls (a sample lasts at least MIN_SAMPLE_SECONDS; the first sample is one call) while
    `budget` seconds last, and at least two samples."""
    with _gc_off():
        start = time.perf_counter()
        fn()
        t0 = time.perf_counter()
        fn()
        best = max(time.perf_counter() - t0, 1e-9)
        inner = max(1, int(MIN_SAMPLE_SECONDS / best))
        samples = 1
        while samples < 2 or time.perf_counter() - start < budget:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            best = min(best, (time.perf_counter() - t0) / inner)
            samples += 1
            if samples >= 200:
                break
    return best


def _numpy_products(dtype: str, threads: int, budget: float) -> list[dict]:
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    out = []
    with threadpool_limits(limits=threads, user_api="blas"):
        for shape, (m, k, n) in SHAPES.items():
            a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
            c = np.empty((m, n), dtype)
            t = best_per_call(lambda: np.matmul(a, b, out=c), budget)
            out.append({"backend": "numpy", "dtype": dtype, "threads": threads, "shape": shape,
                        "m": m, "k": k, "n": n, "flops_per_second": 2 * m * k * n / t})
    return out


def _torch_products(torch, dtype: str, threads: int, budget: float) -> list[dict]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        tdtype = getattr(torch, dtype)
        out = []
        for shape, (m, k, n) in SHAPES.items():
            if shape == "conv":
                x = torch.randn(TORCH_CONV["input"], generator=gen, dtype=tdtype)
                h = TORCH_CONV["kernel"]
                w = torch.randn((TORCH_CONV["filters"], x.shape[1], h, h), generator=gen, dtype=tdtype)

                def run():
                    with torch.no_grad():
                        torch.nn.functional.conv2d(x, w, padding=h // 2)
            else:
                a, b = torch.randn((m, k), generator=gen, dtype=tdtype), torch.randn((k, n), generator=gen, dtype=tdtype)
                c = torch.empty((m, n), dtype=tdtype)

                def run(a=a, b=b, c=c):
                    torch.mm(a, b, out=c)
            t = best_per_call(run, budget)
            out.append({"backend": "torch", "dtype": dtype, "threads": threads, "shape": shape,
                        "m": m, "k": k, "n": n, "flops_per_second": 2 * m * k * n / t})
        return out
    finally:
        torch.set_num_threads(previous)


def _bandwidth(level: str, working_set: int, budget: float) -> dict:
    n = max(1, working_set // (3 * 8))
    a, b, c = (np.ones(n) for _ in range(3))
    t = best_per_call(lambda: np.add(a, b, out=c), budget)
    return {"level": level, "working_set_bytes": 3 * 8 * n, "bytes_per_second": 3 * 8 * n / t}


def probe(threads: Iterable[int] = (1,), dtypes: Iterable[str] = ("float32", "float64"), *, torch: bool = False,
          caches: dict | None = None, budget_seconds: float = BUDGET_SECONDS) -> Probe:
    """Probe this machine (see the module docstring) at each of `threads` and `dtypes`, with
    PyTorch's products and call time too when `torch`; spends about `budget_seconds` beyond
    importing torch. `caches`: the cache sizes the levels' working sets come from (default:
    this machine's, from sysfs)."""
    from costmodel.machine.fingerprint import cache_sizes

    started = time.perf_counter()
    threads, dtypes = sorted(set(threads)), sorted(set(dtypes))
    torch_module = None
    if torch:
        from calib.backends.torch import import_torch

        torch_module = import_torch()
    backends = 2 if torch_module is not None else 1
    items = backends * (len(threads) * len(dtypes) * len(SHAPES) + 1) + len(LEVELS)
    deadline = time.perf_counter() + budget_seconds

    def each(n_items: int = 1) -> float:
        """The share of the time left for the next n_items of the `items` still to probe."""
        nonlocal items
        share = max(deadline - time.perf_counter(), 0.0) * n_items / items
        items -= n_items
        return share / n_items

    products = []
    for n in threads:  # PyTorch's products first: NumPy's BLAS threads spin on after a product
        if torch_module is not None:  # (calib.workers.settle_blas) and would share the cores
            for dtype in dtypes:
                products += _torch_products(torch_module, dtype, n, each(len(SHAPES)))
        for dtype in dtypes:
            products += _numpy_products(dtype, n, each(len(SHAPES)))
    sets = working_sets(cache_sizes() if caches is None else caches)
    bandwidth = [_bandwidth(level, sets[level], each()) for level in LEVELS]
    one = [np.ones(1) for _ in range(3)]
    calls = {"numpy": best_per_call(lambda: np.add(one[0], one[1], out=one[2]), each())}
    if torch_module is not None:
        tiny = [torch_module.ones(1) for _ in range(3)]
        calls["torch"] = best_per_call(lambda: torch_module.add(tiny[0], tiny[1], out=tiny[2]), each())
    return Probe(products=products, bandwidth=bandwidth, call_seconds=calls,
                 seconds=round(time.perf_counter() - started, 3))


# -- the cache -----------------------------------------------------------------------------------

#: fingerprint fields a probe depends on (not the thread count of the run, the platform string)
KEY_FIELDS = ("cpu_model", "cpu_vendor", "cpu_family", "cpu_model_id", "cpu_stepping", "cpu_flags", "caches",
              "cores_available", "numpy_version", "torch_version")


def probe_key(fingerprint: dict) -> str:
    """16 hex digits naming the machine and software a probe was taken on."""
    blas = [{k: b.get(k) for k in ("internal_api", "version", "threading_layer", "architecture")}
            for b in fingerprint.get("blas", [])]
    data = {**{k: fingerprint.get(k) for k in KEY_FIELDS}, "blas": blas}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def covers(result: Probe, threads: Iterable[int], dtypes: Iterable[str], torch: bool) -> bool:
    """Whether a probe has every product, level and call time asked for."""
    have = {(p.backend, p.dtype, p.threads, p.shape) for p in result.products}
    backends = ("numpy", "torch") if torch else ("numpy",)
    return (all((b, d, n, s) in have for b in backends for d in dtypes for n in threads for s in SHAPES)
            and {lv.level for lv in result.bandwidth} >= set(LEVELS)
            and all(b in result.call_seconds for b in backends))


def default_monitor():
    """The load monitor's factory a probe runs under: calib.noise.LoadMonitor (the test suite
    replaces it with a quiet one, tests/conftest.py, so that its own other processes do not add
    a warning line to the commands it checks; tests/test_probe.py checks the real case)."""
    from calib.noise import LoadMonitor

    return LoadMonitor


def quiet_probe(threads: Iterable[int], dtypes: Iterable[str], *, torch: bool = False, caches: dict | None = None,
                budget_seconds: float = BUDGET_SECONDS, monitor=None, attempts: int = 2):
    """probe(...) under a load monitor (calib.noise.LoadMonitor, or the factory `monitor`),
    taken again while the machine was disturbed, at most `attempts` times; returns (probe,
    load of its last attempt)."""
    monitor = default_monitor() if monitor is None else monitor
    for _ in range(max(attempts, 1)):
        with monitor() as watch:
            result = probe(threads, dtypes, torch=torch, caches=caches, budget_seconds=budget_seconds)
        if not watch.load.disturbed:
            break
    return result, watch.load


def cached_probe(threads: Iterable[int] = (1,), dtypes: Iterable[str] = ("float32", "float64"), *,
                 torch: bool = False, fingerprint: dict | None = None, path: str | Path | None = None,
                 budget_seconds: float = BUDGET_SECONDS, monitor=None) -> tuple[Probe, bool]:
    """This machine's probe from the cache when it has what is asked for, else probed now and
    cached; returns (probe, taken_now). The cache file is
    $XDG_CACHE_HOME/costmodel/probe-<key>.json (probe_key of `fingerprint`, default this
    machine's); a damaged file is probed again and replaced, atomically. A probe taken on a
    disturbed machine (quiet_probe, twice) is not cached and is warned about
    (costmodel.errors.warn); `monitor`: the load monitor's factory (tests)."""
    from pydantic import ValidationError

    from costmodel.errors import warn
    from costmodel.machine.fingerprint import take_fingerprint
    from costmodel.present.report import atomic_write

    threads, dtypes = sorted(set(threads)), sorted(set(dtypes))
    fp = take_fingerprint() if fingerprint is None else fingerprint
    path = Path(path) if path is not None else default_profile_path().parent / PROBE_NAME.format(key=probe_key(fp))
    try:
        cached = Probe.model_validate_json(path.read_text(encoding="utf-8"))
        if covers(cached, threads, dtypes, torch):
            return cached, False
    except (OSError, ValueError, ValidationError):
        pass
    result, load = quiet_probe(threads, dtypes, torch=torch, caches=fp.get("caches"), budget_seconds=budget_seconds,
                               monitor=monitor)
    if load.disturbed:
        warn(f"the probe of this machine ran while {'; '.join(load.reasons)}: it serves this run only (not "
             "cached) and the transfer may be off; predict again on a quiet machine")
        return result, True
    try:
        atomic_write(path, result.model_dump_json(indent=2) + "\n", make_parents=True)
    except OSError:  # a read-only cache directory: the probe still serves this run
        pass
    return result, True
