"""The products of a step sum over the inner dimensions the NumPy backend says
(costmodel.machine.backends.numpy.inner_dimension), and those of inner dimension 1 get the
"outer" variant, whose model a profile made before it prices by the product's own model."""

import collections
import sys

import numpy as np
import pytest

from calib.measure import measure
from costmodel.machine.backends import backend
from costmodel.machine.backends.base import ModelKey
from costmodel.machine.backends.numpy import PRODUCTS, inner_dimension
from costmodel.machine.timemodel import Machine
from costmodel.model.arch import parse_arch
from costmodel.model.step import step_costs

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

    costs = step_costs(arch, impl)
    expected = collections.Counter(inner_dimension(ref.op, ref.sizes, batch) for ref in costs.ops
                                   if ref.op in PRODUCTS)
    monkeypatch.setattr(np, "matmul", recorded)
    measure(arch, steps=1, warmup=0, threads=1, impl=impl)
    assert called == expected
    # conv_matmul@1, conv_grad_input@2, full_grad_input@4, full_matmul@5; at I = 1 full_grad_W@4 and @5
    assert expected[1] == (6 if batch == 1 else 4)


def test_outer_products_get_their_variant_and_old_profiles_their_products_model():
    be = backend("numpy")
    keys = {(r.layer, r.ops[0]): str(r.model) for r in be.rows(network(1), "index", 1, Machine())}
    assert keys[(1, "conv_matmul")] == "conv_matmul:outer"
    assert keys[(2, "conv_grad_input")] == "conv_grad_input:grouped+outer"
    assert keys[(3, "conv_grad_input")] == "conv_grad_input:grouped"  # d'/g = 2
    assert keys[(4, "full_grad_W")] == "full_grad_W:outer" and keys[(5, "full_grad_input")] == "full_grad_input"
    assert be.legacy_key(ModelKey(("conv_grad_input",), ("grouped", "outer", "threaded"))) == \
        ModelKey(("conv_grad_input",), ("grouped", "threaded"))
    assert be.legacy_key(ModelKey(("conv_grad_input",), ("grouped",))) is None
