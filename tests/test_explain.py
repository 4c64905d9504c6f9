"""`costmodel explain`: every number of the explanation comes from the prediction and the
profile, and every choice of wording follows from comparing numbers.

`synthetic_profile` (also used by test_sweep and test_plots) is a machine profile with a model
for every op, built here so that no test depends on calibrating this machine.
"""

import copy
import json

import pytest
import sympy as sp
from typer.testing import CliRunner

from cli import app
from costmodel.model.arch import load_arch
from costmodel.machine.predict import predict
from costmodel.machine.profile import Profile, save_profile
from costmodel.model.ops import RECORDS
from costmodel.model.symbolic import symbolic_op
from costmodel.model.symbols import d_next
from costmodel.present.explain import IMPLEMENTATION_SHARE, MAJOR_SHARE, MAX_MAJOR, explain, render_text, roofline
from costmodel.present.explain_text import STEADY_PP
from costmodel.present.notation import course_name, course_tex, op_text
from costmodel.units import fmt_fraction, fmt_seconds, human

from tests.conftest import ROOT, all_model_keys, predicted
from tests.test_profile import profile_data

MNIST = ROOT / "examples" / "mnist-demo-layer4.yaml"
DIGITS = ROOT / "examples" / "digits-small.yaml"
MLP = ROOT / "examples" / "mnist-mlp.yaml"

#: seconds per call, per FLOP and per byte of each op kind, per implementation
RATES = {
    "index": {"matrix product": (5e-6, 1 / 100e9, 0.0), "index manipulation": (5e-6, 0.0, 1 / 4e9),
              "elementwise": (3e-6, 0.0, 1 / 20e9), "loss": (10e-6, 1 / 1e9, 0.0), "update": (10e-6, 0.0, 1 / 20e9)},
}
RATES["strided"] = RATES["index"] | {"index manipulation": (5e-6, 0.0, 1 / 12e9)}


def synthetic_profile(impls=("index", "strided"), rates=None, **ceilings) -> Profile:
    """A profile with a (calls, flops, bytes) model of every op for float32, 2 threads, and each
    of `impls`; `rates` overrides RATES[impl][kind]; `ceilings` replaces ceiling fields."""
    data = profile_data()
    data["ceilings"].update(copy.deepcopy(ceilings))
    data["entries"] = []
    for impl in impls:
        kinds = RATES[impl] | (rates or {})
        ops = {key: {"model": "nnls-linear", "features": ["calls", "flops", "bytes"],
                     "coef": list(kinds[kind]), "cv_error": 0.1, "interval": [0.9, 1.2], "n_samples": 20}
               for key, kind in all_model_keys()}
        data["entries"].append({"dtype": "float32", "impl": impl, "threads": 2, "ops": ops})
    return Profile.model_validate(data)


@pytest.fixture(scope="module")
def profile() -> Profile:
    return synthetic_profile()


@pytest.fixture(scope="module")
def mnist():
    return load_arch(MNIST)


@pytest.fixture(scope="module")
def facts(mnist, profile):
    return explain(mnist, profile, threads=2)


def _sentences(facts: dict, title_start: str) -> list[str]:
    [section] = [s for s in facts["sections"] if s["title"].startswith(title_start)]
    return section["sentences"]


# -- the course's notation -------------------------------------------------------------------

def test_every_op_has_a_name_in_the_course_notation():
    assert all(rec.text and rec.mathtext for rec in RECORDS.values())
    assert course_name(op_text("conv", "conv_matmul"), 2) == "W^2 phi(pad(Z^2))"
    assert course_name(op_text("conv", "phi"), "m") == "phi(pad(Z^m))"
    assert course_name(op_text("conv", "pool_grad"), 12) == "(P_pool^{12})^T dZ^{13}"
    assert course_name(op_text("conv", "pool_grad"), "m") == "(P_pool^m)^T dZ^{m+1}"
    assert course_tex(RECORDS[("conv", "conv_matmul")].mathtext, 3) == r"$W^{3}\phi(\mathrm{pad}(Z^{3}))$"


# -- the major ops ---------------------------------------------------------------------------

def test_major_ops_are_the_largest_and_their_numbers_are_the_predictions(mnist, profile, facts):
    result = predicted(mnist, profile, threads=2)
    largest = sorted(result["ops"], key=lambda o: o["seconds"], reverse=True)
    major = facts["major_ops"]
    assert [(o["layer"], o["op"]) for o in major] == [(o["layer"], o["op"]) for o in largest[:len(major)]]
    share = sum(o["fraction"] for o in major)
    assert share >= MAJOR_SHARE or len(major) == MAX_MAJOR
    assert share - major[-1]["fraction"] < MAJOR_SHARE  # the fewest that make up the share
    for op, sentence in zip(major, _sentences(facts, "The major ops")):
        quantity = op["flops"] if op["bound"] == "compute" else op["bytes"]
        assert op["rate"] == pytest.approx(quantity / op["seconds"])
        assert op["rate"] / op["ceiling"] == pytest.approx(op["ceiling_share"])
        assert sentence.startswith(f"{course_name(op_text('conv', op['op']), op['layer'])} [{op['op']}, layer {op['layer']}]: "
                                   f"{fmt_fraction(op['fraction'])} of the step ({fmt_seconds(op['seconds'])})")
        assert human(op["rate"], op["unit"]) in sentence
        assert f"{op['bound']}-bound" in sentence
        assert op["bound"] in ("compute", "memory", "implementation")


def test_a_profile_coefficient_changes_the_rate_in_the_sentence(mnist):
    slow = synthetic_profile(rates={"index manipulation": (5e-6, 0.0, 1 / 1e9)})
    fast = synthetic_profile(rates={"index manipulation": (5e-6, 0.0, 1 / 8e9)})
    top = {}
    for name, prof in (("slow", slow), ("fast", fast)):
        f = explain(mnist, prof, threads=2)
        [op] = [o for o in f["major_ops"] if o["kind"] == "index manipulation"][:1]
        top[name] = (op, _sentences(f, "The major ops")[f["major_ops"].index(op)])
    (slow_op, slow_text), (fast_op, fast_text) = top["slow"], top["fast"]
    assert fast_op["rate"] > 2 * slow_op["rate"]
    assert f"moves {human(slow_op['rate'], 'B/s')}" in slow_text
    assert f"moves {human(fast_op['rate'], 'B/s')}" in fast_text


@pytest.mark.parametrize("factor, roof, side", [(0.5, "compute", "above"), (2.0, "memory", "below")])
def test_the_roof_flips_when_the_machine_balance_passes_the_intensity(mnist, factor, roof, side):
    slow_matmul = {"matrix product": (5e-6, 1 / 1e9, 0.0)}  # the matrix products become the major ops
    probe = explain(mnist, synthetic_profile(rates=slow_matmul), threads=2)
    top = probe["major_ops"][0]
    assert top["kind"] == "matrix product"
    balance = top["intensity"] * factor
    prof = synthetic_profile(rates=slow_matmul, machine_balance={"float32": balance, "float64": balance})
    f = explain(mnist, prof, threads=2)
    op = f["major_ops"][0]
    assert (op["op"], op["layer"], op["roof"]) == (top["op"], top["layer"], roof)
    assert (f"= {op['intensity']:.3g} FLOP/B, {side} the machine balance of {balance:.3g} FLOP/B, "
            "so its roof is") in _sentences(f, "The major ops")[0]


def _timed(row, seconds):
    """A predicted row with its seconds replaced (its rates follow)."""
    import dataclasses

    return dataclasses.replace(row, seconds=seconds)


@pytest.mark.parametrize("share, bound", [(0.9, "compute"), (0.3, "compute"), (0.2, "implementation"),
                                          (0.01, "implementation")])
def test_the_verdict_is_the_roof_it_attains_or_its_implementation(mnist, profile, share, bound):
    """A product at `share` of the peak: compute-bound down to IMPLEMENTATION_SHARE of it, below
    that (and far below the bandwidth) bound by its implementation."""
    row = next(r for r in predict(mnist, profile, threads=2).rows if r.name == "conv_matmul" and r.layer == 2)
    peak = profile.ceilings.matmul_flops_per_second["float32"]
    facts = roofline(_timed(row, row.flops / (share * peak)), profile.ceilings, "float32", "index")
    assert facts["roof"] == "compute" and facts["bound"] == bound
    assert facts["compute_share"] == pytest.approx(share)
    assert facts["roof_seconds"] == pytest.approx(max(row.flops / peak, row.bytes / facts["bandwidth"]))


def test_an_op_far_below_both_roofs_is_bound_by_its_implementation(mnist, profile):
    """The slides' col2im: a scatter-add that moves a few percent of the measured bandwidth."""
    f = explain(mnist, synthetic_profile(rates={"index manipulation": (5e-6, 0.0, 1 / 1e9)}), threads=2)
    op = next(o for o in f["major_ops"] if o["op"] == "phi_grad")
    assert op["roof"] == "memory" and op["bound"] == "implementation"
    assert op["memory_share"] < IMPLEMENTATION_SHARE and op["compute_share"] < IMPLEMENTATION_SHARE
    sentence = _sentences(f, "The major ops")[f["major_ops"].index(op)]
    assert "far below both roofs" in sentence and "implementation-bound" in sentence
    assert "scatter-add (np.add.at)" in sentence  # the record says how the index kernel does it
    assert f"at the roofline it would take {fmt_seconds(op['roof_seconds'])}" in sentence


def test_roofline_of_an_op_without_flops_has_the_memory_roof(mnist, profile):
    phi = next(r for r in predict(mnist, profile, threads=2).rows if r.name == "phi")
    facts = roofline(phi, profile.ceilings, "float32")
    assert facts["intensity"] == 0 and facts["roof"] == "memory" and facts["compute_share"] == 0
    assert facts["rate"] == pytest.approx(phi.bytes / phi.seconds)
    fast = roofline(_timed(phi, phi.bytes / (0.8 * facts["bandwidth"])), profile.ceilings, "float32")
    assert fast["bound"] == "memory" and fast["memory_share"] == pytest.approx(0.8)


# -- FLOPs against time ----------------------------------------------------------------------

def test_flop_and_time_shares_by_kind_are_the_predictions(mnist, profile, facts):
    result = predicted(mnist, profile, threads=2)
    flops = sum(o["flops"] for o in result["ops"])
    groups = {g["kind"]: g for g in predicted(mnist, profile, "kind", threads=2)["groups"]}
    sentences = _sentences(facts, "FLOPs and bytes")
    for kind in facts["kinds"]:
        g = groups[kind["kind"]]
        assert kind["time_share"] == pytest.approx(g["fraction"])
        assert kind["flop_share"] == pytest.approx(g["flops"] / flops)
    matmul = groups["matrix product"]
    ratio = matmul["flops"] / (flops - matmul["flops"])
    [claim] = [s for s in sentences if "times the FLOPs of all other ops together" in s]
    half = "less" if matmul["fraction"] < 0.5 else "more"
    assert claim.startswith(f"Matrix products: {ratio:.3g} times the FLOPs")
    assert claim.endswith(f"{fmt_fraction(matmul['fraction'])} of the time, {half} than half.")


# -- the slides' ratio -----------------------------------------------------------------------

def test_the_slides_ratio_is_2_d_next_per_layer(mnist, profile, facts):
    phi = symbolic_op("conv", "phi").writes[0]
    assert sp.simplify(symbolic_op("conv", "conv_matmul").flops / phi.size) == 2 * d_next
    seconds = {(o["layer"], o["op"]): o["seconds"] for o in predicted(mnist, profile, threads=2)["ops"]}
    forward, backward = facts["ratios"]["forward"], facts["ratios"]["backward"]
    assert (forward["ratio"], forward["order"]) == ("2 d^{m+1}", "d^{m+1}")
    assert backward["ratio"] == "2 d^{m+1}"
    filters = [layer.filters for layer in mnist.layers if layer.type == "conv"]
    assert [x["value"] for x in forward["layers"]] == [2 * f for f in filters]
    assert [x["layer"] for x in backward["layers"]] == [2, 3]  # layer 1 has no input gradient
    for x in forward["layers"]:
        assert x["time_ratio"] == pytest.approx(seconds[(x["layer"], "conv_matmul")] / seconds[(x["layer"], "phi")])
    text = _sentences(facts, "The slides' ratio")[0]
    assert "= 2 d^{m+1} (SymPy; leading order d^{m+1}): 64 at layer 1, 128 at layer 2, 128 at layer 3." in text


def test_a_network_without_conv_layers_says_so(profile):
    f = explain(load_arch(MLP), profile, threads=2)
    assert _sentences(f, "The slides' ratio") == [
        "mnist-mlp has 0 conv layers: there is no phi(pad(Z^m)) to compare with a matrix product."]


# -- the other implementation ----------------------------------------------------------------

def test_the_other_implementation_is_predicted_when_the_profile_has_it(mnist, profile, facts):
    strided = predicted(mnist, profile, impl="strided", threads=2)
    other = facts["other_impl"]
    assert other["available"] and other["impl"] == "strided"
    assert other["total_seconds"] == pytest.approx(strided["total_seconds"])
    first = _sentences(facts, "The other implementation")[0]
    assert first.startswith(f"With impl strided (float32, 2 threads) the step would take "
                            f"{fmt_seconds(strided['total_seconds'])} instead of {fmt_seconds(facts['total_seconds'])}")
    top = other["largest_changes"][0]
    assert abs(top["seconds_after"] - top["seconds_before"]) == max(
        abs(c["seconds_after"] - c["seconds_before"]) for c in other["largest_changes"])


def test_a_missing_implementation_names_the_command_that_calibrates_it(mnist):
    f = explain(mnist, synthetic_profile(impls=("index",)), threads=2)
    assert not f["other_impl"]["available"]
    assert "`costmodel calibrate --dtype float32 --impl strided --threads 2`" in \
        _sentences(f, "The other implementation")[0]


# -- the mini-batch size ---------------------------------------------------------------------

def test_shares_by_batch_size_are_the_predictions_at_each_size(mnist, profile, facts):
    points = facts["batches"]["points"]
    assert [p["batch"] for p in points] == [1, 8, 64, 512]
    for p in points:
        result = predicted(mnist, profile, "kind", threads=2, batch=p["batch"])
        assert p["total_seconds"] == pytest.approx(result["total_seconds"])
        assert p["shares"] == pytest.approx({g["kind"]: g["fraction"] for g in result["groups"]})
    last = _sentences(facts, "The mini-batch size")[-1]
    for kind in facts["batches"]["kinds"]:
        change = 100 * (points[-1]["shares"][kind["kind"]] - points[0]["shares"][kind["kind"]])
        assert kind["change_pp"] == pytest.approx(change)
        name = "matrix products" if kind["kind"] == "matrix product" else (
            "elementwise ops" if kind["kind"] == "elementwise" else kind["kind"])
        move = "gaining share" if change >= STEADY_PP else "losing share" if change <= -STEADY_PP else "within"
        clause = last[last.index(move):]
        assert f"{name} ({fmt_fraction(kind['first'])} -> {fmt_fraction(kind['last'])}, {change:+.1f} pp)" in clause


# -- the command -----------------------------------------------------------------------------

def test_explain_command_table_and_json(tmp_path, facts):
    path = tmp_path / "profile.json"
    save_profile(synthetic_profile(), path)
    runner = CliRunner()
    table = runner.invoke(app, ["explain", str(MNIST), "--profile", str(path), "--threads", "2"])
    assert table.exit_code == 0, table.stderr
    assert table.stdout == render_text(facts)
    data = json.loads(runner.invoke(app, ["explain", str(MNIST), "--profile", str(path), "--threads", "2",
                                          "--format", "json"]).stdout)
    assert data["total_seconds"] == pytest.approx(facts["total_seconds"])
    assert [s["title"] for s in data["sections"]] == [s["title"] for s in facts["sections"]]


def test_explain_command_without_the_threads_in_the_profile_is_one_line(tmp_path):
    path = tmp_path / "profile.json"
    save_profile(synthetic_profile(), path)
    result = CliRunner().invoke(app, ["explain", str(DIGITS), "--profile", str(path), "--threads", "3"])
    assert result.exit_code == 2  # a profile error: exit 2 (issue 12)
    errors = [line for line in result.stderr.splitlines() if not line.startswith("costmodel: warning:")]
    assert len(errors) == 1 and "no entry for float32, impl index, 3 threads" in errors[0]


def test_an_op_whose_time_is_its_inner_loops_says_so():
    """A strided pooling whose model puts most of its time in starting inner loops (the
    threaded window kernels' term) is implementation-bound by them."""
    from costmodel.present.explain_text import _op_sentence

    op = {"layer": 1, "layer_type": "conv", "op": "pool_grad", "phase": "backward", "kind": "index manipulation",
          "seconds": 0.02, "fraction": 0.15, "flops": 0, "bytes": 3.4e7, "name": "(P_pool^1)^T dZ^2",
          "intensity": 0.0, "machine_balance": 10.0, "roof": "memory", "bound": "implementation", "peak": 2e11,
          "bandwidth": 3e10, "ceiling_working_set_bytes": 64 << 20, "flop_rate": 0.0, "byte_rate": 1.7e9,
          "compute_share": 0.0, "memory_share": 0.057, "roof_seconds": 1.1e-3, "call_share": 0.01, "loop_share": 0.7}
    sentence = _op_sentence(op)
    assert "implementation-bound: starting its inner loops is 70.0 % of its time" in sentence
    assert "per-call overhead" not in _op_sentence({**op, "loop_share": 0.2, "how": "a masked product"})


def test_an_outer_product_far_below_both_roofs_says_what_it_is():
    """A depthwise convolution's input gradient is an outer product per group (d'/g = 1):
    explain names it as such when it is implementation-bound, and not for the other products."""
    from costmodel.model.arch import parse_arch

    arch = parse_arch({"name": "dw", "batch": 32, "input": {"height": 32, "width": 32, "channels": 3},
                       "layers": [{"type": "conv", "filters": 32, "kernel": 1},
                                  {"type": "conv", "filters": 32, "kernel": 3, "padding": 1, "groups": 32},
                                  {"type": "full", "units": 10}]})
    f = explain(arch, synthetic_profile(rates={"matrix product": (5e-6, 1 / 0.5e9, 0.0)}), threads=2)
    outer = {(o["layer"], o["op"]) for o in f["major_ops"] if o["outer_product"]}
    assert outer == {(2, "conv_grad_input")}  # depthwise, d'/g = 1; its conv_matmul sums over h h = 9
    assert any(o["op"] == "conv_matmul" and o["layer"] == 2 for o in f["major_ops"])
    sentences = _sentences(f, "The major ops")
    for o, sentence in zip(f["major_ops"], sentences):
        if o["bound"] == "implementation" and o["call_share"] < 0.5:
            assert ("is an outer product" in sentence) == o["outer_product"], sentence
    assert sum("is an outer product" in sentence for sentence in sentences) == 1
