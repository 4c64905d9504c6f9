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
