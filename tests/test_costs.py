"""The symbolic cost registry: the slides' statements, the registry's rules, the notation, and
the FLOPs of the matrix products against torch.utils.flop_counter."""

import csv
import io
import itertools
import subprocess
import sys

import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings

from costmodel.model import symbols as sym
from costmodel.model.arch import load_arch
from costmodel.errors import UsageError
from costmodel.model.costs import IMPLS, OpSpec, UnknownOpError, bias
from costmodel.model.ops import MATMUL, RECORDS, contract, op, op_names, record
from costmodel.model.step import layer_values, op_spec, step_costs
from costmodel.model.symbolic import symbolic_cost, symbolic_op, symbolic_report
from costmodel.model.symbols import SIZES, I, a_conv, b_conv, big_o, d, d_next, h, leading_term, to_base

from tests.conftest import EXAMPLES, ROOT
from tests.test_cnn_vocab import VOCAB_ARCHS, vocab_architectures, vocab_arch

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
    """docs/ops.md's table (the extended vocabulary's ops in brackets there)."""
    order = contract()
    assert order[("forward", "conv")] == ("pad", "phi", "conv_matmul", "bias", "batch_norm", "activation", "pool",
                                          "dropout")
    assert order[("backward", "conv")] == ("residual_add_grad", "dropout_grad", "pool_grad", "activation_grad",
                                           "batch_norm_grad", "conv_grad_W", "bias_grad", "conv_grad_input",
                                           "phi_grad", "pad_grad")
    assert order[("forward", "full")] == ("flatten", "full_matmul", "bias", "batch_norm", "activation", "dropout")
    assert order[("backward", "full")] == ("dropout_grad", "activation_grad", "batch_norm_grad", "full_grad_W",
                                           "bias_grad", "full_grad_input", "flatten_grad")
    assert order[("forward", "global_avg_pool")] == ("global_avg_pool",)
    assert order[("backward", "global_avg_pool")] == ("residual_add_grad", "global_avg_pool_grad")
    assert order[("forward", "residual_add")] == ("residual_add", "activation")
    assert order[("backward", "residual_add")] == ("residual_add_grad", "activation_grad")
    assert order[("update", "full")] == order[("update", "conv")] == ("update",)


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
    """Pure data movement: pad, phi, flatten and their gradients, and the gradient of max
    pooling over windows that do not overlap (a scatter); the gradient of overlapping max
    pooling adds the gradients of windows that share a maximum, average pooling divides."""
    data_movement = {"pad", "phi", "pool_grad", "flatten", "flatten_grad", "pad_grad"}
    costs = step_costs(load_arch(path), impl)
    for i, (ref, spec) in enumerate(zip(costs.ops, costs.specs)):
        assert costs.bytes_read[i] > 0 and costs.bytes_written[i] > 0, ref.key
        moves = ref.op in data_movement and not (ref.op == "pool_grad" and (spec.pool_type == "avg"
                                                                             or spec.pool_overlap))
        assert (costs.flops[i] == 0) == moves, ref.key


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


def test_the_order_of_nothing_is_zero_not_big_o_of_zero():
    """An op without FLOPs (pad, phi, flatten) shows 0 as its order, as its exact count does."""
    flops = symbolic_op("conv", "pad").flops
    assert sym.to_text(flops) == "0"
    assert sym.order_text(flops) == "0" and sym.order_latex(flops) == "0"
    assert sym.order_text(symbolic_op("conv", "phi").bytes).startswith("O(")


def test_costs_symbolic_shows_no_order_of_zero():
    from typer.testing import CliRunner

    from cli import app

    arch = str(ROOT / "examples" / "mnist-demo-layer4.yaml")
    table = CliRunner().invoke(app, ["costs", arch, "--symbolic"], env={"COLUMNS": "250"})
    assert table.exit_code == 0 and "pad" in table.stdout and "O(0)" not in table.stdout
    rows = list(csv.DictReader(io.StringIO(CliRunner().invoke(app, ["costs", arch, "--symbolic", "--format",
                                                                    "csv"]).stdout)))
    free = [r for r in rows if r["flops"] == "0"]
    assert {r["op"] for r in free} >= {"pad", "phi", "flatten"}
    assert all(r["flops_order"] == "0" for r in free)
    assert all(r["flops_order"].startswith("O(") for r in rows if r["flops"] != "0")


def test_leading_term_keeps_every_monomial_of_the_top_degree():
    x = 3 * sym.w * I * sym.n + sym.w * I * sym.n_next + 5 * sym.n_next
    assert leading_term(x) == 3 * sym.w * I * sym.n + sym.w * I * sym.n_next
    assert big_o(x) == I * sym.n + I * sym.n_next
    assert sym.to_text(x) == "w_dtype (3 I n^m + I n^{m+1}) + 5 n^{m+1}"


def test_leading_term_refuses_what_is_not_a_polynomial_in_the_sizes():
    with pytest.raises(ValueError, match="not a monomial"):
        leading_term(to_base(sym.a_conv))


def _vocab_cases():
    return [(name, vocab_arch(name, loss)) for name in VOCAB_ARCHS for loss in ("mse", "softmax_ce")]


@pytest.mark.parametrize("case", [(p.stem, load_arch(p)) for p in EXAMPLES] + _vocab_cases(), ids=lambda c: c[0])
@pytest.mark.parametrize("impl", IMPLS)
def test_symbolic_and_numeric_costs_agree_and_derived_symbols_match_their_definitions(case, impl):
    """The same cost function on symbols and on integers: every expression evaluated with the
    layer's values (through the derived symbols bound from LayerSizes, and through their
    definitions in the base symbols: the padding per border, groups, the pooled size with its
    stride and ceil mode) equals step_costs' number."""
    arch = case[1]
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

def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape, **kwargs) -> int:
    """torch.utils.flop_counter's formula of aten.convolution_backward with its weight gradient
    divided by the groups: torch 2.13's counts the weight gradient of a grouped convolution g
    times (its transposed shapes lose the group division; fixed upstream in pytorch/pytorch
    pull request #183405)."""
    from torch.utils.flop_counter import conv_flop_count

    def t(shape):
        return [shape[1], shape[0]] + list(shape[2:])

    count = 0
    if output_mask[0]:
        count += conv_flop_count(grad_out_shape, w_shape, list(out_shape[0]), not transposed)
    if output_mask[1]:
        shapes = (t(grad_out_shape), t(x_shape)) if transposed else (t(x_shape), t(grad_out_shape))
        count += conv_flop_count(*shapes, t(list(out_shape[1])), transposed=False) // _groups
    return count


def _torch_step_flops(arch, fixed: bool = True) -> int:
    """FlopCounterMode's count of one forward and backward of the torch backend's network of
    `arch` (calib.backends.torch.torch_net: grouped and padded convolutions, batch norm,
    pooling, dropout, residual additions), without an input gradient for the network's input;
    with `fixed`, grouped weight gradients counted once (_conv_backward_flop)."""
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    from calib.backends.torch import torch_net

    net = torch_net(arch)
    dtype = {"float32": torch.float32, "float64": torch.float64}[arch.dtype]
    first = arch.sizes()[0]
    shape = (arch.batch, first.d, first.a, first.b) if first.kind == "conv" else (arch.batch, first.n_in)
    X = torch.randn(shape, dtype=dtype, requires_grad=False)  # no input gradient for layer 1
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop} if fixed else None
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        net(X).square().sum().backward()
    return counter.get_total_flops()


def test_torch_flop_counter_counts_a_grouped_weight_gradient_g_times():
    """Why _conv_backward_flop: one grouped layer, torch 2.13's count against the fixed one."""
    pytest.importorskip("torch")
    arch = vocab_arch("same-groups-avg-depthwise", batch=3)
    sizes = arch.sizes()
    costs = step_costs(arch)
    grad_W = {ref.layer: int(costs.flops[i]) for i, ref in enumerate(costs.ops) if ref.op == "conv_grad_W"}
    excess = sum((sz.g - 1) * grad_W[sz.m] for sz in sizes if sz.kind == "conv")
    assert excess > 0
    assert _torch_step_flops(arch, fixed=False) - _torch_step_flops(arch) == excess


def _matmul_flops(arch) -> int:
    costs = step_costs(arch, "index")
    return sum(int(costs.flops[i]) for i, ref in enumerate(costs.ops) if ref.kind == MATMUL)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_matmul_flops_of_a_step_equal_torch_flop_counter(path):
    arch = load_arch(path).with_batch(3)
    assert _matmul_flops(arch) == _torch_step_flops(arch)


@pytest.mark.parametrize("name", list(VOCAB_ARCHS))
def test_matmul_flops_of_the_extended_vocabulary_equal_torch_flop_counter(name):
    arch = vocab_arch(name, batch=3)
    assert _matmul_flops(arch) == _torch_step_flops(arch)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=vocab_architectures(dtype="float32"))
def test_matmul_flops_of_random_networks_equal_torch_flop_counter(arch):
    """Grouped and depthwise convolutions, `same` padding, strides, blocks on the network's
    input (no input gradient), projections."""
    assert _matmul_flops(arch) == _torch_step_flops(arch)


# -- the leading orders of every op in every context ---------------------------------------------

def _contexts():
    """Every context of OpSpec that changes a cost function's branch (batch norm, dropout and a
    read output only decide what is kept: three combinations of them)."""
    flags = ((False, False, False), (True, True, False), (True, False, True))
    for kind in ("conv", "full", "global_avg_pool", "residual_add"):
        pools = itertools.product(("max", "avg"), (False, True), (False, True)) if kind == "conv" else [("max", 0, 0)]
        for impl, act, grouped, (pool, overlap, partial), (bn, drop, read) in itertools.product(
                IMPLS, ("relu", "tanh", "sigmoid", "none"), (False, True) if kind == "conv" else (False,),
                list(pools), flags):
            yield OpSpec(kind, impl, "mse", act, False, grouped, pool, bool(overlap), bool(partial), bn, drop, read)


def test_every_op_has_a_polynomial_leading_order_in_every_context():
    """The complexity table (costmodel latex) prints O(.) of every quantity of every op: each
    is a polynomial in the size symbols, derived sizes (d^m/g^m, a^{m+1}, ...) being symbols of
    their own; an op's expressions use only the symbols of its layer kind."""
    conv_only = {sym.h, sym.d_g, sym.a_pad, sym.b_pad, sym.a_conv, sym.b_conv, sym.h_pool}
    seen = set()
    for spec in _contexts():
        for (kind, name), rec in RECORDS.items():
            if kind != spec.layer_type or (name.startswith("activation") and spec.activation == "none"):
                continue  # a linear layer runs no activation
            cost = symbolic_cost(rec, spec)
            for q in ("flops", "bytes", "memory_kept"):
                expr = sp.sympify(getattr(cost, q))
                if (kind, expr) in seen:
                    continue
                seen.add((kind, expr))
                big_o(expr)  # raises for what is not a polynomial
                assert sym.order_latex(expr) and sym.to_latex(expr)
                if kind != "conv":
                    assert not expr.free_symbols & conv_only, (kind, name, q)
            if spec.grouped and name in ("conv_matmul", "conv_grad_W", "conv_grad_input"):
                assert big_o(cost.flops) == I * h**2 * sym.d_g * d_next * a_conv * b_conv


def test_symbolic_report_of_the_extended_vocabulary():
    for name, arch in _vocab_cases():
        report = symbolic_report(arch, "strided")
        assert len(report["ops"]) == len(step_costs(arch, "strided").ops)
        assert all(op["notation_latex"] and op["flops"]["order_latex"] for op in report["ops"])
    arch = vocab_arch("same-groups-avg-depthwise")
    notation = {(op["layer"], op["op"]): op["notation_latex"] for op in symbolic_report(arch)["ops"]}
    assert r"P^{m,i}_{\mathrm{avg},\,s^{m}_{\mathrm{pool}}}" in notation[(1, "pool")]  # the window's stride
    assert r"P^{m,i}_{\mathrm{max},\,s^{m}_{\mathrm{pool}}}" in notation[(2, "pool")]  # overlapping
    course = symbolic_report(load_arch(ROOT / "examples" / "cifar10-demo-layer4.yaml"))["ops"]
    assert {op["notation_latex"] for op in course if op["op"] == "pool"} == {
        r"\mathsf{mat}(P^{m,i}_{\mathrm{pool}} \mathsf{vec}(\sigma(S^{m,i})))"}  # the course's P_pool
    assert r"\mu^{m}" in notation[(3, "batch_norm")]
