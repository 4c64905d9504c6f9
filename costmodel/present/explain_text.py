"""The explanation of a predicted step as sentences built from its numbers (`explain`'s text):
every claim cites a number, and every choice of wording (compute- or memory-bound, gains or
loses share) follows from comparing numbers (costmodel.present.explain gathers the facts)."""

from __future__ import annotations

import re
import textwrap

from costmodel.present.notation import course_name, kind_name, op_text
from costmodel.units import fmt_fraction, fmt_seconds, human, iec as _iec, threads_text as _threads

#: a kind whose share moves by less than this (percentage points) keeps its share
STEADY_PP = 1.0
#: an op that reaches less than this share of both roofs is bound by its implementation
#: (costmodel.present.explain.roofline)
IMPLEMENTATION_SHARE = 0.25
#: an implementation-bound op whose per-call term is at least this share of its time is
#: bound by per-call overhead
OVERHEAD_SHARE = 0.5


def label(op: dict) -> str:
    """A major op's facts as 'W^2 phi(pad(Z^2)) [conv_matmul, layer 2]'."""
    return f"{op['name']} [{op['op']}, layer {op['layer']}]"


# -- sentences -------------------------------------------------------------------------------

def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _num(x: float) -> str:
    """3 significant digits, without an exponent up to 10^6: 41.6, 1,520."""
    return f"{x:.3g}" if abs(x) < 1000 else f"{float(f'{x:.3g}'):,.0f}"


def _op_sentence(op: dict) -> str:
    """One major op against the roofline: where its roof is, what it attains of each roof, the
    verdict that follows from the numbers, and what would move it."""
    head = f"{label(op)}: {fmt_fraction(op['fraction'])} of the step ({fmt_seconds(op['seconds'])}); "
    if op["flops"]:
        side = "above" if op["intensity"] >= op["machine_balance"] else "below"
        work = (f"{human(op['flops'], 'FLOP')} over {human(op['bytes'], 'B')} = {op['intensity']:.3g} FLOP/B, "
                f"{side} the machine balance of {op['machine_balance']:.3g} FLOP/B")
    else:
        work = f"no FLOPs over {human(op['bytes'], 'B')}"
    roof = (f"the {human(op['peak'], 'FLOP/s')} matrix-product peak" if op["roof"] == "compute" else
            f"the {human(op['bandwidth'], 'B/s')} measured with a working set of "
            f"{_iec(op['ceiling_working_set_bytes'])}")
    compute = f"runs at {human(op['flop_rate'], 'FLOP/s')} ({fmt_fraction(op['compute_share'])} of the peak)"
    memory = f"moves {human(op['byte_rate'], 'B/s')} ({fmt_fraction(op['memory_share'])} of that bandwidth)" \
        if op["roof"] == "memory" else \
        f"moves {human(op['byte_rate'], 'B/s')} ({fmt_fraction(op['memory_share'])} of the bandwidth)"
    if op["bound"] == "compute":
        verdict = f"It {compute}: compute-bound; fewer FLOPs or more cores would move it"
    elif op["bound"] == "memory":
        verdict = (f"It {memory}: memory-bound; fewer bytes (fused with its neighbours, a smaller dtype) "
                   "would move it")
    else:
        cause = (f"per-call overhead is {fmt_fraction(op['call_share'])} of its time"
                 if op["call_share"] >= OVERHEAD_SHARE else
                 f"starting its inner loops is {fmt_fraction(op['loop_share'])} of its time (its ufunc calls run "
                 "one loop per row of a window offset's strided view: fewer, longer rows would move it)"
                 if op["loop_share"] >= OVERHEAD_SHARE else
                 "it is an outer product (an inner dimension of 1), which np.matmul runs in NumPy's own loop "
                 "instead of BLAS: np.multiply of its (M, 1) and (1, N) operands, broadcast, would move it" if op.get("outer_product") else
                 f"its kernel ({op['how']}) is the cost" if op.get("how") else "its kernel is the cost")
        at_roof = (f"; at the roofline it would take {fmt_seconds(op['roof_seconds'])}, "
                   f"{_num(op['seconds'] / op['roof_seconds'])} times less" if op["roof_seconds"] > 0 else "")
        first, second = (memory, compute) if op["roof"] == "memory" else (compute, memory)
        verdict = (f"It {first} and {second}: far below both roofs (under {fmt_fraction(IMPLEMENTATION_SHARE)}), "
                   f"so implementation-bound: {cause}{at_roof}")
    return f"{head}{work}, so its roof is {roof}. {verdict}."


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
        num = course_name(op_text("conv", r["numerator_op"]), "m")
        den = course_name(op_text("conv", r["denominator_op"]), "m")
        values = ", ".join(f"{x['value']} at layer {x['layer']}" for x in r["layers"])
        times = ", ".join(f"{x['time_ratio']:.3g} at layer {x['layer']}" for x in r["layers"])
        work = [x["value"] / x["time_ratio"] for x in r["layers"] if x["time_ratio"] > 0]
        if not work:
            continue
        span = _num(min(work)) if _num(min(work)) == _num(max(work)) else f"{_num(min(work))} to {_num(max(work))}"
        grouped = r.get("grouped_layers")
        where = (f", {r['ratio']}/g^m at the grouped layers {', '.join(map(str, grouped))}" if grouped else "")
        out.append(f"{_cap(_QUANTITY[r['numerator']])} of {num} over {_QUANTITY[r['denominator']]} of {den} "
                   f"= {r['ratio']} (SymPy; leading order {r['order']}{where}): {values}. Their predicted times are in "
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


def _data_parallel_sentences(d: dict) -> list[str]:
    """The data-parallel step (costmodel.present.explain.data_parallel_facts): compute against
    the allreduces, the composition, speedup and efficiency, and where it turns communication-bound."""
    P, n, I, link = d["workers"], d["worker_batch"], d["batch"], d["link"]
    where = (f"{link['name']} ({link['facts']}: the profile's network section)" if link["source"] == "profile" else
             f"the given link {link['name']} ({link['facts']})")
    if not d["collectives"]:
        return [f"With P={P} worker there is nothing to allreduce: the step is the single-machine step, "
                f"{fmt_seconds(d['step_seconds'])}."]
    ph, comm, compute = d["phases"], d["communication_seconds"], d["compute_seconds"]
    rows = "one per layer with weights" if d["backend"] == "numpy" else "one per DistributedDataParallel bucket"
    out = [f"On P={P} workers over {where}, each worker takes I/P = {n} of the "
           f"I={I} instances; its compute takes {fmt_seconds(compute)} (forward {fmt_seconds(ph['forward'])}, "
           f"backward {fmt_seconds(ph['backward'])}, update {fmt_seconds(ph['update'])})."]
    latency, bandwidth = d["latency_seconds"], d["bandwidth_seconds"]
    which = ("the latency terms dominate: fewer, larger messages would move it more than a faster link"
             if latency > bandwidth else
             "the bandwidth terms dominate: a faster link or fewer gradient bytes would move it")
    out.append(f"The {d['collectives']} allreduces ({rows}) carry {human(d['gradient_bytes'], 'B')} of gradients in "
               f"{d['messages']} messages and take {fmt_seconds(comm)} by the ring model: "
               f"{fmt_seconds(latency)} of latency (2 (P-1) alpha = {fmt_seconds(2 * (P - 1) * link['alpha_seconds'])} "
               f"per message) and {fmt_seconds(bandwidth)} of bandwidth (2 (P-1)/P n beta); {which}.")
    if d["composition"] == "sum":
        out.append(f"Composed as sum (blocking allreduces), the step takes {fmt_seconds(compute)} + "
                   f"{fmt_seconds(comm)} = {fmt_seconds(d['step_seconds'])}.")
    else:
        out.append(f"Composed as overlap, the backward ({fmt_seconds(ph['backward'])}) hides "
                   f"{fmt_seconds(d['hidden_communication_seconds'])} of the {fmt_seconds(comm)}; "
                   f"{fmt_seconds(d['exposed_communication_seconds'])} stays exposed, and the step takes "
                   f"{fmt_seconds(compute)} + {fmt_seconds(d['exposed_communication_seconds'])} = "
                   f"{fmt_seconds(d['step_seconds'])}.")
    speed = (f"One worker on the whole I={I} takes {fmt_seconds(d['one_worker_seconds'])}: a speedup of "
             f"{d['speedup']:.3g} on {P} workers, a parallel efficiency of {fmt_fraction(d['efficiency'])}")
    if d["speedup"] < 1:
        speed += ": slower than one worker"
    elif d["efficiency"] > 1:
        speed += (f" (above 1: an instance's compute is predicted cheaper at I/P={n}, "
                  f"{fmt_seconds(compute / n)}, than at I={I}, {fmt_seconds(d['one_worker_seconds'] / I)})")
    out.append(speed + ".")
    if d["communication_bound"]:
        out.append(f"The allreduces ({fmt_seconds(comm)}) take at least a worker's compute ({fmt_seconds(compute)}), "
                   f"{_num(comm / compute)} times it: the step is communication-bound, and no overlap can hide them.")
    elif comm > 0:
        out.append(f"A worker's compute ({fmt_seconds(compute)}) is {_num(compute / comm)} times the allreduces "
                   f"({fmt_seconds(comm)}): the step is compute-bound.")
    else:
        out.append(f"The allreduces take {fmt_seconds(comm)} on this link (alpha = beta = 0): the step is the compute, "
                   f"{fmt_seconds(compute)}.")
    bound, at = d["communication_bound_batch"], d["compute_at_bound_seconds"]
    fixed = (f"The allreduces' {fmt_seconds(comm)} do not depend on I (they carry the gradients, "
             f"{human(d['gradient_bytes'], 'B')}), while the compute grows with I/P")
    if bound is None:
        out.append(f"{fixed}; yet up to I={d['max_batch']} ({d['max_batch'] // P} per worker) the compute stays below "
                   "them: communication-bound at every mini-batch up to there.")
    elif bound == P:
        out.append(f"{fixed}: even one instance per worker (I={P}) takes {fmt_seconds(at)} of compute, at least "
                   "their time: compute-bound at every mini-batch.")
    else:
        here = "below" if I < bound else "at or above"
        out.append(f"{fixed}: from I={bound} ({bound // P} per worker, compute {fmt_seconds(at)}) the compute takes "
                   f"at least as long, so below I={bound} the step is communication-bound (I={I} here is {here} it).")
    return out


def _data_parallel_section(d: dict) -> dict:
    P = d["workers"]
    return {"title": f"Data-parallel SG on P={P} worker{'s' if P != 1 else ''} ({d['link']['name']})",
            "sentences": _data_parallel_sentences(d)}


def sentences(facts: dict) -> list[dict]:
    """The explanation as titled sections of sentences, each built from `facts`."""
    major = facts["major_ops"]
    step = [
        f"The predicted SG step of {facts['arch']} (I={facts['batch']}, {facts['dtype']}, impl {facts['impl']}, "
        f"{_threads(facts['threads'])}) takes {fmt_seconds(facts['total_seconds'])} (interval "
        f"{fmt_seconds(facts['total_seconds_low'])} - {fmt_seconds(facts['total_seconds_high'])}).",
        f"The profile's machine ({facts['profile']['cpu_model']}) reaches {human(facts['matmul_peak'], 'FLOP/s')} "
        f"in a matrix product and streams {human(facts['memory_bandwidth'], 'B/s')} from memory: a machine balance "
        f"of {facts['machine_balance']:.3g} FLOP/B, below which an op's roof is the bandwidth, not the peak.",
    ]
    return [
        {"title": "The step", "sentences": step},
        {"title": f"The major ops: the {len(major)} largest make up {fmt_fraction(sum(o['fraction'] for o in major))} "
                  "of the step", "sentences": [_op_sentence(o) for o in major]},
        {"title": "FLOPs and bytes against time, by kind", "sentences": _kind_sentences(facts["kinds"])},
        {"title": "The slides' ratio: matrix product against phi(pad(Z^m))", "sentences": _ratio_sentences(facts)},
        {"title": f"The other implementation: {facts['other_impl']['impl']}", "sentences": _impl_sentences(facts)},
        {"title": "The mini-batch size I", "sentences": _batch_sentences(facts["batches"])},
    ] + ([_data_parallel_section(facts["data_parallel"])] if "data_parallel" in facts else [])


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
