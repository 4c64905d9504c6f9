"""The symbolic cost registry: the slides' statements, the registry's rules, the notation, and
the FLOPs of the matrix products against torch.utils.flop_counter."""

import subprocess
import sys

import pytest
import sympy as sp

from costmodel.model import symbols as sym
from costmodel.model.arch import load_arch
from costmodel.model.costs import (IMPLS, REGISTRY, OpSpec, UnknownOpError, cost_function, op_arrays,
                             op_cost, register)
from costmodel.errors import UsageError
from costmodel.model.evaluate import costs
from costmodel.model.ops import MATMUL_OPS, OP_NAMES, needs_flatten
from costmodel.model.shapes import bound_ops
from costmodel.model.symbols import I, a_conv, b_conv, big_o, d, d_next, h, leading_term, to_base

from tests.conftest import EXAMPLES

# -- the slides' statements ------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
def test_phi_moves_order_I_hhd_aconv_bconv_elements(impl):
    cost = op_cost(OpSpec("phi", "conv", impl))
    (phi,) = cost.writes
    assert sp.expand(phi.size - I * h * h * d * a_conv * b_conv) == 0
    assert big_o(cost.bytes) == I * h**2 * d * a_conv * b_conv
    assert big_o(cost.flops) == 0  # pure data movement


def test_W_phi_flops_are_2_I_hhd_dnext_aconv_bconv():
    assert op_cost(OpSpec("conv_matmul", "conv")).flops == 2 * I * h * h * d * d_next * a_conv * b_conv


@pytest.mark.parametrize("impl", IMPLS)
def test_matmul_flops_are_a_multiple_d_next_of_the_elements_of_phi(impl):
    phi_elements = op_cost(OpSpec("phi", "conv", impl)).writes[0].size
    for op in ("conv_matmul", "conv_grad_W", "conv_grad_input"):
        assert sp.simplify(op_cost(OpSpec(op, "conv", impl)).flops / phi_elements) == 2 * d_next


def test_backward_products_reuse_the_forward_shapes_transposed():
    fwd = op_arrays(OpSpec("conv_matmul", "conv"))
    W, phi = (shape for shape, _ in fwd["reads"])
    (S, _), = fwd["writes"]
    assert [s for s, _ in op_arrays(OpSpec("conv_grad_W", "conv"))["reads"]] == [S, phi]
    assert op_arrays(OpSpec("conv_grad_W", "conv"))["writes"] == [(W, "float")]
    assert op_arrays(OpSpec("conv_grad_input", "conv"))["writes"] == [(phi, "float")]


# -- the registry ----------------------------------------------------------------------------

def test_every_op_of_the_contract_has_a_cost_function():
    assert set(REGISTRY) == OP_NAMES


def test_a_second_registration_of_a_name_raises():
    with pytest.raises(ValueError, match="already has a cost function"):
        register("phi")(lambda spec: None)
    assert REGISTRY["phi"].__name__ == "phi"


def test_registering_a_name_outside_the_contract_raises():
    with pytest.raises(ValueError, match="not an op of the contract"):
        register("im2col")


def test_an_unknown_op_raises_a_key_error_naming_it():
    with pytest.raises(KeyError) as err:
        cost_function("im2col")
    assert isinstance(err.value, UnknownOpError)
    assert "no cost function for op 'im2col'" in str(err.value)
    with pytest.raises(UnknownOpError):
        op_cost(OpSpec("im2col", "conv"))


def test_an_unknown_impl_raises():
    with pytest.raises(UsageError, match="impl"):
        op_cost(OpSpec("phi", "conv", "fast"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("impl", IMPLS)
def test_every_op_moves_bytes_and_only_data_movement_has_no_flops(path, impl):
    data_movement = {"pad", "phi", "pool_grad", "flatten", "flatten_grad", "pad_grad"}
    for op in bound_ops(load_arch(path), impl):
        cost = op_cost(op.spec)
        assert cost.bytes_read != 0 and cost.bytes_written != 0
        assert (cost.flops == 0) == (op.ref.op in data_movement), op.ref.key


def test_memory_kept_is_assigned_to_the_forward_op_that_creates_it():
    for op, layer_type in [("phi", "conv"), ("conv_matmul", "conv"), ("pool", "conv"),
                           ("flatten", "full"), ("full_matmul", "full")]:
        assert op_cost(OpSpec(op, layer_type)).memory_kept != 0, op
    assert op_cost(OpSpec("loss", "loss", loss="softmax_ce")).memory_kept != 0
    assert op_cost(OpSpec("loss", "loss", loss="mse")).memory_kept == 0
    # the output layer's S is the input of mse's gradient, not of softmax_ce's (which reads P)
    out = dict(layer_type="full", activation="none", last=True)
    assert op_cost(OpSpec("full_matmul", loss="mse", **out)).memory_kept != 0
    assert op_cost(OpSpec("full_matmul", loss="softmax_ce", **out)).memory_kept == 0
    assert op_cost(OpSpec("conv_matmul", "conv", activation="none")).memory_kept == 0


# -- symbols and notation --------------------------------------------------------------------

def test_symbols_print_in_latex_as_the_slides():
    assert sp.latex(sym.a_conv) == r"a^{m}_{\mathrm{conv}}"
    assert sp.latex(sym.d_next) == "d^{m+1}"
    assert sp.latex(sym.h) == "h^{m}"
    assert sp.latex(sym.I) == "I"
    assert sym.to_latex(op_cost(OpSpec("conv_matmul", "conv")).flops) == (
        r"2 I h^{m} h^{m} d^{m} d^{m+1} a^{m}_{\mathrm{conv}} b^{m}_{\mathrm{conv}}")


def test_sizes_are_positive_integers_and_padding_may_be_zero():
    for s in (sym.I, sym.a, sym.h, sym.d_next, sym.a_conv, sym.w):
        assert s.is_integer and s.is_positive
    assert sym.p.is_integer and sym.p.is_nonnegative and sym.p.is_positive is None


def test_leading_term_and_big_o_of_conv_matmul():
    cost = op_cost(OpSpec("conv_matmul", "conv"))
    assert leading_term(cost.flops) == cost.flops
    assert leading_term(cost.bytes) == sym.w * I * h**2 * d * a_conv * b_conv
    assert sym.order_text(cost.bytes) == "O(I h^m h^m d^m a^m_conv b^m_conv)"
    assert sym.order_latex(cost.bytes) == (
        r"\mathcal{O}(I h^{m} h^{m} d^{m} a^{m}_{\mathrm{conv}} b^{m}_{\mathrm{conv}})")


def test_leading_term_keeps_every_monomial_of_the_top_degree():
    x = 3 * sym.w * I * sym.n + sym.w * I * sym.n_next + 5 * sym.n_next
    assert leading_term(x) == 3 * sym.w * I * sym.n + sym.w * I * sym.n_next
    assert big_o(x) == I * sym.n + I * sym.n_next
    assert sym.to_text(x) == "w_dtype (3 I n^m + I n^{m+1}) + 5 n^{m+1}"


def test_leading_term_refuses_what_is_not_a_polynomial_in_the_sizes():
    with pytest.raises(ValueError, match="not a monomial"):
        leading_term(to_base(sym.a_conv))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_derived_symbols_agree_with_their_definitions_and_arch_sizes(path):
    """Every cost evaluated through the derived symbols (bound from LayerSizes) equals the
    same cost with the derived symbols replaced by their definitions in the base symbols."""
    for op in bound_ops(load_arch(path), "index"):
        cost = op_cost(op.spec)
        for expr in (cost.flops, cost.bytes, cost.memory_kept):
            assert expr.xreplace(op.values) == to_base(expr).xreplace(op.values), op.ref.key


def test_importing_costmodel_and_evaluate_imports_neither_sympy_nor_pandas():
    code = ("import sys, costmodel, costmodel.model.evaluate; "
            "print(sorted(m for m in ('sympy', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- FLOPs of the matrix products == torch.utils.flop_counter --------------------------------

def _torch_step_flops(arch, batch: int) -> int:
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    nn = torch.nn
    modules = []
    for sz in arch.sizes():
        if sz.kind == "conv":
            modules.append(nn.Conv2d(sz.d, sz.d_next, sz.h, stride=sz.s, padding=sz.p, bias=False))
        else:
            if needs_flatten(arch, sz.m):
                modules.append(nn.Flatten())
            modules.append(nn.Linear(sz.n_in, sz.n_out, bias=False))
        if arch.activation_of(sz.m) == "relu":
            modules.append(nn.ReLU())
        if sz.kind == "conv" and sz.pool > 1:
            modules.append(nn.MaxPool2d(sz.pool))
    dtype = {"float32": torch.float32, "float64": torch.float64}[arch.dtype]
    net = nn.Sequential(*modules).to(dtype)
    first = arch.sizes()[0]
    shape = (batch, first.d, first.a, first.b) if first.kind == "conv" else (batch, first.n_in)
    X = torch.randn(shape, dtype=dtype, requires_grad=False)  # no input gradient for layer 1
    with FlopCounterMode(display=False) as counter:
        net(X).square().sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_matmul_flops_of_a_step_equal_torch_flop_counter(path):
    arch, batch = load_arch(path), 3
    frame = costs(arch, "index", batch=batch)
    ours = int(frame.loc[frame.op.isin(MATMUL_OPS), "flops"].sum())
    assert ours == _torch_step_flops(arch, batch)
