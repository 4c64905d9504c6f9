"""The products of a step sum over the inner dimensions the NumPy backend says
(costmodel.machine.backends.numpy.inner_dimension); those of inner dimension 1 share one model,
OUTER_PRODUCT, which a profile made before it prices by each op's own model, and a profile made
after it must have."""

import collections
import json
import sys

import numpy as np
import pytest

from calib.measure import measure
from costmodel.errors import UsageError
from costmodel.machine.backends import backend
from costmodel.machine.backends.numpy import OUTER_PRODUCT, inner_dimension
from costmodel.machine.predict import predict
from costmodel.machine.profile import Profile
from costmodel.machine.timemodel import Machine
from costmodel.model.arch import parse_arch
from costmodel.model.step import step_costs

from tests.test_explain import synthetic_profile

#: a 1x1 convolution of a one-channel input (conv_matmul K = 1), a depthwise one (its input
#: gradient: K = d'/g = 1), one with a channel multiplier of 2 (K = 2), a full layer of one unit
#: (its full_grad_input and the next layer's full_matmul: K = 1), at batch 1 too (full_grad_W: K = I = 1)
LAYERS = [{"type": "conv", "filters": 4, "kernel": 1},
          {"type": "conv", "filters": 4, "kernel": 3, "padding": 1, "groups": 4},
          {"type": "conv", "filters": 8, "kernel": 3, "padding": 1, "groups": 4, "pool": 2},
          {"type": "full", "units": 1},
          {"type": "full", "units": 10}]


def network(batch: int):
    return parse_arch({"name": "outer", "batch": batch, "input": {"height": 6, "width": 5, "channels": 1},
                       "layers": LAYERS})


@pytest.mark.parametrize("impl", ["index", "strided"])
@pytest.mark.parametrize("batch", [1, 3])
def test_inner_dimensions_are_those_of_the_executed_products(impl, batch, monkeypatch):
    """Every np.matmul a step of the reference CNN calls (one per product; a stack of g for a
    grouped one) sums over the inner dimension the backend names for its product, as a
    multiset over the step; no product is left out or counted twice."""
    arch = network(batch)
    called = collections.Counter()
    real = np.matmul

    def recorded(a, b, *args, **kw):
        caller = sys._getframe(1).f_globals["__name__"]  # the step's, not calib.noise's probe products
        if caller.startswith("calib.layers") or caller in ("calib.kernels", "calib.workers"):
            called[np.shape(a)[-1]] += 1
        return real(a, b, *args, **kw)

    expected = collections.Counter(k for ref in step_costs(arch, impl).ops
                                   if (k := inner_dimension(ref.op, ref.sizes, batch)) is not None)
    monkeypatch.setattr(np, "matmul", recorded)
    measure(arch, steps=1, warmup=0, threads=1, impl=impl)
    assert called == expected
    # conv_matmul@1, conv_grad_input@2, full_grad_input@4, full_matmul@5; at I = 1 full_grad_W@4 and @5
    assert expected[1] == (6 if batch == 1 else 4)


def keys_of(batch: int, impl: str = "index", threads: int = 1) -> dict:
    return {(r.layer, r.ops[0]): r for r in backend("numpy").rows(network(batch), impl, threads, Machine())}


def test_outer_products_share_one_model_per_regime_and_keep_their_own_for_old_profiles():
    rows = keys_of(1)
    outer = {k for k, r in rows.items() if str(r.model) == OUTER_PRODUCT}
    assert outer == {(1, "conv_matmul"), (2, "conv_grad_input"), (4, "full_grad_input"), (5, "full_matmul"),
                     (4, "full_grad_W"), (5, "full_grad_W")}
    assert str(rows[(2, "conv_grad_input")].legacy_model) == "conv_grad_input:grouped"
    assert str(rows[(3, "conv_grad_input")].model) == "conv_grad_input:grouped"  # d'/g = 2: BLAS
    assert rows[(3, "conv_grad_input")].legacy_model is None
    assert {str(r.model) for r in keys_of(3, "strided", 2).values() if r.ops[0] == "conv_matmul" and r.layer == 1} \
        == {OUTER_PRODUCT + ":serial"}  # a small product of a threaded step: one thread


def _without_outer(profile: Profile) -> Profile:
    data = json.loads(profile.model_dump_json())
    for e in data["entries"]:
        e["ops"] = {k: m for k, m in e["ops"].items() if not k.startswith(OUTER_PRODUCT)}
    return Profile.model_validate(data)


def test_a_profile_before_the_outer_model_prices_by_the_ops_own_and_one_after_must_have_it():
    """An old profile (no outer_product model at all) prices an outer product by its op's own
    model, as it did; a profile with outer_product models that lacks this row's regime refuses
    (exit 2) rather than price NumPy's loop as BLAS."""
    arch = network(3)
    new = synthetic_profile(impls=("index",), rates={"matrix product": (5e-6, 1 / 100e9, 0.0)})
    old = _without_outer(new)
    row = next(r for r in predict(arch, old, threads=2).rows if (r.layer, r.name) == (2, "conv_grad_input"))
    assert row.seconds > 0 and row.row.model.ops == (OUTER_PRODUCT,)  # priced by conv_grad_input:grouped
    data = json.loads(new.model_dump_json())
    entry = data["entries"][0]
    entry["ops"] = {k: m for k, m in entry["ops"].items() if k != OUTER_PRODUCT}
    entry["ops"][OUTER_PRODUCT + ":threaded"] = entry["ops"]["conv_matmul"]  # another regime only
    with pytest.raises(UsageError, match=f"no model for op '{OUTER_PRODUCT}'"):
        predict(arch, Profile.model_validate(data), threads=2)
