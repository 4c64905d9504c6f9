"""Calibration on a tiny sweep: real kernels, a valid profile, every op kind fitted; an
interrupted or killed calibration leaves no partial profile."""

import os
import signal
import subprocess
import sys
import time

import pytest

from calib.calibrate import COVERAGE_POINTS, DTYPES, Plan
from calib.design import QUICK_LIMITS, design, s_bytes
from costmodel.machine.backends.numpy import SPLIT_BYTES
import json

from costmodel.machine.backends import backend
from costmodel.machine.predict import predict
from costmodel.machine.profile import load_profile
from costmodel.machine.timemodel import Machine
from costmodel.model.arch import load_arch
from costmodel.model.step import step_costs

from tests.conftest import EXAMPLES, ROOT, tiny_limits

TINY = tiny_limits()


def test_sweep_design_is_reproducible_and_within_limits():
    first = design(12, dtype="float64", seed=3, limits=TINY)
    again = design(12, dtype="float64", seed=3, limits=TINY)
    assert [a.model_dump() for a in first] == [a.model_dump() for a in again]
    assert all(a.dtype == "float64" for a in first)
    assert any(a.n_conv == 0 for a in first) and any(a.n_conv == 2 for a in first)


def test_pooling_points_leave_the_drawn_points_as_they_were():
    """The pooling points take the last places of the sweep from a generator of their own:
    the points before them are those of a sweep without them, and the strided implementation
    shares each one's pooling among its threads, but every third one's, which runs in the
    calling thread."""
    plain = design(30, dtype="float32", seed=1)
    pooled = design(30, dtype="float32", seed=1, pool_points=6)
    assert [a.model_dump() for a in pooled[:24]] == [a.model_dump() for a in plain[:24]]
    for k, arch in enumerate(pooled[24:]):
        rows = backend("numpy").rows(arch, "strided", 2, Machine())
        regimes = {str(r.model).partition(":")[2].split("+")[-1] for r in rows if r.ops[0] in ("pool", "pool_grad")}
        assert regimes <= ({"", "avg", "overlap"} if k % 3 == 2 else {"threaded"}), (arch.name, regimes)
    assert len(design(12, dtype="float32", seed=1, limits=TINY, pool_points=3)) == 12  # too small to pool: drawn
    names = [a.name for a in pooled]
    assert names == [f"sweep-{i}" for i in range(30)]
    for bad in (-1, 31):
        with pytest.raises(ValueError, match="pool_points"):
            design(30, dtype="float32", seed=1, pool_points=bad)
    with pytest.raises(ValueError, match="coverage_points"):
        design(30, dtype="float32", seed=1, pool_points=20, coverage_points=11)


def test_coverage_points_come_last_and_run_threaded():
    """A quick plan's coverage points take the sweep's last places, after the pooling points,
    leave the points before them as drawn, and each shares the ops of its first layer among
    the strided implementation's threads (their reason to be)."""
    plain = design(30, dtype="float32", seed=1, limits=QUICK_LIMITS, pool_points=5)
    covered = design(36, dtype="float32", seed=1, limits=QUICK_LIMITS, pool_points=5, coverage_points=6)
    assert [a.model_dump() for a in covered[:25]] == [a.model_dump() for a in plain[:25]]
    assert [a.name for a in covered] == [f"sweep-{i}" for i in range(36)]
    for arch in covered[30:]:
        rows = backend("numpy").rows(arch, "strided", 2, Machine())
        first = {str(r.model) for r in rows if r.layer == 1 and r.ops[0] in ("activation", "batch_norm")}
        assert first and all(k.endswith("threaded") for k in first), (arch.name, first)


def test_the_strided_threaded_poolings_have_samples_for_their_coefficients():
    """Every threaded pooling variant of the strided implementation is fitted on at least
    six sweep networks of the full NumPy plan, in both dtypes (3-5 without the pooling points
    gave a five-coefficient fit nothing to tell its terms apart with)."""
    plan = Plan.make(quick=False, dtypes=None, impls=None)
    for dtype in plan.dtypes:
        sampled = model_keys(plan.sweep(dtype), "numpy", "strided", 2)
        pools = {k: len(v) for k, v in sampled.items() if k.startswith("pool") and "threaded" in k}
        assert set(pools) == {"pool:threaded", "pool:avg+threaded", "pool_grad:threaded", "pool_grad:avg+threaded",
                              "pool_grad:overlap+threaded"}, pools
        assert min(pools.values()) >= 6, (dtype, pools)


def test_the_threaded_models_the_networks_need_have_five_networks():
    """With its coverage points, the full NumPy plan fits every threaded model of the strided
    implementation that an example or benchmark network needs on at least five sweep networks
    in both dtypes (the residual addition, global average pooling and tanh had 3 without them);
    and the coverage points are its last."""
    plan = Plan.make(quick=False, dtypes=None, impls=None)
    assert plan.coverage_points == COVERAGE_POINTS > 0
    networks = [*EXAMPLES, *sorted((ROOT / "benchmarks" / "archs").glob("*.yaml"))]
    for dtype in plan.dtypes:
        archs = plan.sweep(dtype)
        sampled = model_keys(archs, "numpy", "strided", 2)
        needed = {k for path in networks for k in model_keys([load_arch(path).with_dtype(dtype)], "numpy", "strided", 2)
                  if k.endswith("threaded")}
        counts = {k: len(sampled.get(k, ())) for k in needed}
        assert min(counts.values()) >= 5, (dtype, sorted(counts.items(), key=lambda kv: kv[1])[:3])
        assert all(s_bytes(a, 0) >= SPLIT_BYTES for a in archs[-COVERAGE_POINTS:])


def model_keys(archs, backend_name: str, impl: str, threads: int) -> dict[str, set[int]]:
    """{model key: the indices of the networks whose rows use it}."""
    be = backend(backend_name)
    keys: dict[str, set[int]] = {}
    for i, arch in enumerate(archs):
        for row in be.rows(arch, impl, threads, Machine()):
            keys.setdefault(str(row.model), set()).add(i)
    return keys


@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
def test_the_sweep_samples_every_model_key_the_examples_need(quick):
    """Every model key of every example and benchmark network (the extended vocabulary's
    variants and the strided regimes included) is fitted on at least two sweep networks, in
    every plan `calibrate` runs, `--quick` with `--impl strided` or `--backend torch` and
    `--dtype float64` too: predict works on every one of them with a profile made by
    `calibrate`. Pure: no network is timed."""
    archs_of = [*EXAMPLES, *sorted((ROOT / "benchmarks" / "archs").glob("*.yaml"))]
    for backend_name, impl in [("numpy", "index"), ("numpy", "strided"), ("torch", "torch")]:
        plan = Plan.make(quick=quick, dtypes=DTYPES, impls=[impl] if quick and backend_name == "numpy" else None,
                         backend=backend_name)
        for dtype in plan.dtypes:
            archs = plan.sweep(dtype)
            for threads in (1, 2) if impl == "strided" else (2,):  # only the strided regimes depend on threads
                sampled = model_keys(archs, backend_name, impl, threads)
                for path in archs_of:
                    arch = load_arch(path).with_dtype(dtype)
                    for key in model_keys([arch], backend_name, impl, threads):
                        assert len(sampled.get(key, ())) >= 2, (path.stem, backend_name, impl, dtype, threads, key)


def test_tiny_calibration_fits_every_op_kind_of_the_sweep(tiny_profile):
    path, plan = tiny_profile
    profile = load_profile(path)
    archs = plan.sweep("float32")
    for impl in plan.impls:
        kinds = set(model_keys(archs, "numpy", impl, 1))
        entry = profile.entry("float32", impl, 1)
        assert set(entry.ops) == kinds
        for model in entry.ops.values():
            assert model.n_samples >= 1 and all(c >= 0 for c in model.coef)
            assert model.cv_error is not None and model.cv_error >= 0


def test_a_prediction_is_the_profiles_coefficients_times_the_ops_costs(tiny_profile):
    """An architecture the sweep never saw: every op has a model, and each op's predicted time
    is the dot product of the coefficients in the profile FILE with the features worked out
    here from the op's FLOPs and bytes and the fingerprint's caches."""
    path, _ = tiny_profile
    data = json.loads(path.read_text())
    [entry] = [e for e in data["entries"] if e["impl"] == "index"]
    l2, l3 = data["fingerprint"]["caches"].get("L2", float("inf")), data["fingerprint"]["caches"].get("L3", float("inf"))
    arch = load_arch(ROOT / "examples" / "digits-small.yaml")
    costs = step_costs(arch, "index")
    pred = predict(arch, load_profile(path), impl="index", threads=1)
    for i, row in enumerate(pred.rows):
        model = entry["ops"][f"{row.name}:{arch.loss}" if row.name.startswith("loss") else row.name]
        flops, nbytes = int(costs.flops[i]), int(costs.bytes[i])
        values = {"calls": 1, "flops": flops, "bytes": nbytes, "bytes_beyond_L2": nbytes if nbytes > l2 else 0,
                  "bytes_beyond_L3": nbytes if nbytes > l3 else 0}
        expected = sum(c * values[f] for f, c in zip(model["features"], model["coef"]))
        assert row.seconds == pytest.approx(expected, rel=1e-12), row.key
        assert row.seconds_low == pytest.approx(expected * model["interval"][0], rel=1e-12)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_killed_calibration_leaves_no_profile(tmp_path, sig):
    out = tmp_path / "profile.json"
    # ^C as at a terminal: the child must not inherit an ignored SIGINT (a test run started in the
    # background by a non-interactive shell ignores it, and so, rightly, would costmodel)
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "calibrate", "--quick", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(3.0)  # inside the sweep: importing, ceilings, timing
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert not out.exists()
    assert os.listdir(tmp_path) == []  # no temporary file either
    if sig == signal.SIGINT:
        assert "Traceback" not in err and "interrupted" in err


def test_tiny_calibration_keeps_every_rate_within_its_ceiling(tiny_profile):
    """Facts are physical: every model was fitted under a ceiling measured on this machine (the
    peak product at one thread, the bandwidth of each level), stored with it, and none of its
    rates is above it; the probe for transfers is stored too."""
    from calib.fit import flops_at_peak, over_ceiling
    from costmodel.present.profile_text import render_profile

    path, plan = tiny_profile
    profile = load_profile(path)
    assert {(p.backend, p.dtype, p.threads) for p in profile.ceilings.peaks} == {("numpy", "float32", 1)}
    for entry in profile.entries:
        assert entry.load is not None and entry.load.cores_available >= 1
        for key, model in entry.ops.items():
            assert model.ceiling is not None
            # a matrix product's FLOPs run at the peak (calib.fit.flops_at_peak), the rest is fitted
            pinned = flops_at_peak(key, entry.backend)
            assert model.model == ("roofline-linear" if pinned else "bounded-linear"), key
            if pinned:
                assert dict(zip(model.features, model.coef))["flops"] == 1 / model.ceiling.flops_per_second
            assert model.ceiling.flops_per_second == profile.ceilings.peaks[0].flops_per_second
            assert set(model.ceiling.bytes_per_second) <= {"L2", "L3", "memory"}
            assert over_ceiling(model) == [], (entry.describe(), key)
    assert {p.shape for p in profile.probe.products} == {"square", "conv", "small"}
    assert {lv.level for lv in profile.probe.bandwidth} == {"L1", "L2", "L3", "memory"}
    assert "% of the" in render_profile(profile) and "peak" in render_profile(profile)


def test_the_step_interval_of_a_calibration_is_the_predictions_interval(tiny_profile):
    """The tiny calibration stores a step interval from its networks (calib.fit.step_interval),
    and predict's step bounds are the prediction times those factors."""
    path, plan = tiny_profile
    profile = load_profile(path)
    entry = profile.entry("float32", "index", 1)
    lo, hi = entry.step_interval
    assert 0 < lo <= hi and entry.step_networks == plan.points and entry.step_cv_error >= 0
    pred = predict(load_arch(ROOT / "examples" / "digits-small.yaml"), profile, impl="index", threads=1)
    assert (pred.total_seconds_low, pred.total_seconds_high) == pytest.approx((lo * pred.total_seconds,
                                                                                hi * pred.total_seconds))
    assert pred.interval == f"90 % of the cross-validated steps of {plan.points} calibration networks"


def test_predict_takes_the_interval_of_the_steps_size_class(tiny_profile):
    """With step intervals by size, predict's bounds are its size class's factors, named."""
    from costmodel.machine.profile import SizeInterval

    profile = load_profile(tiny_profile[0])
    arch = load_arch(ROOT / "examples" / "digits-small.yaml")
    total = predict(arch, profile, impl="index", threads=1).total_seconds
    for split, factors, which in ((2 * total, (0.6, 1.4), "below"), (total / 2, (0.9, 1.1), "from")):
        classes = [SizeInterval(below_seconds=split, interval=(0.6, 1.4), networks=20),
                   SizeInterval(interval=(0.9, 1.1), networks=20)]
        entries = [e.model_copy(update={"step_intervals_by_size": classes}) for e in profile.entries]
        pred = predict(arch, profile.model_copy(update={"entries": entries}), impl="index", threads=1)
        assert (pred.total_seconds_low, pred.total_seconds_high) == pytest.approx(
            (factors[0] * pred.total_seconds, factors[1] * pred.total_seconds))
        assert pred.interval.startswith("90 % of the cross-validated steps of 20 calibration networks predicted "
                                        f"{which} ")
