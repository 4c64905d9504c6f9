"""Results as plain data, at the edge: the JSON objects of DESIGN.md ("Outputs") and the rows
of the tables and CSV, built from the typed values (StepCosts, Prediction) and nowhere else.
Column names carry units (seconds, bytes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from costmodel.model.step import conventions
from costmodel.units import fmt_seconds

if TYPE_CHECKING:
    from costmodel.machine.predict import GroupTotal, Prediction, PredictedRow
    from costmodel.model.step import StepCosts

COST_COLUMNS = ("flops", "bytes_read", "bytes_written", "bytes", "intensity", "memory_kept_bytes")


def _costs(flops: int, read: int, written: int, kept: int) -> dict:
    total = read + written
    return {"flops": flops, "bytes_read": read, "bytes_written": written, "bytes": total,
            "intensity": flops / total if total else 0.0, "memory_kept_bytes": kept}


def cost_rows(costs: "StepCosts") -> list[dict]:
    """One dict per op: layer, layer_type, op, phase and the COST_COLUMNS."""
    return [{"layer": ref.layer, "layer_type": ref.layer_type, "op": ref.op, "phase": ref.phase,
             **_costs(int(costs.flops[i]), int(costs.bytes_read[i]), int(costs.bytes_written[i]),
                      int(costs.memory_kept[i]))}
            for i, ref in enumerate(costs.ops)]


def costs_report(costs: "StepCosts") -> dict:
    """The per-op costs as DESIGN.md's JSON object (seconds and fraction null), with totals by
    phase, by layer and of the step."""
    arch = costs.arch
    layer = np.array([ref.layer for ref in costs.ops])
    phase = np.array([ref.phase for ref in costs.ops])
    totals = {
        "by_phase": {ph: costs.sums(phase == ph) for ph in dict.fromkeys(phase.tolist())},
        "by_layer": {str(m): costs.sums(layer == m) for m in sorted(set(layer.tolist()))},
        "total": costs.sums(),
    }
    return {"arch": arch.name, "batch": arch.batch, "dtype": arch.dtype, "impl": costs.impl, **conventions(),
            "ops": [{**row, "seconds": None, "fraction": None} for row in cost_rows(costs)], "totals": totals}


def interval_text(low: float, high: float) -> str:
    return f"{fmt_seconds(low)} - {fmt_seconds(high)}"


def predicted_row(r: "PredictedRow") -> dict:
    """One row of a prediction: its key, costs, the backend's extra columns, seconds, fraction,
    kind, interval and the CV error of its model."""
    row = r.row
    return {"layer": row.layer, "layer_type": row.layer_type, "op": row.name, "phase": row.phase,
            **_costs(row.flops, row.bytes_read, row.bytes_written, row.memory_kept), **row.extra,
            "seconds": r.seconds, "fraction": r.fraction, "kind": row.kind, "seconds_low": r.seconds_low,
            "seconds_high": r.seconds_high, "cv_error": r.cv_error, "interval": interval_text(r.seconds_low,
                                                                                            r.seconds_high)}


def group_row(g: "GroupTotal") -> dict:
    return {g.by: g.name, "ops": g.ops, "seconds": g.seconds, "flops": g.flops, "bytes": g.bytes,
            "seconds_low": g.seconds_low, "seconds_high": g.seconds_high, "fraction": g.fraction,
            "interval": interval_text(g.seconds_low, g.seconds_high)}


def prediction_rows(pred: "Prediction", by: str = "op") -> list[dict]:
    return [predicted_row(r) for r in pred.rows] if by == "op" else [group_row(g) for g in pred.by(by)]


#: the step-level numbers of a data-parallel prediction, in the order of its JSON
DATA_PARALLEL_FIELDS = ("workers", "worker_batch", "composition", "compute_seconds", "communication_seconds",
                        "exposed_communication_seconds", "hidden_communication_seconds", "one_worker_seconds",
                        "speedup", "efficiency", "communication_bound", "gradient_bytes", "link")


def data_parallel_fields(pred: "Prediction") -> dict:
    """The step-level numbers of a data-parallel prediction (costmodel.machine.backends.parallel;
    {} for a single-machine one): DATA_PARALLEL_FIELDS, the link as {name, source, alpha_seconds,
    beta_seconds_per_byte}, and what the rows' fractions mean."""
    dp = pred.data_parallel
    if dp is None:
        return {}
    link = dp.link
    fractions = ("each row's seconds over the step; they add up to 1" if dp.composition == "sum" else
                 "each row's seconds over the step; the communication the backward hides is counted in the "
                 "compute rows too, so they add up to 1 + hidden / step")
    return {"workers": dp.workers, "worker_batch": dp.worker_batch, "composition": dp.composition,
            "compute_seconds": dp.compute_seconds, "communication_seconds": dp.communication_seconds,
            "exposed_communication_seconds": dp.exposed_communication_seconds,
            "hidden_communication_seconds": dp.hidden_communication_seconds,
            "one_worker_seconds": dp.one_worker_seconds, "speedup": dp.speedup, "efficiency": dp.efficiency,
            "communication_bound": dp.communication_bound, "gradient_bytes": dp.gradient_bytes,
            "link": {"name": link.name, "source": link.source, "alpha_seconds": link.alpha_seconds,
                     "beta_seconds_per_byte": link.beta_seconds_per_byte},
            "fractions": fractions}


def prediction_report(pred: "Prediction", by: str = "op") -> dict:
    """The prediction as DESIGN.md's JSON object: per row (by="op") under "ops", else the groups
    under "groups" with "by"; a data-parallel one also has the step fields of
    data_parallel_fields (its rows are one worker's, `batch` the whole mini-batch I)."""
    head = {"arch": pred.arch.name, "batch": pred.batch, "dtype": pred.dtype, "threads": pred.threads,
            "impl": pred.impl, "backend": pred.backend, "total_seconds": pred.total_seconds,
            "total_seconds_low": pred.total_seconds_low, "total_seconds_high": pred.total_seconds_high,
            "interval": pred.interval, **data_parallel_fields(pred), "profile": dict(pred.profile_info),
            **conventions()}
    if by == "op":
        return {**head, "ops": prediction_rows(pred)}
    return {**head, "by": by, "groups": prediction_rows(pred, by)}


def group_columns(by: str) -> list[str]:
    """The columns that name a group of rows in a sweep's rows."""
    return ["layer", "layer_type", "op", "phase", "kind"] if by == "op" else [by, "ops"]


def sweep_report(arch, name: str, points: list, by: str, impl: str) -> dict:
    """A sweep (costmodel.machine.sweep.sweep's (value, Prediction) pairs) as a JSON object:
    per value (a point) the step's seconds and its rows grouped `by` op, layer, phase or kind;
    a row by op also has its `name` in the course's notation."""
    from costmodel.machine.sweep import symbol
    from costmodel.present.notation import course_name

    out = []
    for value, pred in points:
        if by == "op":
            groups = [predicted_row(r) | {"name": course_name(r.row.text, r.row.layer), "mathtext": r.row.mathtext}
                      for r in pred.rows]
        else:
            groups = prediction_rows(pred, by)
        dp = {k: v for k, v in data_parallel_fields(pred).items() if k not in ("link", "fractions")}
        out.append({"value": value, "batch": pred.batch, "threads": pred.threads,
                    "total_seconds": pred.total_seconds, "total_seconds_low": pred.total_seconds_low,
                    "total_seconds_high": pred.total_seconds_high, **dp, "groups": groups})
    first = data_parallel_fields(points[0][1])
    parallel = {"data_parallel": {"composition": first["composition"], "link": first["link"],
                                  "fractions": first["fractions"]}} if first else {}
    return {"arch": arch.name, "batch": arch.batch, "dtype": arch.dtype, "impl": impl, "threads": out[0]["threads"],
            "vary": name, "symbol": symbol(name), "by": by, **parallel, "values": [v for v, _ in points],
            "points": out}


#: the step columns of a data-parallel sweep's long rows
DATA_PARALLEL_COLUMNS = ("workers", "compute_seconds", "communication_seconds", "exposed_communication_seconds",
                         "speedup", "efficiency")


def long_columns(result: dict) -> list[str]:
    """The columns of long_rows(result)."""
    columns = [result["vary"], *group_columns(result["by"]), "seconds", "seconds_low", "seconds_high", "fraction",
               "flops", "bytes", "step_seconds"]
    if "data_parallel" in result:
        columns += [c for c in DATA_PARALLEL_COLUMNS if c != result["vary"]]
    return columns


def long_rows(result: dict) -> list[dict]:
    """A sweep report as one row per (value, group): the value, the group's columns, its
    seconds, fraction, FLOPs and bytes, and the step's seconds (and, data-parallel, the step's
    DATA_PARALLEL_COLUMNS)."""
    name, names = result["vary"], group_columns(result["by"])
    step = [c for c in DATA_PARALLEL_COLUMNS if c != name] if "data_parallel" in result else []
    return [{name: point["value"], **{c: g[c] for c in names},
             **{c: g[c] for c in ("seconds", "seconds_low", "seconds_high", "fraction", "flops", "bytes")},
             "step_seconds": point["total_seconds"], **{c: point[c] for c in step}}
            for point in result["points"] for g in point["groups"]]
