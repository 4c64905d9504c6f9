"""The symbolic cost registry: the slides' statements, the registry's rules, the notation, and
the FLOPs of the matrix products against torch.utils.flop_counter."""

import subprocess
import sys

import pytest
import sympy as sp

from costmodel.model import symbols as sym
from costmodel.model.arch import load_arch
from costmodel.errors import UsageError
from costmodel.model.costs import IMPLS, UnknownOpError, bias
from costmodel.model.ops import MATMUL, RECORDS, contract, needs_flatten, op, op_names, record
from costmodel.model.step import layer_values, op_spec, step_costs
from costmodel.model.symbolic import symbolic_cost, symbolic_op
from costmodel.model.symbols import SIZES, I, a_conv, b_conv, big_o, d, d_next, h, leading_term, to_base

from tests.conftest import EXAMPLES, ROOT

# -- the slides' statements ------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
def test_phi_moves_order_I_hhd_aconv_bconv_elements(impl):
    cost = symbolic_op("conv", "phi", impl)
    (phi,) = cost.writes
    assert sp.expand(phi.size - I * h * h * d * a_conv * b_conv) == 0
    assert big_o(cost.bytes) == I * h**2 * d * a_conv * b_conv
    assert big_o(cost.flops) == 0  # pure data movement


def test_W_phi_flops_are_2_I_hhd_dnext_aconv_bconv():
    assert symbolic_op("conv", "conv_matmul").flops == 2 * I * h * h * d * d_next * a_conv * b_conv


@pytest.mark.parametrize("impl", IMPLS)
def test_matmul_flops_are_a_multiple_d_next_of_the_elements_of_phi(impl):
    phi_elements = symbolic_op("conv", "phi", impl).writes[0].size
    for name in ("conv_matmul", "conv_grad_W", "conv_grad_input"):
        assert sp.simplify(symbolic_op("conv", name, impl).flops / phi_elements) == 2 * d_next


def test_backward_products_reuse_the_forward_shapes_transposed():
    fwd = symbolic_op("conv", "conv_matmul")
    W, phi = (x.shape for x in fwd.reads)
    (S,) = (x.shape for x in fwd.writes)
    grad_W, grad_input = symbolic_op("conv", "conv_grad_W"), symbolic_op("conv", "conv_grad_input")
    assert [x.shape for x in grad_W.reads] == [S, phi]
    assert [(x.shape, x.kind) for x in grad_W.writes] == [(W, "float")]
    assert [(x.shape, x.kind) for x in grad_input.writes] == [(phi, "float")]
    assert record("conv", "conv_grad_W").twin == record("conv", "conv_grad_input").twin == "conv_matmul"


# -- the records -----------------------------------------------------------------------------

def test_every_record_names_an_op_kind_notation_and_a_cost_function():
    assert {"pad", "phi", "conv_matmul", "phi_grad", "flatten", "loss", "update"} <= op_names()
    for (kind, name), rec in RECORDS.items():
        assert (rec.layer_kind, rec.name) == (kind, name)
        assert callable(rec.cost) and rec.text and rec.mathtext and rec.latex_for("mse")
        if rec.twin is not None:
            assert rec.phase == "backward" and (kind, rec.twin) in RECORDS


def test_the_contract_lists_each_layer_kinds_ops_in_step_order():
    order = contract()
    assert order[("forward", "conv")] == ("pad", "phi", "conv_matmul", "bias", "activation", "pool")
    assert order[("backward", "conv")] == ("pool_grad", "activation_grad", "conv_grad_W", "bias_grad",
                                           "conv_grad_input", "phi_grad", "pad_grad")
    assert order[("forward", "full")] == ("flatten", "full_matmul", "bias", "activation")
    assert order[("update", "full")] == ("update",)


def test_a_second_registration_of_an_op_raises():
    with pytest.raises(ValueError, match="registered twice"):
        op("conv", "phi", "forward", MATMUL, text="x", mathtext="x", latex="x")(bias)
    assert record("conv", "phi").cost.__name__ == "phi"


def test_a_record_with_an_unknown_phase_or_kind_raises():
    with pytest.raises(ValueError, match="unknown"):
        op("conv", "im2col", "sideways", MATMUL, text="x", mathtext="x", latex="x")
    with pytest.raises(ValueError, match="unknown"):
        op("conv", "im2col", "forward", "magic", text="x", mathtext="x", latex="x")


def test_an_unknown_op_raises_a_key_error_naming_it():
    with pytest.raises(KeyError) as err:
        record("conv", "im2col")
    assert isinstance(err.value, UnknownOpError)
    assert "no op 'im2col' for conv layers" in str(err.value)
    with pytest.raises(UnknownOpError):
        symbolic_op("full", "phi")


def test_an_unknown_impl_raises():
    with pytest.raises(UsageError, match="impl"):
        symbolic_op("conv", "phi", "fast")
    with pytest.raises(UsageError, match="impl"):
        step_costs(load_arch(EXAMPLES[0]), "fast")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("impl", IMPLS)
def test_every_op_moves_bytes_and_only_data_movement_has_no_flops(path, impl):
    data_movement = {"pad", "phi", "pool_grad", "flatten", "flatten_grad", "pad_grad"}
    costs = step_costs(load_arch(path), impl)
    for i, ref in enumerate(costs.ops):
        assert costs.bytes_read[i] > 0 and costs.bytes_written[i] > 0, ref.key
        assert (costs.flops[i] == 0) == (ref.op in data_movement), ref.key


def test_memory_kept_is_assigned_to_the_forward_op_that_creates_it():
    for name, layer_type in [("phi", "conv"), ("conv_matmul", "conv"), ("pool", "conv"),
                             ("flatten", "full"), ("full_matmul", "full")]:
        assert symbolic_op(layer_type, name).memory_kept != 0, name
    assert symbolic_op("loss", "loss", loss="softmax_ce").memory_kept != 0
    assert symbolic_op("loss", "loss", loss="mse").memory_kept == 0
    # the output layer's S is the input of mse's gradient, not of softmax_ce's (which reads P)
    out = dict(activation="none", last=True)
    assert symbolic_op("full", "full_matmul", loss="mse", **out).memory_kept != 0
    assert symbolic_op("full", "full_matmul", loss="softmax_ce", **out).memory_kept == 0
    assert symbolic_op("conv", "conv_matmul", activation="none").memory_kept == 0


# -- symbols and notation --------------------------------------------------------------------

def test_symbols_print_in_latex_as_the_slides():
    assert sp.latex(sym.a_conv) == r"a^{m}_{\mathrm{conv}}"
    assert sp.latex(sym.d_next) == "d^{m+1}"
    assert sp.latex(sym.h) == "h^{m}"
    assert sp.latex(sym.I) == "I"
    assert sym.to_latex(symbolic_op("conv", "conv_matmul").flops) == (
        r"2 I h^{m} h^{m} d^{m} d^{m+1} a^{m}_{\mathrm{conv}} b^{m}_{\mathrm{conv}}")


def test_sizes_are_positive_integers_and_padding_may_be_zero():
    for s in (sym.I, sym.a, sym.h, sym.d_next, sym.a_conv, sym.w):
        assert s.is_integer and s.is_positive
    assert sym.p.is_integer and sym.p.is_nonnegative and sym.p.is_positive is None


def test_leading_term_and_big_o_of_conv_matmul():
    cost = symbolic_op("conv", "conv_matmul")
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
@pytest.mark.parametrize("impl", IMPLS)
def test_symbolic_and_numeric_costs_agree_and_derived_symbols_match_their_definitions(path, impl):
    """The same cost function on symbols and on integers: every expression evaluated with the
    layer's values (through the derived symbols bound from LayerSizes, and through their
    definitions in the base symbols) equals step_costs' number."""
    arch = load_arch(path)
    costs = step_costs(arch, impl)
    for i, ref in enumerate(costs.ops):
        values = {getattr(SIZES, k): v for k, v in layer_values(arch, ref.sizes).items()}
        cost = symbolic_cost(ref.record, op_spec(arch, ref, impl))
        for q, number in (("flops", costs.flops[i]), ("bytes", costs.bytes[i]), ("memory_kept", costs.memory_kept[i])):
            expr = sp.sympify(getattr(cost, q))
            assert expr.xreplace(values) == to_base(expr).xreplace(values) == number, (ref.key, q)


def test_importing_costmodel_and_the_step_costs_imports_neither_sympy_nor_pandas():
    code = ("import sys, costmodel, costmodel.model.step, costmodel.machine.predict; "
            "costmodel.model.step.step_costs(costmodel.load_arch('examples/mnist-demo-layer4.yaml')); "
            "print(sorted(m for m in ('sympy', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
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
    costs = step_costs(arch, "index", batch=batch)
    ours = sum(int(costs.flops[i]) for i, ref in enumerate(costs.ops) if ref.kind == MATMUL)
    assert ours == _torch_step_flops(arch, batch)
