"""Explain a predicted SG step from its numbers (the slides' analysis): the facts.

`explain` gathers them: the major ops, each one's arithmetic intensity against the profile's
machine balance and the rate it reaches; FLOP and byte shares against time shares by op kind;
the slides' symbolic ratio of W^m phi(pad(Z^m)) to phi(pad(Z^m)) per layer; what the other
implementation would change; how the shares move with the mini-batch size; with P data-parallel
workers, a worker's compute against its allreduces and the mini-batch below which the step is
communication-bound. costmodel.present.explain_text turns the facts into sentences. Pure: no
clock, no kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from costmodel.errors import UsageError
from costmodel.machine.backends.numpy import OUTER_PRODUCT
from costmodel.machine.predict import Prediction, PredictedRow, predict
from costmodel.machine.sweep import sweep
from costmodel.model.costs import IMPLS, OpSpec
from costmodel.present.explain_text import IMPLEMENTATION_SHARE, render_text, sentences
from costmodel.present.notation import course_name

if TYPE_CHECKING:
    from costmodel.machine.profile import Ceilings, Profile
    from costmodel.model.arch import Architecture

#: the major ops: the fewest that make up this share of the step, at most MAX_MAJOR
MAJOR_SHARE = 0.75
MAX_MAJOR = 6
BATCHES = (1, 8, 64, 512)

__all__ = ["BATCHES", "IMPLEMENTATION_SHARE", "MAJOR_SHARE", "MAX_MAJOR", "bandwidth_at", "data_parallel_facts",
           "explain", "memory_bandwidth", "render_text", "roofline"]


def bandwidth_at(ceilings: "Ceilings", nbytes: float) -> tuple[float, int]:
    """(bytes/s, working set) of the smallest probed working set that holds `nbytes`, else
    of the largest one."""
    points = sorted(ceilings.bandwidth, key=lambda p: p.working_set_bytes)
    point = next((p for p in points if p.working_set_bytes >= nbytes), points[-1])
    return point.bytes_per_second, point.working_set_bytes


def memory_bandwidth(ceilings: "Ceilings") -> float:
    """The bandwidth of the largest probed working set: the one machine_balance is made with."""
    return max(ceilings.bandwidth, key=lambda p: p.working_set_bytes).bytes_per_second


def roofline(row: PredictedRow, ceilings: "Ceilings", dtype: str, impl: str = "") -> dict:
    """One row against the roofline (Williams, Waterman and Patterson, 2009): its intensity, the
    roof it would reach (the matrix-product peak above the machine balance, the bandwidth of
    its working set's level below it), the share of each roof it attains, and the verdict:
    compute- or memory-bound when it attains at least IMPLEMENTATION_SHARE of a roof, else
    implementation-bound (far below both roofs: per-call overhead, scatter-adds, Python
    loops), with `roof_seconds`, its time at the roofline, max(FLOPs / peak, bytes / bandwidth)."""
    flops, nbytes, secs = row.flops, row.bytes, row.seconds
    intensity = flops / nbytes if nbytes else 0.0
    balance = ceilings.machine_balance[dtype]
    peak = ceilings.matmul_flops_per_second[dtype]
    bandwidth, working_set = bandwidth_at(ceilings, nbytes)
    flop_rate = flops / secs if secs > 0 else 0.0
    byte_rate = nbytes / secs if secs > 0 else 0.0
    shares = {"compute": flop_rate / peak, "memory": byte_rate / bandwidth}
    roof = "compute" if flops and intensity >= balance else "memory"
    attained = max(shares, key=shares.get)
    bound = attained if shares[attained] >= IMPLEMENTATION_SHARE else "implementation"
    facts = {"intensity": intensity, "machine_balance": balance, "roof": roof, "bound": bound,
             "peak": peak, "bandwidth": bandwidth, "ceiling_working_set_bytes": working_set,
             "flop_rate": flop_rate, "byte_rate": byte_rate, "compute_share": shares["compute"],
             "memory_share": shares["memory"], "roof_seconds": max(flops / peak, nbytes / bandwidth),
             "call_share": row.terms.get("calls", 0.0) / secs if secs > 0 else 0.0,
             "loop_share": row.terms.get("inner_loops", 0.0) / secs if secs > 0 else 0.0,
             # a product of inner dimension 1 (costmodel.machine.backends.numpy.OUTER_PRODUCT)
             "outer_product": row.row.model.ops == (OUTER_PRODUCT,)}
    if roof == "compute":
        facts.update(rate=flop_rate, unit="FLOP/s", ceiling=peak, ceiling_share=shares["compute"])
    else:
        facts.update(rate=byte_rate, unit="B/s", ceiling=bandwidth, ceiling_share=shares["memory"])
    how = row.row.how.get(impl)
    if how:
        facts["how"] = how
    return facts


def _op_facts(row: PredictedRow) -> dict:
    return {"layer": row.layer, "layer_type": row.layer_type, "op": row.name, "phase": row.phase, "kind": row.kind,
            "seconds": row.seconds, "fraction": row.fraction, "flops": row.flops, "bytes": row.bytes,
            "name": course_name(row.text, row.layer)}


def major_ops(pred: Prediction, ceilings: "Ceilings") -> list[dict]:
    """The fewest rows that make up MAJOR_SHARE of the step (at most MAX_MAJOR), largest first,
    each with its roofline facts."""
    rows = sorted(pred.rows, key=lambda r: r.seconds, reverse=True)
    chosen, share = [], 0.0
    for row in rows[:MAX_MAJOR]:
        chosen.append(_op_facts(row) | roofline(row, ceilings, pred.dtype, pred.impl))
        share += row.fraction
        if share >= MAJOR_SHARE:
            break
    return chosen


def kind_shares(pred: Prediction) -> list[dict]:
    """Per op kind, largest time first: its shares of the FLOPs, of the bytes and of the time."""
    flops = sum(r.flops for r in pred.rows)
    nbytes = sum(r.bytes for r in pred.rows)
    rows = [{"kind": g.name, "seconds": g.seconds, "time_share": g.fraction,
             "flop_share": g.flops / flops if flops else 0.0,
             "byte_share": g.bytes / nbytes if nbytes else 0.0, "flops": g.flops}
            for g in pred.by("kind")]
    return sorted(rows, key=lambda g: g["seconds"], reverse=True)


#: the slides' ratio, forward and backward: (numerator op, its quantity, denominator op, its quantity)
RATIOS = {"forward": ("conv_matmul", "flops", "phi", "elements"),
          "backward": ("conv_grad_input", "flops", "phi_grad", "flops")}


def _quantity(op: str, impl: str, what: str, grouped: bool = False):
    from costmodel.model.ops import record
    from costmodel.model.symbolic import expression, symbolic_cost

    rec, spec = record("conv", op), OpSpec("conv", impl, grouped=grouped)
    return expression(rec, spec, "flops") if what == "flops" else symbolic_cost(rec, spec).writes[0].size


def symbolic_ratios(arch: "Architecture", pred: Prediction, impl: str) -> dict:
    """The slides' "d^m times": per phase, the SymPy ratio of the matrix product's FLOPs to
    the work of phi(pad(Z)) (its elements forward, its adds backward), its leading order, and
    per conv layer its value beside the ratio of the two ops' predicted times."""
    import sympy as sp

    from costmodel.model.step import layer_values
    from costmodel.model.symbols import SIZES, big_o, to_text

    seconds = {(r.layer, r.name): r.seconds for r in pred.rows}
    conv = [sz for sz in arch.sizes() if sz.kind == "conv"]
    values = {sz.m: {getattr(SIZES, k): v for k, v in layer_values(arch, sz).items()} for sz in conv}
    grouped = {sz.m: sz.g > 1 for sz in conv}
    out = {}
    for phase, (num_op, num_q, den_op, den_q) in RATIOS.items():
        # a grouped layer's product does d^m/g^m of the work per element of phi: its own ratio
        ratios = {g: sp.simplify(_quantity(num_op, impl, num_q, g) / _quantity(den_op, impl, den_q, g))
                  for g in (False, True)}
        num, den = _quantity(num_op, impl, num_q), _quantity(den_op, impl, den_q)
        ratio = ratios[False]
        layers = [{"layer": m, "value": int(ratios[grouped[m]].xreplace(vals)),
                   "time_ratio": seconds[(m, num_op)] / seconds[(m, den_op)]}
                  for m, vals in sorted(values.items()) if (m, den_op) in seconds and seconds[(m, den_op)] > 0]
        out[phase] = {"numerator_op": num_op, "numerator": num_q, "denominator_op": den_op, "denominator": den_q,
                      "ratio": to_text(ratio), "order": to_text(sp.simplify(big_o(num) / big_o(den))),
                      "layers": layers}
        if any(grouped.values()):  # W^m has d^m/g^m columns per filter: the ratio over g^m
            out[phase]["grouped_layers"] = [m for m, g in sorted(grouped.items()) if g]
    return out


def call_seconds(pred: Prediction) -> float:
    """The step's per-call overheads: the sum over its rows of their models' "calls" term."""
    return sum(r.terms.get("calls", 0.0) for r in pred.rows)


def other_impl(arch: "Architecture", profile: "Profile", pred: Prediction) -> dict:
    """The step predicted with the other implementation of the index-heavy ops, if the profile
    has it; else the command that calibrates it."""
    from costmodel.machine.profile import calibration_hint

    impl, threads = pred.impl, pred.threads
    other = next(i for i in IMPLS if i != impl)
    if not any(e.key == (arch.dtype, other, threads, "numpy") for e in profile.entries):
        return {"impl": other, "available": False, "command": calibration_hint(arch.dtype, other, threads)}
    alt = predict(arch, profile, impl=other, threads=threads)
    before = {g["kind"]: g["time_share"] for g in kind_shares(pred)}
    after = {g["kind"]: g["time_share"] for g in kind_shares(alt)}
    changes = [_op_facts(a) | {"seconds_before": b.seconds, "seconds_after": a.seconds}
               for b, a in zip(pred.rows, alt.rows, strict=True)]
    changes.sort(key=lambda c: abs(c["seconds_after"] - c["seconds_before"]), reverse=True)
    return {"impl": other, "available": True, "total_seconds": alt.total_seconds,
            "change": alt.total_seconds / pred.total_seconds - 1,
            "kinds": [{"kind": k, "before": before[k], "after": after.get(k, 0.0)} for k in before],
            "largest_changes": changes[:3]}


def batch_shares(arch: "Architecture", profile: "Profile", impl: str, threads: int, calls: float,
                 batches=BATCHES) -> dict:
    """The step predicted at several mini-batch sizes: its time, time per instance, the share
    of its per-call overheads (`calls` seconds, the same at every I) and the time share of
    every op kind; per kind, how its share moves."""
    points = []
    for value, pred in sweep(arch, profile, "batch", list(batches), impl=impl, threads=threads):
        total = pred.total_seconds
        points.append({"batch": value, "total_seconds": total, "seconds_per_instance": total / value,
                       "call_share": calls / total, "shares": {g.name: g.fraction for g in pred.by("kind")}})
    first, last = points[0]["shares"], points[-1]["shares"]
    kinds = [{"kind": k, "first": first[k], "last": last.get(k, 0.0), "change_pp": 100 * (last.get(k, 0.0) - first[k])}
             for k in first]
    kinds.sort(key=lambda k: k["change_pp"], reverse=True)
    return {"call_seconds": calls, "points": points, "kinds": kinds}


def data_parallel_facts(arch: "Architecture", profile: "Profile", setting, one_worker: Prediction,
                        max_batch: int = 1 << 20) -> dict:
    """The data-parallel step of `arch` on `setting` (costmodel.machine.backends.parallel.Setting):
    one worker's compute by phase against its allreduces (their latency and bandwidth terms), the
    composition, speedup and efficiency against `one_worker` (the single-machine prediction on the
    whole I), whether the step is communication-bound (the allreduces take at least the compute:
    no overlap can hide them), and the mini-batch below which it is
    (costmodel.machine.parallel.communication_bound_batch, searched up to `max_batch`)."""
    from costmodel.machine.backends.parallel import predict_data_parallel
    from costmodel.machine.parallel import communication_bound_batch

    pred = predict_data_parallel(arch, profile, setting, impl=one_worker.impl, threads=one_worker.threads,
                                 backend=one_worker.backend, one_worker=one_worker)
    dp = pred.data_parallel
    phases = {ph: sum(r.seconds for r in pred.rows if r.phase == ph) for ph in ("forward", "backward", "update")}
    P = dp.workers

    def compute(n: int) -> float:
        return predict(arch.with_batch(n), profile, impl=one_worker.impl, threads=one_worker.threads,
                       backend=one_worker.backend).total_seconds

    bound = communication_bound_batch(compute, dp.communication_seconds, P, max_batch) if dp.collectives else None
    link = dp.link
    return {"workers": P, "batch": arch.batch, "worker_batch": dp.worker_batch, "composition": dp.composition,
            "backend": pred.backend,
            "link": {"name": link.name, "source": link.source, "alpha_seconds": link.alpha_seconds,
                     "beta_seconds_per_byte": link.beta_seconds_per_byte, "facts": link.facts()},
            "compute_seconds": dp.compute_seconds, "phases": phases,
            "communication_seconds": dp.communication_seconds,
            "exposed_communication_seconds": dp.exposed_communication_seconds,
            "hidden_communication_seconds": dp.hidden_communication_seconds,
            "latency_seconds": dp.latency_seconds, "bandwidth_seconds": dp.bandwidth_seconds,
            "collectives": dp.collectives,
            "messages": sum(len(s.collective.messages) for s in dp.schedule),
            "gradient_bytes": dp.gradient_bytes, "step_seconds": dp.step_seconds,
            "one_worker_seconds": dp.one_worker_seconds, "speedup": dp.speedup, "efficiency": dp.efficiency,
            "communication_bound": dp.communication_bound, "communication_bound_batch": bound,
            "compute_at_bound_seconds": compute(bound // P) if bound else None, "max_batch": max_batch}


def explain(arch: "Architecture", profile: "Profile", *, impl: str = "index", threads: int | None = None,
            batch: int | None = None, batches=BATCHES, provenance=None, data_parallel=None) -> dict:
    """The facts of a predicted step and the sentences that explain it (`sections`);
    `provenance` (costmodel.machine.resolve) is carried in the facts' "profile". With
    `data_parallel` (costmodel.machine.backends.parallel.Setting) also the step on its P workers
    (data_parallel_facts) and a section on it."""
    arch = arch.with_batch(batch)
    if data_parallel is not None:
        from costmodel.machine.backends.parallel import worker_batch

        worker_batch(arch.batch, data_parallel.workers)  # refused before anything is predicted
    pred = predict(arch, profile, impl=impl, threads=threads, provenance=provenance)
    ceilings = profile.ceilings
    if arch.dtype not in ceilings.machine_balance or arch.dtype not in ceilings.matmul_flops_per_second:
        raise UsageError(f"the profile's ceilings have no {arch.dtype} peak: run "
                             f"`costmodel calibrate --dtype {arch.dtype}` again")
    facts = {
        "arch": arch.name, "batch": arch.batch, "dtype": arch.dtype, "impl": impl, "threads": pred.threads,
        "profile": dict(pred.profile_info), "total_seconds": pred.total_seconds,
        "total_seconds_low": pred.total_seconds_low, "total_seconds_high": pred.total_seconds_high,
        "matmul_peak": ceilings.matmul_flops_per_second[arch.dtype],
        "memory_bandwidth": memory_bandwidth(ceilings),
        "machine_balance": ceilings.machine_balance[arch.dtype],
        "conv_layers": arch.n_conv,
        "major_ops": major_ops(pred, ceilings),
        "kinds": kind_shares(pred),
        "ratios": symbolic_ratios(arch, pred, impl),
        "other_impl": other_impl(arch, profile, pred),
        "batches": batch_shares(arch, profile, impl, pred.threads, call_seconds(pred), batches),
    }
    if data_parallel is not None:
        facts["data_parallel"] = data_parallel_facts(arch, profile, data_parallel, pred)
    facts["sections"] = sentences(facts)
    return facts
