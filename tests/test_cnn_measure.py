"""measure() times every op of real steps once per step; the memory estimate matches what a
step really allocates."""

from __future__ import annotations

import tracemalloc

import pytest

from calib.cnn import IMPLS, ReferenceCNN
from calib.measure import blas_threads, measure, synthetic_batch
from calib.memory import check_memory, estimate_step_bytes
from costmodel.errors import CostModelError
from costmodel.model.ops import op_keys
from tests.conftest import COURSE_EXAMPLES, STEP_EXAMPLES
from tests.test_cnn import EXAMPLES, example


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("path", STEP_EXAMPLES, ids=lambda p: p.stem)
def test_measure_times_every_op(path, impl):
    batch = 8 if path in COURSE_EXAMPLES else 2  # the extended vocabulary's examples are larger
    arch = example(path, batch=batch)
    calls = []
    result = measure(arch, steps=3, warmup=1, impl=impl, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(i, 4) for i in range(1, 5)]
    assert {k: result[k] for k in ("arch", "batch", "dtype", "impl")} == {
        "arch": arch.name, "batch": batch, "dtype": arch.dtype, "impl": impl}
    assert result["threads"] == blas_threads() >= 1
    keys = [(op["layer"], op["layer_type"], op["op"], op["phase"]) for op in result["ops"]]
    assert keys == [tuple(k) for k in op_keys(arch)]
    assert len({(layer, op, phase) for layer, _, op, phase in keys}) == len(keys)
    assert result["total_seconds"] == pytest.approx(sum(op["seconds"] for op in result["ops"]))
    assert sum(op["fraction"] for op in result["ops"]) == pytest.approx(1.0)
    assert all(op["seconds"] > 0 for op in result["ops"])
    assert "flops" not in result["ops"][0] and "bytes" not in result["ops"][0]


class FakeClock:
    """perf_counter_ns that advances by `tick` nanoseconds at every call."""

    def __init__(self, tick: int = 1000):
        self.now, self.tick = 0, tick

    def __call__(self) -> int:
        self.now += self.tick
        return self.now


@pytest.mark.parametrize("impl", IMPLS)
def test_laps_tile_the_step(monkeypatch, impl):
    """With a clock that ticks once per reading, every op is one tick and the whole step is
    its ops plus the two readings around it: the laps tile the step, none is lost or counted
    twice (a structural check that holds on any machine; benchmarks/coverage.py measures the
    real coverage)."""
    import calib.measure
    import calib.timer

    clock = FakeClock()
    monkeypatch.setattr(calib.timer, "perf_counter_ns", clock)
    monkeypatch.setattr(calib.measure, "perf_counter_ns", clock)
    arch = example(EXAMPLES[0], batch=2)
    result = measure(arch, steps=3, warmup=1, impl=impl)
    n = len(op_keys(arch))
    assert all(op["seconds"] == pytest.approx(1e-6) for op in result["ops"])
    assert result["total_seconds"] == pytest.approx(n * 1e-6)
    # t0, timer.begin(), n laps, t1: the step spans n + 2 ticks
    assert result["step_seconds"] == pytest.approx((n + 2) * 1e-6)
    assert result["coverage"] == pytest.approx(n / (n + 2))


def test_measure_footer_says_what_each_step_figure_is(monkeypatch):
    """`measure`'s footer labels its three figures so that none reads as another's arithmetic:
    the median step, the coverage (per step, its op times / its wall clock) and the sum of the
    ops' medians the fractions are of. A clock that ticks once per reading gives n ops of one
    tick in steps of n + 2 ticks (no real time is asserted)."""
    import calib.measure
    import calib.timer
    from calib.commands import measure_command
    from costmodel.units import fmt_seconds

    clock = FakeClock()
    monkeypatch.setattr(calib.timer, "perf_counter_ns", clock)
    monkeypatch.setattr(calib.measure, "perf_counter_ns", clock)
    path = EXAMPLES[0]
    text = measure_command(path, batch=2, steps=3, warmup=1, threads=None, impl="index", fmt="table")
    n = len(op_keys(example(path, batch=2)))
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("step: "))
    assert lines[first:first + 3] == [
        f"step: {fmt_seconds((n + 2) * 1e-6)} (median of 3 whole steps)",
        f"coverage {n / (n + 2):.3f}: the sum of a step's op times / its wall clock, median of the 3 steps",
        f"fraction: an op's median time / the sum of the ops' medians, {fmt_seconds(n * 1e-6)}"]
    assert "sum of ops" not in text


def test_measure_runs_a_threaded_step():
    """At batch 64 the strided CIFAR network shares its ops among two threads."""
    arch = example(next(p for p in EXAMPLES if p.stem == "cifar10-demo-layer4"), batch=64)
    assert ReferenceCNN(arch, impl="strided", threads=2).workers.threads == 2
    result = measure(arch, steps=2, warmup=1, impl="strided", threads=2)
    assert result["threads"] == 2
    assert [tuple(op[k] for k in ("layer", "layer_type", "op", "phase")) for op in result["ops"]] \
        == [tuple(k) for k in op_keys(arch)]


def test_measure_samples_the_handoff_and_lets_the_blas_threads_settle_before_its_first_step(monkeypatch):
    """The BLAS's threads spin on after a threaded product; measure waits them out before it
    runs a step (calib.workers.settle_blas), so what ran before in the process (the cores'
    hand-off sample among it) does not share the cores with the steps it times; the hand-off
    is sampled again after the steps and both samples are in the load record."""
    import calib.measure as measure_module
    import calib.workers

    events = []
    samples = iter([2e-5, 4e-5])
    monkeypatch.setattr(calib.workers, "settle_blas", lambda: events.append("settle"))
    monkeypatch.setattr(measure_module, "handoff_seconds", lambda: (events.append("handoff"), next(samples))[1])
    step = ReferenceCNN.step
    monkeypatch.setattr(ReferenceCNN, "step", lambda self, *a, **k: (events.append("step"), step(self, *a, **k))[1])
    result = measure(example(EXAMPLES[0], batch=2), steps=2, warmup=1, impl="strided", threads=2)
    assert events == ["handoff", "settle", "step", "step", "step", "handoff"]
    assert result["load"]["handoff_seconds"] == [2e-5, 4e-5]
    assert any("hand-off changed" in note for note in result["load"]["notes"])


def test_measure_limits_threads():
    result = measure(example(EXAMPLES[0], batch=2), steps=1, warmup=0, threads=1)
    assert result["threads"] == 1


def step_peak_bytes(arch, impl: str) -> int:
    """tracemalloc's peak over building ReferenceCNN(arch, impl) and one step of a synthetic batch."""
    tracemalloc.start()
    try:
        X, Y = synthetic_batch(arch)
        ReferenceCNN(arch, impl=impl).step(X, Y)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("path", COURSE_EXAMPLES, ids=lambda p: p.stem)
def test_memory_estimate_matches_tracemalloc(path, impl):
    """The course's examples at I = 16 (the extended vocabulary's: tests/test_cnn_vocab.py)."""
    arch = example(path, batch=16)
    assert estimate_step_bytes(arch, impl) == pytest.approx(step_peak_bytes(arch, impl), rel=0.15)


def test_memory_estimate_grows_with_the_batch_and_index_arrays():
    arch = example(EXAMPLES[0], batch=8)
    assert estimate_step_bytes(arch.with_batch(16), "index") > estimate_step_bytes(arch, "index")
    assert estimate_step_bytes(arch, "index") > estimate_step_bytes(arch, "strided")


def test_check_memory_refuses_a_step_that_does_not_fit(tmp_path):
    arch = example(EXAMPLES[0], batch=128)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        2048 kB\nMemAvailable:    1024 kB\n")
    with pytest.raises(CostModelError, match=r"needs an estimated [\d.]+ GiB, but only 0.0 GiB is available"):
        check_memory(arch, "index", meminfo)
    meminfo.write_text(f"MemAvailable:    {2 ** 40 // 1024} kB\n")
    assert check_memory(arch, "index", meminfo) == estimate_step_bytes(arch, "index")
    assert check_memory(arch, "index", tmp_path / "missing") > 0
