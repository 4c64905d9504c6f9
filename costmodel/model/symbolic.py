"""The costs of the ops as SymPy expressions in the course's notation (`costs --symbolic`,
the LaTeX tables, explain's ratios): the records' cost functions evaluated on simpleNN's
symbols (costmodel.model.symbols.SIZES). SymPy is imported here only, on first use.
"""

from __future__ import annotations

from functools import lru_cache

from costmodel.model.arch import Architecture
from costmodel.model.costs import OpCost, OpSpec
from costmodel.model.ops import OpRecord, op_list
from costmodel.model.step import op_spec

QUANTITIES = ("flops", "bytes_read", "bytes_written", "bytes", "memory_kept")


@lru_cache(maxsize=None)
def symbolic_cost(rec: OpRecord, spec: OpSpec) -> OpCost:
    """The op's cost with SymPy shapes in the course's symbols (pure, so cached)."""
    from costmodel.model.symbols import SIZES

    return rec.cost(SIZES, spec)


def expression(rec: OpRecord, spec: OpSpec, quantity: str):
    """One quantity ("flops", "bytes", ...) of the op as a SymPy expression."""
    import sympy as sp

    return sp.sympify(getattr(symbolic_cost(rec, spec), quantity))


@lru_cache(maxsize=None)
def _printed(rec: OpRecord, spec: OpSpec) -> dict:
    from costmodel.model.symbols import leading_term, order_latex, order_text, to_latex, to_text

    out = {}
    used = set()
    for name in QUANTITIES:
        expr = expression(rec, spec, name)
        used |= {str(symbol) for symbol in expr.free_symbols}
        lead = leading_term(expr)
        out[name] = {"text": to_text(expr), "latex": to_latex(expr),
                     "leading_text": to_text(lead), "leading_latex": to_latex(lead),
                     "order_text": order_text(expr), "order_latex": order_latex(expr)}
    out["symbols"] = sorted(used)
    return out


def symbolic_report(arch: Architecture, impl: str = "index") -> dict:
    """Per op of the step, its notation in LaTeX, its exact FLOP, byte and memory expressions in
    the course's notation, their leading terms and orders, as plain text and as LaTeX, and the
    symbols they use ("symbols"); at the top, every symbol's LaTeX name ("symbols")."""
    from costmodel.model.costs import check_impl
    from costmodel.model.symbols import LATEX_NAMES
    from costmodel.model.step import conventions

    check_impl(impl)
    ops = []
    for ref in op_list(arch):
        spec = op_spec(arch, ref, impl)
        ops.append({"layer": ref.layer, "layer_type": ref.layer_type, "op": ref.op, "phase": ref.phase,
                    "notation_latex": ref.record.latex_for(arch.loss, spec), **_printed(ref.record, spec)})
    return {"arch": arch.name, "dtype": arch.dtype, "impl": impl, **conventions(),
            "symbols": dict(LATEX_NAMES), "ops": ops}


def symbolic_op(layer_kind: str, op: str, impl: str = "index", loss: str = "mse", activation: str = "relu",
                last: bool = False, **context) -> OpCost:
    """The symbolic cost of op `op` of a `layer_kind` layer in this context, e.g.
    ``symbolic_op("conv", "conv_matmul").flops`` is 2 I h^m h^m d^m d^{m+1} a^m_conv b^m_conv;
    `context` sets the other fields of OpSpec (grouped=True, pool_type="avg", batch_norm=True,
    ...). A full layer's output is read by the next layer (not last) or by mse's gradient
    unless `output_read` says otherwise. UnknownOpError for an op without a record, UsageError
    for an unknown impl."""
    from costmodel.model.costs import check_impl
    from costmodel.model.ops import record

    check_impl(impl)
    context.setdefault("output_read", layer_kind == "full" and (not last or loss == "mse"))
    return symbolic_cost(record(layer_kind, op), OpSpec(layer_kind, impl, loss, activation, last, **context))
