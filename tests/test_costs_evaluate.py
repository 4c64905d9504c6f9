"""Evaluation of the costs: StepCosts, the cost tables, many variants, the JSON report, the
symbolic form, and the exact range of the quantities."""

import json

import numpy as np
import pytest
import sympy as sp

from costmodel.api import COSTS_COLUMNS as COLUMNS, costs_frame
from costmodel.errors import ArchError, UsageError
from costmodel.model.arch import Architecture, load_arch, parse_arch
from costmodel.model.costs import BYTE_CONVENTION, FLOP_CONVENTION, IMPLS
from costmodel.model.ops import op_keys
from costmodel.model.step import INT64_MAX, layer_values, op_spec, step_costs
from costmodel.model.symbolic import symbolic_cost, symbolic_report
from costmodel.model.symbols import SIZES
from costmodel.present.data import costs_report as report_of

from tests.conftest import EXAMPLES, ROOT

MNIST = ROOT / "examples" / "mnist-demo-layer4.yaml"


def costs(arch, impl="index", batch=None):
    return costs_frame(arch, impl=impl, batch=batch)


def costs_many(arch, impl, **vary):
    return costs_frame(arch, impl=impl, vary=vary)


def costs_report(arch, impl, batch):
    return report_of(step_costs(arch, impl, batch))


def _per_row(arch, impl):
    """Each op's costs by substituting its values into its SymPy expressions, one at a time."""
    rows = []
    for ref in step_costs(arch, impl).ops:
        cost = symbolic_cost(ref.record, op_spec(arch, ref, impl))
        values = {getattr(SIZES, k): v for k, v in layer_values(arch, ref.sizes).items()}
        rows.append([int(sp.sympify(getattr(cost, q)).xreplace(values))
                     for q in ("flops", "bytes_read", "bytes_written", "memory_kept")])
    return np.array(rows)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("impl", IMPLS)
def test_vectorised_evaluation_equals_per_row_evaluation(path, impl):
    arch = load_arch(path)
    frame = costs(arch, impl)
    assert list(frame.columns) == list(COLUMNS)
    assert [tuple(k) for k in frame[["layer", "layer_type", "op", "phase"]].itertuples(index=False)] \
        == [tuple(k) for k in op_keys(arch)]
    expected = _per_row(arch, impl)
    got = frame[["flops", "bytes_read", "bytes_written", "memory_kept_bytes"]].to_numpy()
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(frame.bytes, expected[:, 1] + expected[:, 2])
    np.testing.assert_allclose(frame.intensity, expected[:, 0] / (expected[:, 1] + expected[:, 2]))
    assert frame.attrs["flop_convention"] == FLOP_CONVENTION


def test_step_costs_are_int64_and_sums_match_the_ops():
    arch = load_arch(MNIST)
    step = step_costs(arch, "index", batch=7)
    assert step.arch.batch == 7 and len(step) == len(op_keys(arch))
    assert all(getattr(step, q).dtype == np.int64 for q in ("flops", "bytes_read", "bytes_written", "memory_kept"))
    sums = step.sums()
    assert sums["flops"] == int(step.flops.sum()) and sums["bytes"] == int(step.bytes.sum())
    i = next(i for i, ref in enumerate(step.ops) if ref.op == "conv_matmul")
    cost = step.cost(i)  # the op's arrays with integer shapes
    assert sum(x.size * 4 for x in cost.reads) == step.bytes_read[i]


def test_a_quantity_beyond_int64_is_refused_naming_the_op():
    data = {"name": "huge", "input": {"height": 1000000, "width": 1000000, "channels": 1}, "batch": 100000,
            "layers": [{"type": "conv", "filters": 1000, "kernel": 1}, {"type": "full", "units": 10}]}
    with pytest.raises(ArchError, match=r"layers\[0\] \(conv\): .* do not fit in int64"):
        parse_arch(data)  # the file's arrays are checked when it is read (issue 12) ...
    with pytest.raises(ArchError, match=r"huge: layer 1 \(conv\), op \w+: its .* exceed the 64-bit range"):
        step_costs(Architecture.model_validate(data))  # ... and every op's quantities when they are computed
    with pytest.raises(ArchError, match="64-bit range"):
        costs_many(parse_arch(data | {"batch": 1}), "index", batch=[1, 100000])
    small = step_costs(parse_arch(data | {"batch": 1, "input": {"height": 100, "width": 100, "channels": 1}}))
    assert int(small.flops.max()) < INT64_MAX


def test_costs_many_over_ten_thousand_batch_sizes():
    arch = load_arch(MNIST)
    batch = np.arange(1, 10_001)
    frame = costs_many(arch, "strided", batch=batch)
    n_ops = len(op_keys(arch))
    assert len(frame) == n_ops * len(batch)
    assert list(frame.columns) == ["variant", "batch", *COLUMNS]
    np.testing.assert_array_equal(frame.variant.unique(), np.arange(len(batch)))
    for b in (1, 128, 4321, 10_000):
        rows = frame[frame.batch == b].drop(columns=["variant", "batch"]).reset_index(drop=True)
        expected = costs(arch, "strided", batch=b)
        assert rows.equals(expected), b


def test_costs_many_over_a_layers_filters_and_the_batch():
    arch = load_arch(MNIST)
    frame = costs_many(arch, "index", batch=[2, 5], **{"layers[1].filters": [8, 16, 64]})
    assert list(frame.columns[:3]) == ["variant", "layers[1].filters", "batch"]
    assert frame.variant.nunique() == 6
    for filters in (8, 16, 64):
        data = arch.model_dump()
        data["layers"][1]["filters"] = filters
        for b in (2, 5):
            rows = frame[(frame["layers[1].filters"] == filters) & (frame.batch == b)]
            expected = costs(parse_arch(data), "index", batch=b)
            assert rows[list(COLUMNS)].reset_index(drop=True).equals(expected)


def test_costs_many_refuses_what_cannot_vary():
    arch = load_arch(MNIST)
    with pytest.raises(UsageError):
        costs_many(arch, "index")
    with pytest.raises(ArchError, match="batch"):
        costs_many(arch, "index", batch=[0, 1])
    with pytest.raises(UsageError, match="no such place"):
        costs_many(arch, "index", **{"layers[9].filters": [1]})
    with pytest.raises(ArchError, match="kernel"):
        costs_many(arch, "index", **{"layers[2].kernel": [3, 99]})
    with pytest.raises(ArchError, match="unknown key 'kernal'"):
        costs_many(arch, "index", **{"layers[0].kernal": [3]})


def test_costs_report_is_design_md_json_with_totals():
    arch = load_arch(MNIST)
    report = json.loads(json.dumps(costs_report(arch, "strided", 16)))
    assert {k: report[k] for k in ("arch", "batch", "dtype", "impl")} == {
        "arch": "mnist-demo-layer4", "batch": 16, "dtype": "float32", "impl": "strided"}
    assert report["flop_convention"] == FLOP_CONVENTION
    assert report["byte_convention"] == BYTE_CONVENTION
    frame = costs(arch, "strided", batch=16)
    assert [op["op"] for op in report["ops"]] == list(frame.op)
    first = report["ops"][0]
    assert {"layer", "layer_type", "op", "phase", "flops", "bytes", "seconds", "fraction"} <= set(first)
    assert first["seconds"] is None and first["fraction"] is None
    totals = report["totals"]
    assert totals["total"]["flops"] == frame.flops.sum()
    assert totals["total"]["bytes"] == frame.bytes.sum()
    assert list(totals["by_phase"]) == ["forward", "backward", "update"]
    assert sum(t["flops"] for t in totals["by_phase"].values()) == totals["total"]["flops"]
    assert list(totals["by_layer"]) == [str(m) for m in range(1, arch.L + 2)]
    assert sum(t["memory_kept_bytes"] for t in totals["by_layer"].values()) == \
        totals["total"]["memory_kept_bytes"] == frame.memory_kept_bytes.sum()


@pytest.mark.parametrize("impl", IMPLS)
def test_symbolic_report_in_the_course_notation(impl):
    report = symbolic_report(load_arch(MNIST), impl)
    assert report["byte_convention"] == BYTE_CONVENTION
    by_key = {(op["layer"], op["op"]): op for op in report["ops"]}
    matmul = by_key[(2, "conv_matmul")]
    assert matmul["flops"]["text"] == "2 I h^m h^m d^m d^{m+1} a^m_conv b^m_conv"
    assert matmul["flops"]["leading_latex"] == (
        r"2 I h^{m} h^{m} d^{m} d^{m+1} a^{m}_{\mathrm{conv}} b^{m}_{\mathrm{conv}}")
    phi = by_key[(1, "phi")]
    assert phi["bytes"]["order_text"] == "O(I h^m h^m d^m a^m_conv b^m_conv)"
    assert phi["bytes_written"]["leading_text"] == "w_dtype I h^m h^m d^m a^m_conv b^m_conv"
    assert report["symbols"]["a^m_conv"] == r"a^{m}_{\mathrm{conv}}"
    assert [(op["layer"], op["op"], op["phase"]) for op in report["ops"]] == \
        [(k.layer, k.op, k.phase) for k in op_keys(load_arch(MNIST))]


def test_the_symbolic_legend_names_the_symbols_the_expressions_use():
    """An op lists the symbols of its expressions; `costs --symbolic` names only those: an MLP's
    legend has no convolution symbol."""
    from costmodel.present.tables import symbolic_output

    def legend(path) -> set[str]:
        text = symbolic_output(symbolic_report(load_arch(path)), "text")
        line = next(line for line in text.splitlines() if line.startswith("symbols: "))
        return set(line.removeprefix("symbols: ").split(", "))

    mlp = legend(ROOT / "examples" / "mnist-mlp.yaml")
    assert {"I", "n^m", "n^{m+1}", "w_dtype"} <= mlp and not mlp & {"a^m_conv", "h^m", "d^m", "p^m"}
    conv = legend(MNIST)
    assert {"a^m_conv", "h^m", "d^m"} <= conv
    report = symbolic_report(load_arch(MNIST))
    matmul = next(op for op in report["ops"] if op["op"] == "conv_matmul")
    assert {"I", "h^m", "d^m", "d^{m+1}", "a^m_conv", "b^m_conv"} <= set(matmul["symbols"])
