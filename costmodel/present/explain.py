"""Explain a predicted SG step in sentences built from its numbers (the slides' analysis).

`explain` gathers the facts: the major ops, each one's arithmetic intensity against the
profile's machine balance and the rate it reaches; FLOP and byte shares against time shares
by op kind; the slides' symbolic ratio of W^m phi(pad(Z^m)) to phi(pad(Z^m)) per layer; what
the other implementation would change; how the shares move with the mini-batch size.
`sentences` turns those facts into words: every claim cites a number, and every choice of
wording (compute- or memory-bound, gains or loses share) follows from comparing numbers.
Pure: no clock, no kernel.
"""

from __future__ import annotations

import re
import textwrap
from string import Template

import sympy as sp

from costmodel.model.arch import Architecture
from costmodel.model.costs import IMPLS, OpSpec, op_cost
from costmodel.errors import CostModelError
from costmodel.machine.features import model_key
from costmodel.machine.predict import group, predict
from costmodel.machine.profile import Ceilings, Profile, _iec, _threads
from costmodel.present.report import fmt_fraction, fmt_seconds, human
from costmodel.model.shapes import bound_ops
from costmodel.machine.sweep import sweep
from costmodel.model.symbols import big_o, to_text

#: each op in the course's notation: (plain text, matplotlib mathtext); $m is layer m's
#: superscript, $n layer m+1's
NOTATION: dict[str, tuple[str, str]] = {
    "pad": ("pad(Z$m)", r"\mathrm{pad}(Z$m)"),
    "phi": ("phi(pad(Z$m))", r"\phi(\mathrm{pad}(Z$m))"),
    "conv_matmul": ("W$m phi(pad(Z$m))", r"W$m\phi(\mathrm{pad}(Z$m))"),
    "bias": ("S$m + b$m 1^T", r"S$m + b$m 1^T"),
    "activation": ("sigma(S$m)", r"\sigma(S$m)"),
    "pool": ("P_pool$m vec(sigma(S$m))", r"P_{\mathrm{pool}}$m\mathrm{vec}(\sigma(S$m))"),
    "flatten": ("vec(Z$m)", r"\mathrm{vec}(Z$m)"),
    "full_matmul": ("W$m Z$m", r"W$m Z$m"),
    "loss": ("loss(Z$m)", r"\mathrm{loss}(Z$m)"),
    "loss_grad": ("dloss/dZ$m", r"\partial\mathrm{loss}/\partial Z$m"),
    "activation_grad": ("sigma'(S$m)", r"\sigma'(S$m)"),
    "pool_grad": ("(P_pool$m)^T dZ$n", r"(P_{\mathrm{pool}}$m)^T dZ$n"),
    "conv_grad_W": ("dS$m phi(pad(Z$m))^T", r"dS$m\phi(\mathrm{pad}(Z$m))^T"),
    "bias_grad": ("dS$m 1", r"dS$m 1"),
    "conv_grad_input": ("(W$m)^T dS$m", r"(W$m)^T dS$m"),
    "phi_grad": ("(P_phi$m)^T (col2im)", r"(P_{\phi}$m)^T\,(\mathrm{col2im})"),
    "pad_grad": ("(P_pad$m)^T", r"(P_{\mathrm{pad}}$m)^T"),
    "full_grad_W": ("dS$m (Z$m)^T", r"dS$m (Z$m)^T"),
    "full_grad_input": ("(W$m)^T dS$m", r"(W$m)^T dS$m"),
    "flatten_grad": ("mat(dZ$m)", r"\mathrm{mat}(dZ$m)"),
    "update": ("W$m, b$m update", r"W$m, b$m\ \mathrm{update}"),
}

#: PyTorch's fused groups (costmodel.machine.fused), named by the product they are built around
FUSED_NOTATION: dict[str, tuple[str, str]] = {
    "conv_matmul": ("conv(Z$m; W$m) + b$m, fused", r"\mathrm{conv}(Z$m; W$m) + b$m"),
    "conv_grad_W": ("conv backward of dS$m, fused", r"\mathrm{conv}'(dS$m)"),
    "full_matmul": ("W$m Z$m + b$m 1^T", r"W$m Z$m + b$m 1^T"),
    "full_grad_W": ("dS$m (Z$m)^T, dS$m 1, (W$m)^T dS$m", r"dS$m (Z$m)^T, (W$m)^T dS$m"),
}
OTHER_NOTATION = ("other (framework)", r"\mathrm{other}")


def _notation(op: str) -> tuple[str, str]:
    """The notation of an op, of a PyTorch group ("pad+phi+conv_matmul+bias") or of "other"."""
    if op in NOTATION:
        return NOTATION[op]
    if op == "other":
        return OTHER_NOTATION
    parts = op.split("+")
    for product, notation in FUSED_NOTATION.items():
        if product in parts:
            return notation
    return (" + ".join(NOTATION[p][0] for p in parts), " + ".join(NOTATION[p][1] for p in parts))


#: the op kinds (costmodel.model.ops.OP_KIND) as the subject of a sentence
KIND_PLURAL = {"matrix product": "matrix products", "elementwise": "elementwise ops"}

#: the major ops: the fewest that make up this share of the step, at most MAX_MAJOR
MAJOR_SHARE = 0.75
MAX_MAJOR = 6
#: a kind whose share moves by less than this (percentage points) keeps its share
STEADY_PP = 1.0
BATCHES = (1, 8, 64, 512)


def _next(layer: int | str) -> int | str:
    return layer + 1 if isinstance(layer, int) else f"{layer}+1"


def course_name(op: str, layer: int | str) -> str:
    """The op in the course's notation, plain text: ('conv_matmul', 2) -> 'W^2 phi(pad(Z^2))';
    layer 'm' gives the symbolic form."""
    def sup(k: int | str) -> str:
        return f"^{k}" if len(str(k)) == 1 else f"^{{{k}}}"

    return Template(_notation(op)[0]).substitute(m=sup(layer), n=sup(_next(layer)))


def course_tex(op: str, layer: int) -> str:
    """The op in the course's notation as matplotlib mathtext: '$W^{2}\\phi(...)$'."""
    return "$" + Template(_notation(op)[1]).substitute(m=f"^{{{layer}}}", n=f"^{{{_next(layer)}}}") + "$"


def label(row: dict) -> str:
    """'W^2 phi(pad(Z^2)) [conv_matmul, layer 2]'."""
    return f"{course_name(row['op'], row['layer'])} [{row['op']}, layer {row['layer']}]"


def kind_name(kind: str) -> str:
    return KIND_PLURAL.get(kind, kind)


# -- facts -----------------------------------------------------------------------------------

def bandwidth_at(ceilings: Ceilings, nbytes: float) -> tuple[float, int]:
    """(bytes/s, working set) of the smallest probed working set that holds `nbytes`, else
    of the largest one."""
    points = sorted(ceilings.bandwidth, key=lambda p: p.working_set_bytes)
    point = next((p for p in points if p.working_set_bytes >= nbytes), points[-1])
    return point.bytes_per_second, point.working_set_bytes


def memory_bandwidth(ceilings: Ceilings) -> float:
    """The bandwidth of the largest probed working set: the one machine_balance is made with."""
    return max(ceilings.bandwidth, key=lambda p: p.working_set_bytes).bytes_per_second


def roofline(row: dict, ceilings: Ceilings, dtype: str) -> dict:
    """One op against the roofline: intensity, the bound it falls under, the rate it reaches
    (its FLOPs or bytes over its seconds) and that rate's share of the matching ceiling."""
    flops, nbytes, seconds = row["flops"], row["bytes"], row["seconds"]
    intensity = flops / nbytes if nbytes else 0.0
    balance = ceilings.machine_balance[dtype]
    facts = {"intensity": intensity, "machine_balance": balance}
    if flops and intensity >= balance:
        peak = ceilings.matmul_flops_per_second[dtype]
        rate = flops / seconds if seconds > 0 else 0.0
        facts.update(bound="compute", rate=rate, unit="FLOP/s", ceiling=peak, ceiling_share=rate / peak)
    else:
        bandwidth, working_set = bandwidth_at(ceilings, nbytes)
        rate = nbytes / seconds if seconds > 0 else 0.0
        facts.update(bound="memory", rate=rate, unit="B/s", ceiling=bandwidth, ceiling_share=rate / bandwidth,
                     ceiling_working_set_bytes=working_set)
    return facts


def _op_facts(row: dict) -> dict:
    return {k: row[k] for k in ("layer", "layer_type", "op", "phase", "kind", "seconds", "fraction",
                                "flops", "bytes")} | {"name": course_name(row["op"], row["layer"])}


def major_ops(result: dict, ceilings: Ceilings) -> list[dict]:
    """The fewest ops that make up MAJOR_SHARE of the step (at most MAX_MAJOR), largest first,
    each with its roofline facts."""
    ops = sorted(result["ops"], key=lambda o: o["seconds"], reverse=True)
    chosen, share = [], 0.0
    for row in ops[:MAX_MAJOR]:
        chosen.append(_op_facts(row) | roofline(row, ceilings, result["dtype"]))
        share += row["fraction"]
        if share >= MAJOR_SHARE:
            break
    return chosen


def kind_shares(result: dict) -> list[dict]:
    """Per op kind, largest time first: its shares of the FLOPs, of the bytes and of the time."""
    flops = sum(o["flops"] for o in result["ops"])
    nbytes = sum(o["bytes"] for o in result["ops"])
    rows = [{"kind": g["kind"], "seconds": g["seconds"], "time_share": g["fraction"],
             "flop_share": g["flops"] / flops if flops else 0.0,
             "byte_share": g["bytes"] / nbytes if nbytes else 0.0, "flops": g["flops"]}
            for g in group(result, "kind")]
    return sorted(rows, key=lambda g: g["seconds"], reverse=True)


#: the slides' ratio, forward and backward: (numerator op, its quantity, denominator op, its quantity)
RATIOS = {"forward": ("conv_matmul", "flops", "phi", "elements"),
          "backward": ("conv_grad_input", "flops", "phi_grad", "flops")}


def _quantity(spec: OpSpec, what: str) -> sp.Expr:
    cost = op_cost(spec)
    return cost.flops if what == "flops" else cost.writes[0].size


def symbolic_ratios(arch: Architecture, result: dict, impl: str) -> dict:
    """The slides' "d^m times": per phase, the SymPy ratio of the matrix product's FLOPs to
    the work of phi(pad(Z)) (its elements forward, its adds backward), its leading order, and
    per conv layer its value beside the ratio of the two ops' predicted times."""
    seconds = {(o["layer"], o["op"]): o["seconds"] for o in result["ops"]}
    values = {op.ref.layer: op.values for op in bound_ops(arch, impl) if op.ref.layer_type == "conv"}
    out = {}
    for phase, (num_op, num_q, den_op, den_q) in RATIOS.items():
        num = _quantity(OpSpec(num_op, "conv", impl), num_q)
        den = _quantity(OpSpec(den_op, "conv", impl), den_q)
        ratio = sp.simplify(num / den)
        layers = [{"layer": m, "value": int(ratio.xreplace(vals)),
                   "time_ratio": seconds[(m, num_op)] / seconds[(m, den_op)]}
                  for m, vals in sorted(values.items()) if (m, den_op) in seconds and seconds[(m, den_op)] > 0]
        out[phase] = {"numerator_op": num_op, "numerator": num_q, "denominator_op": den_op, "denominator": den_q,
                      "ratio": to_text(ratio), "order": to_text(sp.simplify(big_o(num) / big_o(den))),
                      "layers": layers}
    return out


def call_seconds(result: dict, profile: Profile, loss: str) -> float:
    """The step's per-call overheads: the sum over its ops of the profile's seconds per call."""
    entry = profile.entry(result["dtype"], result["impl"], result["threads"], result.get("backend", "numpy"))
    total = 0.0
    for row in result["ops"]:
        model = entry.ops[model_key(row["op"], loss)]
        if "calls" in model.features:
            total += model.coef[model.features.index("calls")]
    return total


def other_impl(arch: Architecture, profile: Profile, result: dict) -> dict:
    """The step predicted with the other implementation of the index-heavy ops, if the profile
    has it; else the command that calibrates it."""
    impl, threads = result["impl"], result["threads"]
    other = next(i for i in IMPLS if i != impl)
    if not any(e.key == (arch.dtype, other, threads, "numpy") for e in profile.entries):
        return {"impl": other, "available": False,
                "command": f"costmodel calibrate --dtype {arch.dtype} --impl {other} --threads {threads}"}
    alt = predict(arch, profile, impl=other, threads=threads)
    before = {g["kind"]: g["time_share"] for g in kind_shares(result)}
    after = {g["kind"]: g["time_share"] for g in kind_shares(alt)}
    changes = [_op_facts(a) | {"seconds_before": b["seconds"], "seconds_after": a["seconds"]}
               for b, a in zip(result["ops"], alt["ops"], strict=True)]
    changes.sort(key=lambda c: abs(c["seconds_after"] - c["seconds_before"]), reverse=True)
    return {"impl": other, "available": True, "total_seconds": alt["total_seconds"],
            "change": alt["total_seconds"] / result["total_seconds"] - 1,
            "kinds": [{"kind": k, "before": before[k], "after": after.get(k, 0.0)} for k in before],
            "largest_changes": changes[:3]}


def batch_shares(arch: Architecture, profile: Profile, impl: str, threads: int, calls: float,
                 batches=BATCHES) -> dict:
    """The step predicted at several mini-batch sizes: its time, time per instance, the share
    of its per-call overheads (`calls` seconds, the same at every I) and the time share of
    every op kind; per kind, how its share moves."""
    swept = sweep(arch, profile, "batch", list(batches), impl=impl, threads=threads, by="kind")
    points = []
    for point in swept["points"]:
        total = point["total_seconds"]
        points.append({"batch": point["value"], "total_seconds": total,
                       "seconds_per_instance": total / point["value"],
                       "call_share": calls / total,
                       "shares": {g["kind"]: g["fraction"] for g in point["groups"]}})
    first, last = points[0]["shares"], points[-1]["shares"]
    kinds = [{"kind": k, "first": first[k], "last": last.get(k, 0.0), "change_pp": 100 * (last.get(k, 0.0) - first[k])}
             for k in first]
    kinds.sort(key=lambda k: k["change_pp"], reverse=True)
    return {"call_seconds": calls, "points": points, "kinds": kinds}


def explain(arch: Architecture, profile: Profile, *, impl: str = "index", threads: int | None = None,
            batch: int | None = None, batches=BATCHES) -> dict:
    """The facts of a predicted step and the sentences that explain it (`sections`)."""
    arch = arch.with_batch(batch)
    result = predict(arch, profile, impl=impl, threads=threads)
    ceilings = profile.ceilings
    if arch.dtype not in ceilings.machine_balance or arch.dtype not in ceilings.matmul_flops_per_second:
        raise CostModelError(f"the profile's ceilings have no {arch.dtype} peak: run "
                             f"`costmodel calibrate --dtype {arch.dtype}` again")
    facts = {
        "arch": arch.name, "batch": arch.batch, "dtype": arch.dtype, "impl": impl, "threads": result["threads"],
        "profile": result["profile"], "total_seconds": result["total_seconds"],
        "total_seconds_low": result["total_seconds_low"], "total_seconds_high": result["total_seconds_high"],
        "matmul_peak": ceilings.matmul_flops_per_second[arch.dtype],
        "memory_bandwidth": memory_bandwidth(ceilings),
        "machine_balance": ceilings.machine_balance[arch.dtype],
        "conv_layers": arch.n_conv,
        "major_ops": major_ops(result, ceilings),
        "kinds": kind_shares(result),
        "ratios": symbolic_ratios(arch, result, impl),
        "other_impl": other_impl(arch, profile, result),
        "batches": batch_shares(arch, profile, impl, result["threads"], call_seconds(result, profile, arch.loss),
                                batches),
    }
    facts["sections"] = sentences(facts)
    return facts


# -- sentences -------------------------------------------------------------------------------

def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _num(x: float) -> str:
    """3 significant digits, without an exponent up to 10^6: 41.6, 1,520."""
    return f"{x:.3g}" if abs(x) < 1000 else f"{float(f'{x:.3g}'):,.0f}"


def _op_sentence(op: dict) -> str:
    head = f"{label(op)}: {fmt_fraction(op['fraction'])} of the step ({fmt_seconds(op['seconds'])}); "
    if op["flops"]:
        side = "above" if op["bound"] == "compute" else "below"
        work = (f"{human(op['flops'], 'FLOP')} over {human(op['bytes'], 'B')} = {op['intensity']:.3g} FLOP/B, "
                f"{side} the machine balance of {op['machine_balance']:.3g} FLOP/B, so {op['bound']}-bound")
    else:
        work = f"no FLOPs over {human(op['bytes'], 'B')}, so memory-bound"
    if op["bound"] == "compute":
        rate = (f"it runs at {human(op['rate'], 'FLOP/s')}, {fmt_fraction(op['ceiling_share'])} of the "
                f"matrix-product peak of {human(op['ceiling'], 'FLOP/s')}")
    else:
        rate = (f"it moves {human(op['rate'], 'B/s')}, {fmt_fraction(op['ceiling_share'])} of the "
                f"{human(op['ceiling'], 'B/s')} measured with a working set of "
                f"{_iec(op['ceiling_working_set_bytes'])}")
    return f"{head}{work}; {rate}."


def _kind_sentences(kinds: list[dict]) -> list[str]:
    out = [f"{kind_name(k['kind'])}: {fmt_fraction(k['flop_share'])} of the FLOPs, "
           f"{fmt_fraction(k['byte_share'])} of the bytes, {fmt_fraction(k['time_share'])} of the time "
           f"({fmt_seconds(k['seconds'])})." for k in kinds]
    top_flops = max(kinds, key=lambda k: k["flop_share"])
    others = sum(k["flops"] for k in kinds) - top_flops["flops"]
    if others > 0:
        half = "less" if top_flops["time_share"] < 0.5 else "more"
        link = "yet" if half == "less" else "and"
        out.append(f"{_cap(kind_name(top_flops['kind']))}: {_num(top_flops['flops'] / others)} times the FLOPs of "
                   f"all other ops together, {link} {fmt_fraction(top_flops['time_share'])} of the time, {half} "
                   "than half.")
    top_time = kinds[0]
    if top_time["kind"] != top_flops["kind"]:
        out.append(f"The largest share of the time, {fmt_fraction(top_time['time_share'])}, goes to "
                   f"{kind_name(top_time['kind'])}, with {fmt_fraction(top_time['flop_share'])} of the FLOPs and "
                   f"{fmt_fraction(top_time['byte_share'])} of the bytes.")
    return out


_QUANTITY = {"flops": "the FLOPs", "elements": "the elements"}


def _ratio_sentences(facts: dict) -> list[str]:
    if not facts["conv_layers"]:
        return [f"{facts['arch']} has {facts['conv_layers']} conv layers: there is no phi(pad(Z^m)) to compare "
                "with a matrix product."]
    out = []
    for r in facts["ratios"].values():
        if not r["layers"]:
            continue
        num, den = course_name(r["numerator_op"], "m"), course_name(r["denominator_op"], "m")
        values = ", ".join(f"{x['value']} at layer {x['layer']}" for x in r["layers"])
        times = ", ".join(f"{x['time_ratio']:.3g} at layer {x['layer']}" for x in r["layers"])
        work = [x["value"] / x["time_ratio"] for x in r["layers"]]
        span = _num(min(work)) if _num(min(work)) == _num(max(work)) else f"{_num(min(work))} to {_num(max(work))}"
        out.append(f"{_cap(_QUANTITY[r['numerator']])} of {num} over {_QUANTITY[r['denominator']]} of {den} "
                   f"= {r['ratio']} (SymPy; leading order {r['order']}): {values}. Their predicted times are in "
                   f"the ratio {times}: per second, {num} gets through {span} times the work of {den}.")
    return out


def _impl_sentences(facts: dict) -> list[str]:
    o = facts["other_impl"]
    setting = f"{facts['dtype']}, {_threads(facts['threads'])}"
    if not o["available"]:
        return [f"The profile has no calibration for impl {o['impl']} ({setting}), so what it would change cannot "
                f"be predicted here: `{o['command']}` adds it."]
    kinds = "; ".join(f"{kind_name(k['kind'])} {fmt_fraction(k['before'])} -> {fmt_fraction(k['after'])}"
                      for k in o["kinds"])
    changes = "; ".join(f"{label(c)} {fmt_seconds(c['seconds_before'])} -> {fmt_seconds(c['seconds_after'])}"
                        for c in o["largest_changes"])
    return [f"With impl {o['impl']} ({setting}) the step would take {fmt_seconds(o['total_seconds'])} instead of "
            f"{fmt_seconds(facts['total_seconds'])} ({100 * o['change']:+.1f} %).",
            f"Time shares (impl {facts['impl']} -> {o['impl']}): {kinds}.",
            f"The largest changes: {changes}."]


def _batch_sentences(b: dict) -> list[str]:
    points = b["points"]
    first, last = points[0], points[-1]
    sizes = ", ".join(str(p["batch"]) for p in points)
    out = [f"Predicted at I = {sizes}, the step takes {', '.join(fmt_seconds(p['total_seconds']) for p in points)}, "
           f"that is {', '.join(fmt_seconds(p['seconds_per_instance']) for p in points)} per instance.",
           f"The per-call overheads ({fmt_seconds(b['call_seconds'])} per step, whatever I) are "
           f"{fmt_fraction(first['call_share'])} of the step at I={first['batch']} and "
           f"{fmt_fraction(last['call_share'])} at I={last['batch']}."]
    moves: dict[str, list[str]] = {"gaining share": [], "losing share": [], f"within {STEADY_PP:g} pp": []}
    for k in b["kinds"]:
        move = ("gaining share" if k["change_pp"] >= STEADY_PP else "losing share" if k["change_pp"] <= -STEADY_PP
                else f"within {STEADY_PP:g} pp")
        moves[move].append(f"{kind_name(k['kind'])} ({fmt_fraction(k['first'])} -> {fmt_fraction(k['last'])}, "
                           f"{k['change_pp']:+.1f} pp)")
    clauses = [f"{move}: {', '.join(kinds)}" for move, kinds in moves.items() if kinds]
    out.append(f"From I={first['batch']} to I={last['batch']}, {'; '.join(clauses)}.")
    return out


def sentences(facts: dict) -> list[dict]:
    """The explanation as titled sections of sentences, each built from `facts`."""
    major = facts["major_ops"]
    step = [
        f"The predicted SG step of {facts['arch']} (I={facts['batch']}, {facts['dtype']}, impl {facts['impl']}, "
        f"{_threads(facts['threads'])}) takes {fmt_seconds(facts['total_seconds'])} (interval "
        f"{fmt_seconds(facts['total_seconds_low'])} - {fmt_seconds(facts['total_seconds_high'])}).",
        f"The profile's machine ({facts['profile']['cpu_model']}) reaches {human(facts['matmul_peak'], 'FLOP/s')} "
        f"in a matrix product and streams {human(facts['memory_bandwidth'], 'B/s')} from memory: a machine balance "
        f"of {facts['machine_balance']:.3g} FLOP/B, below which an op is memory-bound.",
    ]
    return [
        {"title": "The step", "sentences": step},
        {"title": f"The major ops: the {len(major)} largest make up {fmt_fraction(sum(o['fraction'] for o in major))} "
                  "of the step", "sentences": [_op_sentence(o) for o in major]},
        {"title": "FLOPs and bytes against time, by kind", "sentences": _kind_sentences(facts["kinds"])},
        {"title": "The slides' ratio: matrix product against phi(pad(Z^m))", "sentences": _ratio_sentences(facts)},
        {"title": f"The other implementation: {facts['other_impl']['impl']}", "sentences": _impl_sentences(facts)},
        {"title": "The mini-batch size I", "sentences": _batch_sentences(facts["batches"])},
    ]


#: a number and its unit, kept on one line when wrapping
_QUANTITY_UNIT = re.compile(r"(\d) (%|pp|[kMGT]?(?:FLOP/s|FLOP/B|FLOP|B/s|B)|[KMG]iB|ms|us|s)(?=[\s,.;:)]|$)")


def render_text(facts: dict, width: int = 100) -> str:
    """The sections as wrapped text, one bullet per sentence."""
    lines = [f"Where the time of an SG step of {facts['arch']} goes (predicted)"]
    for section in facts["sections"]:
        lines += ["", section["title"]]
        for sentence in section["sentences"]:
            glued = _QUANTITY_UNIT.sub("\\1\u00a0\\2", sentence)  # textwrap does not break at U+00A0
            lines += [line.replace("\u00a0", " ") for line in
                      textwrap.wrap(glued, width, initial_indent="  - ", subsequent_indent="    ",
                                    break_on_hyphens=False)]
    return "\n".join(lines) + "\n"
