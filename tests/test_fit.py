"""The fit recovers known synthetic costs; its CV error and intervals mean what they say."""

import numpy as np
import pytest

from calib.fit import OpTimeModel, fit_op
from costmodel.machine.backends import ModelKey, Row
from costmodel.machine.timemodel import FEATURES, Machine, design_matrix


def synthetic(n=300, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    flops = 10 ** rng.uniform(3, 10, n)
    nbytes = 10 ** rng.uniform(3, 9, n)
    ws_l2 = np.where(nbytes > 1e6, nbytes, 0.0)
    ws_l3 = np.where(nbytes > 3e7, nbytes, 0.0)
    X = np.column_stack([np.ones(n), flops, nbytes, ws_l2, ws_l3])
    # 12 us per call, 80 GFLOP/s, 40 GB/s in cache, +20 GB/s^-1 beyond L2, more beyond L3
    coef = np.array([12e-6, 1 / 80e9, 1 / 40e9, 1 / 20e9, 1 / 30e9])
    t = X @ coef * np.exp(rng.normal(0, noise, n))
    groups = np.arange(n) // 3
    return X, t, coef, groups


def test_recovers_known_coefficients_exactly_without_noise():
    X, t, coef, _ = synthetic()
    np.testing.assert_allclose(OpTimeModel().fit(X, t).coef_, coef, rtol=1e-6)


def test_recovers_coefficients_under_noise_and_reports_cv_error():
    X, t, coef, groups = synthetic(noise=0.05, seed=1)
    result = fit_op(X, t, groups)
    np.testing.assert_allclose(result.coef, coef, rtol=0.1)
    assert 0.01 < result.cv_error < 0.08  # ~ the 5 % noise put in
    lo, hi = result.interval
    assert lo < 1.0 < hi
    assert result.n_groups == 100


def test_coefficients_are_never_negative():
    X, t, _, groups = synthetic(noise=0.3, seed=2)
    X = X.copy()
    X[:, 1] = 0  # a feature that explains nothing
    assert min(fit_op(X, t, groups).coef) >= 0


def _row(n_flops: int, n_bytes: int, **basis) -> Row:
    return Row(1, "conv", ("phi",), "forward", "index manipulation", n_flops, n_bytes, 0, 0, ModelKey(("phi",)),
               "phi", "phi", basis)


def test_the_design_matrix_uses_the_cache_sizes():
    rows = [_row(10, 100), _row(0, 5_000_000), _row(5, 1_000_000_000)]
    X = design_matrix(rows, Machine({"L2": 1_000_000, "L3": 32_000_000}), FEATURES)
    assert X.shape == (3, len(FEATURES))
    np.testing.assert_array_equal(X[:, FEATURES.index("calls")], [1, 1, 1])
    np.testing.assert_array_equal(X[:, FEATURES.index("flops")], [10, 0, 5])
    np.testing.assert_array_equal(X[:, FEATURES.index("bytes_beyond_L2")], [0, 5e6, 1e9])
    np.testing.assert_array_equal(X[:, FEATURES.index("bytes_beyond_L3")], [0, 0, 1e9])


def test_the_design_matrix_reads_a_rows_basis_and_refuses_an_unknown_feature():
    other = _row(0, 0, flops=7, bytes=9, bytes_fresh=3)  # a row costed by its scope (torch's "other")
    X = design_matrix([other], Machine(), ("flops", "bytes", "bytes_fresh", "flops_lane_waste"))
    np.testing.assert_array_equal(X, [[7, 9, 3, 0]])
    with pytest.raises(ValueError, match="unknown feature 'joules'"):
        design_matrix([other], Machine(), ("joules",))


# -- facts are physical: the fit stays within the measured ceilings --------------------------------

from calib.fit import Ceiling, bounded_lstsq  # noqa: E402

L2, L3 = 1e6, 3e7


def levels(n=300, seed=0, coef=(12e-6, 1 / 80e9, 1 / 40e9, 1 / 20e9, 1 / 30e9), noise=0.0):
    """Synthetic samples over the three working-set levels, times from `coef`."""
    rng = np.random.default_rng(seed)
    flops = 10 ** rng.uniform(3, 10, n)
    nbytes = 10 ** rng.uniform(3, 9, n)
    X = np.column_stack([np.ones(n), flops, nbytes, np.where(nbytes > L2, nbytes, 0.0),
                         np.where(nbytes > L3, nbytes, 0.0)])
    t = X @ np.array(coef) * np.exp(rng.normal(0, noise, n))
    return X, t, np.arange(n) // 3


def effective(coef):
    """Effective bytes/s in cache, beyond L2 and beyond L3 of FEATURES' coefficients."""
    c = dict(zip(FEATURES, coef))
    return (1 / c["bytes"], 1 / (c["bytes"] + c["bytes_beyond_L2"]),
            1 / (c["bytes"] + c["bytes_beyond_L2"] + c["bytes_beyond_L3"]))


def test_a_ceiling_far_above_the_rates_changes_nothing():
    X, t, groups = levels()
    loose = Ceiling(1e13, {"L2": 1e12, "L3": 1e12, "memory": 1e12})
    np.testing.assert_allclose(OpTimeModel(ceiling=loose).fit(X, t).coef_, OpTimeModel().fit(X, t).coef_, rtol=1e-6)
    assert fit_op(X, t, groups, ceiling=loose).model == "bounded-linear"


def test_no_rate_above_its_ceiling_when_the_data_say_faster():
    # the data's rates: 80 GFLOP/s, 40 GB/s in cache, 13.3 GB/s beyond L2, 8 GB/s beyond L3;
    # the ceilings: a 50 GFLOP/s peak and 30 / 10 / 6 GB/s
    X, t, groups = levels(noise=0.05, seed=3)
    ceiling = Ceiling(50e9, {"L2": 30e9, "L3": 10e9, "memory": 6e9})
    result = fit_op(X, t, groups, ceiling=ceiling)
    coef = dict(zip(FEATURES, result.coef))
    assert 1 / coef["flops"] <= 50e9 * (1 + 1e-9)
    for rate, roof in zip(effective(result.coef), (30e9, 10e9, 6e9)):
        assert rate <= roof * (1 + 1e-9)
    assert min(result.coef) >= 0


def test_a_binding_sum_is_met_at_the_least_cost():
    """Only beyond L2 is the data faster than its ceiling: the sum c_byte + c_L2 binds, the
    in-cache rate stays what the data say."""
    coef = (12e-6, 1 / 80e9, 1 / 40e9, 1 / 200e9, 1 / 30e9)  # 33 GB/s beyond L2
    X, t, _ = levels(coef=coef)
    fitted = OpTimeModel(ceiling=Ceiling(None, {"L3": 25e9})).fit(X, t).coef_
    in_cache, beyond_l2, _ = effective(fitted)
    assert beyond_l2 == pytest.approx(25e9, rel=1e-6)
    assert in_cache > 25e9 and min(fitted) >= 0


def test_an_unused_feature_costs_the_least_its_ceiling_allows():
    X, t, _ = levels()
    small = X[:, 2] <= L3  # no sample beyond L3
    X, t = X[small], t[small]
    fitted = OpTimeModel(ceiling=Ceiling(None, {"memory": 5e9})).fit(X, t).coef_
    assert effective(fitted)[2] == pytest.approx(5e9, rel=1e-9)
    assert OpTimeModel().fit(X, t).coef_[FEATURES.index("bytes_beyond_L3")] == 0


def test_bounded_lstsq_solves_a_small_constrained_problem():
    # min (x0 - 1)^2 + (x1 - 1)^2 subject to x >= 0 and x0 + x1 >= 4: x = (2, 2)
    x = bounded_lstsq(np.eye(2), np.ones(2), np.zeros(2), np.array([[1.0, 1.0]]), np.array([4.0]))
    np.testing.assert_allclose(x, [2, 2], rtol=1e-6)


def test_the_sums_hold_when_the_columns_have_very_different_scales():
    """The solver works on columns scaled to 1: a sum met there is met in seconds per unit too."""
    G = np.array([[1.0, 1e-6]])
    x = bounded_lstsq(np.array([[1.0, 0.0], [0.0, 1e-3]]), np.array([0.0, 0.0]), np.zeros(2), G, np.array([1.0]))
    assert G @ x >= 1.0 * (1 - 1e-9) and min(x) >= 0


def test_ceiling_of_an_op_follows_the_threads_it_runs_on():
    from calib.fit import ceiling_of

    peaks = {("numpy", "float32", 1): 60e9, ("numpy", "float32", 2): 110e9, ("torch", "float32", 2): 150e9,
             ("numpy", "float64", 2): 50e9}
    levels = {"L2": 60e9, "memory": 15e9}

    def of(key, backend="numpy", impl="index"):
        return ceiling_of(key, backend=backend, impl=impl, threads=2, peaks=peaks, dtype="float32", levels=levels)

    assert of("conv_matmul") == Ceiling(110e9, {"L2": 120e9, "memory": 30e9}, 2)  # BLAS's two threads
    assert of("phi") == Ceiling(60e9, levels, 1)  # NumPy indexing: one thread
    assert of("conv_matmul:serial", impl="strided") == Ceiling(60e9, levels, 1)
    assert of("phi:threaded", impl="strided").threads == 2
    assert of("phi+conv_matmul+bias", backend="torch", impl="torch").flops_per_second == 150e9
    assert of("other:forward", backend="torch", impl="torch") is None
    # a peak measured lower with two threads (a busy core) does not bound below one thread's
    slow = {**peaks, ("numpy", "float32", 2): 10e9}
    assert ceiling_of("conv_matmul", backend="numpy", impl="index", threads=2, peaks=slow, dtype="float32",
                      levels=levels).flops_per_second == 60e9


def test_the_step_interval_comes_from_whole_networks_cross_validated():
    """Networks whose ops all miss the same way (a factor per network) make a step interval of
    those factors; the same per-op scatter that cancels within a network does not widen it."""
    from calib.fit import step_interval

    rng = np.random.default_rng(0)
    factors = np.exp(rng.normal(0, 0.2, 200))  # the measured/predicted of each network
    groups = np.repeat(np.arange(200), 5)
    predicted = rng.uniform(1e-4, 1e-3, 1000)
    measured = predicted * factors[groups]
    got = step_interval(measured, predicted, groups)
    assert got["step_networks"] == 200
    assert got["step_interval"] == pytest.approx(list(np.quantile(factors, [0.05, 0.95])), rel=1e-9)
    # errors that cancel within each network (+x on one op, -x on a same-sized one) do not widen it
    noise = np.tile([1.3, 0.7, 1.0, 1.0, 1.0], 200)
    same = step_interval(np.repeat(np.full(200, 1e-3), 5) * noise, np.full(1000, 1e-3), groups)
    assert same["step_interval"] == pytest.approx([1.0, 1.0]) and same["step_cv_error"] == pytest.approx(0.0)


def test_an_op_interval_stays_within_the_profiles_bounds():
    """Measured/predicted of 1128 (a model predicting almost nothing for an op timed under load)
    made a profile that did not validate: the interval is held at the schema's bound."""
    import numpy as np

    from calib.fit import _bounded_interval
    from costmodel.machine.machine_facts import MAX_INTERVAL

    low, high = _bounded_interval(np.array([0.9, 1.0, 1.1, 1128.0, 5000.0]))
    assert 0 < low <= high == MAX_INTERVAL
    assert _bounded_interval(np.array([1e-6, 1e-7])) == (1 / MAX_INTERVAL, 1 / MAX_INTERVAL)


# -- a matrix product's FLOPs at the peak (flops_at_peak) --------------------------------------------

from calib.fit import flops_at_peak  # noqa: E402


def test_a_pinned_flop_term_is_the_peak_and_the_rest_is_fitted_to_the_time_left():
    # a product at a 200 GFLOP/s peak that loses 12 us per call and 1/40 ns per byte to it
    coef = (12e-6, 1 / 200e9, 1 / 40e9, 0.0, 0.0)
    X, t, groups = levels(coef=coef)
    ceiling = Ceiling(200e9, {"L2": 1e12, "L3": 1e12, "memory": 1e12})
    result = fit_op(X, t, groups, ceiling=ceiling, pin_flops=True)
    assert result.model == "roofline-linear"
    assert dict(zip(FEATURES, result.coef))["flops"] == 1 / 200e9
    np.testing.assert_allclose(result.coef, coef, rtol=1e-6, atol=1e-18)


def test_without_a_peak_a_pinned_fit_is_the_bounded_fit():
    X, t, groups = levels(noise=0.05, seed=4)
    bytes_only = Ceiling(None, {"L2": 1e12})
    np.testing.assert_allclose(fit_op(X, t, groups, ceiling=bytes_only, pin_flops=True).coef,
                               fit_op(X, t, groups, ceiling=bytes_only).coef)


@pytest.mark.parametrize("key, backend, pinned", [
    ("conv_matmul", "numpy", True), ("full_grad_W", "numpy", True), ("conv_grad_input:serial", "numpy", True),
    ("conv_matmul:grouped", "numpy", True), ("phi", "numpy", False), ("update", "numpy", False),
    ("pad+phi+conv_matmul+bias", "torch", True), ("conv_grad_W+bias_grad+conv_grad_input+phi_grad", "torch", True),
    ("full_matmul+bias", "torch", False), ("activation", "torch", False), ("other:forward", "torch", False),
])
def test_the_flop_term_is_pinned_for_products_at_a_known_peak(key, backend, pinned):
    assert flops_at_peak(key, backend) is pinned


def test_the_step_interval_by_size_splits_the_networks_at_the_median_predicted_step():
    """Small networks that miss by more than large ones: each half of the networks, split at
    their median predicted step, gets its own interval; too few networks for two halves of
    MIN_SIZE_CLASS_NETWORKS: none."""
    from calib.fit import MIN_SIZE_CLASS_NETWORKS, step_interval

    rng = np.random.default_rng(1)
    n = 200
    step = np.exp(rng.uniform(np.log(1e-4), np.log(1e-1), n))  # the predicted step of each network
    spread = np.where(step < np.median(step), 0.3, 0.05)
    factors = np.exp(rng.normal(0, spread))
    got = step_interval(step * factors, step, np.arange(n))
    small, large = got["step_intervals_by_size"]
    assert small["below_seconds"] == pytest.approx(np.median(step)) and large["below_seconds"] is None
    assert small["networks"] + large["networks"] == n
    below = step < small["below_seconds"]
    assert small["interval"] == pytest.approx(list(np.quantile(factors[below], [0.05, 0.95])))
    assert large["interval"] == pytest.approx(list(np.quantile(factors[~below], [0.05, 0.95])))
    assert large["interval"][1] - large["interval"][0] < small["interval"][1] - small["interval"][0]
    few = 2 * MIN_SIZE_CLASS_NETWORKS - 1
    assert step_interval(step[:few], step[:few], np.arange(few))["step_intervals_by_size"] == []
