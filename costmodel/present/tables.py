"""The outputs of the analytical commands (costs, predict, sweep, explain) as a table, JSON or
CSV, from their typed results. Pure: no clock and no kernel; cli.py calls these and prints
what they return."""

from __future__ import annotations

from typing import TYPE_CHECKING

from costmodel.model.step import conventions
from costmodel.present.data import (costs_report, group_columns, long_columns, long_rows, prediction_report,
                                    prediction_rows)
from costmodel.present.report import render, render_table, to_csv, to_json
from costmodel.units import fmt_fraction, fmt_seconds, human

if TYPE_CHECKING:
    from costmodel.machine.predict import Prediction
    from costmodel.model.step import StepCosts

COSTS_COLUMNS = [
    ("layer", "layer", str), ("type", "layer_type", str), ("op", "op", str), ("phase", "phase", str),
    ("FLOPs", "flops", human), ("read", "bytes_read", lambda v: human(v, "B")),
    ("written", "bytes_written", lambda v: human(v, "B")), ("bytes", "bytes", lambda v: human(v, "B")),
    ("FLOP/byte", "intensity", lambda v: f"{v:.2f}"), ("kept", "memory_kept_bytes", lambda v: human(v, "B")),
]
COSTS_CSV = ["layer", "layer_type", "op", "phase", "flops", "bytes_read", "bytes_written", "bytes",
             "intensity", "memory_kept_bytes"]


def _share_rows(totals: dict, label: str, grand: dict) -> list[dict]:
    return [{label: str(key), "flops": t["flops"], "bytes": t["bytes"],
             "flop_share": t["flops"] / grand["flops"] if grand["flops"] else 0.0,
             "byte_share": t["bytes"] / grand["bytes"] if grand["bytes"] else 0.0,
             "memory_kept_bytes": t["memory_kept_bytes"]} for key, t in totals.items()]


def costs_output(costs: "StepCosts", fmt: str) -> str:
    """`costmodel costs`: every op's FLOPs, bytes, intensity and memory kept, with totals."""
    report = costs_report(costs)
    if fmt != "table":
        return render(report, fmt, COSTS_COLUMNS, "", csv_columns=COSTS_CSV)
    arch, grand = costs.arch, report["totals"]["total"]
    share_cols = [("", "group", str), ("FLOPs", "flops", human), ("bytes", "bytes", lambda v: human(v, "B")),
                  ("FLOP share", "flop_share", fmt_fraction), ("byte share", "byte_share", fmt_fraction),
                  ("kept", "memory_kept_bytes", lambda v: human(v, "B"))]
    by_phase = _share_rows(report["totals"]["by_phase"], "group", grand)
    by_layer = _share_rows({f"layer {k}": v for k, v in report["totals"]["by_layer"].items()}, "group", grand)
    total = _share_rows({"step": grand}, "group", grand)
    return "".join([
        render_table(f"Costs of one SG step: {arch.name} (batch I={arch.batch}, {arch.dtype}, impl={costs.impl})",
                     COSTS_COLUMNS, report["ops"]),
        "\n",
        render_table("Totals", share_cols, by_phase + by_layer + total,
                     [report["flop_convention"], report["byte_convention"], report["memory_convention"]]),
    ])


def symbolic_output(report: dict, fmt: str) -> str:
    """`costs --symbolic`: one row per distinct op formula (layer kind, op, phase), in the
    course's notation (report: costmodel.model.symbolic.symbolic_report)."""
    seen: dict[tuple, dict] = {}
    for op in report["ops"]:
        key = (op["layer_type"], op["op"], op["phase"], op["flops"]["text"], op["bytes"]["text"])
        if key not in seen:
            seen[key] = {
                "layer_type": op["layer_type"], "op": op["op"], "phase": op["phase"],
                "layers": [op["layer"]],
                "flops": op["flops"]["text"], "flops_order": op["flops"]["order_text"],
                "bytes": op["bytes"]["text"], "bytes_order": op["bytes"]["order_text"],
                "memory_kept": op["memory_kept"]["text"],
                "flops_latex": op["flops"]["latex"], "bytes_latex": op["bytes"]["latex"],
            }
        else:
            seen[key]["layers"].append(op["layer"])
    rows = list(seen.values())
    if fmt == "json":
        return to_json({k: v for k, v in report.items() if k != "ops"} | {"ops": rows})
    for row in rows:
        row["layers"] = " ".join(map(str, row["layers"]))
    columns = ["layers", "layer_type", "op", "phase", "flops", "flops_order", "bytes", "bytes_order", "memory_kept"]
    if fmt == "csv":
        return to_csv(rows, columns)
    cols = [("m", "layers", str), ("type", "layer_type", str), ("op", "op", str), ("phase", "phase", str),
            ("FLOPs", "flops", str), ("leading order", "flops_order", str), ("bytes", "bytes", str),
            ("leading order ", "bytes_order", str)]
    used = {name for op in report["ops"] for name in op["symbols"]}
    legend = "symbols: " + ", ".join(name for name in report["symbols"] if name in used)
    return render_table(f"Symbolic costs: {report['arch']} ({report['dtype']}, impl={report['impl']})",
                        cols, rows, [legend, report["flop_convention"], report["byte_convention"]])


PREDICT_COLUMNS = [
    ("layer", "layer", str), ("type", "layer_type", str), ("op", "op", str), ("phase", "phase", str),
    ("time", "seconds", fmt_seconds), ("interval", "interval", str), ("fraction", "fraction", fmt_fraction),
    ("FLOPs", "flops", human), ("bytes", "bytes", lambda v: human(v, "B")),
]
PREDICT_CSV = ["layer", "layer_type", "op", "phase", "kind", "seconds", "seconds_low", "seconds_high",
               "fraction", "flops", "bytes"]


def prediction_output(pred: "Prediction", fmt: str, by: str = "op", setting: str = "") -> str:
    """`costmodel predict`: per row (or per layer, phase or kind) the predicted seconds,
    interval, fraction, FLOPs and bytes; `setting` describes the backend's rows."""
    if fmt == "json":
        return to_json(prediction_report(pred, by))
    rows = prediction_rows(pred, by)
    if by != "op":
        columns = [(by, by, str), ("ops", "ops", str), ("time", "seconds", fmt_seconds),
                   ("interval", "interval", str), ("fraction", "fraction", fmt_fraction),
                   ("FLOPs", "flops", human), ("bytes", "bytes", lambda v: human(v, "B"))]
        csv_columns = [by, "ops", "seconds", "seconds_low", "seconds_high", "fraction", "flops", "bytes"]
    else:
        columns, csv_columns = PREDICT_COLUMNS, PREDICT_CSV
    if fmt == "csv":
        return to_csv(rows, csv_columns)
    arch = pred.arch
    footer = [
        f"step: {fmt_seconds(pred.total_seconds)} predicted "
        f"(interval {fmt_seconds(pred.total_seconds_low)} - {fmt_seconds(pred.total_seconds_high)}: {pred.interval})",
        f"{arch.name}: batch I={arch.batch}, {arch.dtype}, {setting}, threads={pred.threads}; "
        f"profile made on {pred.profile_info['cpu_model']} ({str(pred.profile_info['created'])[:10]})",
    ]
    title = f"Predicted SG step{' in PyTorch' if pred.backend == 'torch' else ''}: {arch.name}"
    if pred.data_parallel is not None:
        footer = data_parallel_footer(pred) + footer
        title = (f"Predicted data-parallel SG step{' in PyTorch' if pred.backend == 'torch' else ''}, one worker "
                 f"of P={pred.data_parallel.workers}: {arch.name}")
    return render_table(title, columns, rows, footer)


#: the width the data-parallel footer keeps its lines to: a terminal of 80 columns breaks none of them
FOOTER_WIDTH = 80


def clause_lines(clauses: list[str], width: int = FOOTER_WIDTH) -> list[str]:
    """One statement of a footer, given as its clauses (each with its own punctuation), as lines of
    at most `width` characters: broken only between clauses, never inside one (a formula stays
    whole; a clause longer than `width` is a line of its own); the lines after the first are
    indented by two spaces."""
    lines = [clauses[0]]
    for clause in clauses[1:]:
        if len(lines[-1]) + 1 + len(clause) <= width:
            lines[-1] += " " + clause
        else:
            lines.append("  " + clause)
    return lines


def data_parallel_footer(pred: "Prediction") -> list[str]:
    """The lines a data-parallel prediction's table adds: the split, the link, the composition,
    speedup and efficiency, each broken between its clauses (clause_lines)."""
    dp = pred.data_parallel
    P, link = dp.workers, dp.link
    source = "the profile's network section" if link.source == "profile" else "given"
    if dp.collectives:
        split = [f"data-parallel: P={P} workers of I/P={dp.worker_batch} instances each (I={pred.batch});",
                 "the rows are one worker's: its compute at I/P,",
                 (f"then {dp.collectives} allreduce{'s' if dp.collectives != 1 else ''} of "
                  f"{human(dp.gradient_bytes, 'B')} of gradients in all"),
                 "(ring model: 2 (P-1) alpha + 2 (P-1)/P n beta)"]
    else:
        split = [f"data-parallel: P={P} worker takes all I={pred.batch} instances and allreduces nothing:",
                 "no communication rows;", "the single-machine step"]
    statements = [split, [f"link {link.name} ({source}): {link.facts()}"]]
    if dp.composition == "sum":
        statements.append([(f"composition sum: compute {fmt_seconds(dp.compute_seconds)} + communication "
                            f"{fmt_seconds(dp.communication_seconds)} = step {fmt_seconds(dp.step_seconds)};"),
                           "the fractions add up to 1"])
    else:
        statements.append(["composition overlap:",
                           (f"compute {fmt_seconds(dp.compute_seconds)} + exposed communication "
                            f"{fmt_seconds(dp.exposed_communication_seconds)} = step {fmt_seconds(dp.step_seconds)}"),
                           (f"(the backward hides {fmt_seconds(dp.hidden_communication_seconds)} of "
                            f"{fmt_seconds(dp.communication_seconds)});"),
                           "the hidden part counts in the fractions of compute and allreduce rows alike,",
                           "so they add up to more than 1"])
    gains = f"speedup {dp.speedup:.2f}, parallel efficiency {fmt_fraction(dp.efficiency)}"
    statements.append([f"against one worker on the whole I={pred.batch} ({fmt_seconds(dp.one_worker_seconds)}):",
                       *([f"{gains};", "communication-bound: the allreduces take at least the compute"]
                         if dp.communication_bound else [gains])])
    return [line for clauses in statements for line in clause_lines(clauses)]


def _sweep_table(result: dict) -> str:
    """Groups as rows, the swept values as columns: the step's time, then each group's fraction."""
    by, points = result["by"], result["points"]
    if by == "op":
        head = [("layer", "layer", str), ("op", "op", str), ("notation", "name", str)]
    else:
        head = [(by, "group", str)]
    columns = head + [(f"{result['symbol']}={p['value']}", f"v{i}", str) for i, p in enumerate(points)]
    rows: dict = {"step": {"layer": "", "op": "step (predicted)", "name": "", "group": "step (predicted)",
                           **{f"v{i}": fmt_seconds(p["total_seconds"]) for i, p in enumerate(points)}}}
    for i, point in enumerate(points):
        for g in point["groups"]:
            key = tuple(g[c] for c in group_columns(by))
            names = ({"layer": g["layer"], "op": g["op"], "name": g["name"]} if by == "op"
                     else {"group": f"layer {g[by]}" if by == "layer" else str(g[by])})
            rows.setdefault(key, names)[f"v{i}"] = fmt_fraction(g["fraction"])
    for row in rows.values():
        for i in range(len(points)):
            row.setdefault(f"v{i}", "-")
    footer = [f"the predicted step's time, then each {by}'s fraction of it, at every value of {result['vary']}",
              f"{result['arch']}: {result['dtype']}, impl={result['impl']}, threads={result['threads']}"]
    if "data_parallel" in result:
        step_rows = {"compute_seconds": ("compute (one worker)", fmt_seconds),
                     "communication_seconds": ("communication (allreduces)", fmt_seconds),
                     "exposed_communication_seconds": ("exposed communication", fmt_seconds),
                     "speedup": ("speedup T(1)/T(P)", lambda v: f"{v:.2f}"),
                     "efficiency": ("parallel efficiency", fmt_fraction)}
        extra = {key: {"layer": "", "op": label, "name": "", "group": label,
                       **{f"v{i}": fmt(p[key]) for i, p in enumerate(points)}}
                 for key, (label, fmt) in step_rows.items()}
        rows = {"step": rows["step"], **extra, **{k: v for k, v in rows.items() if k != "step"}}
        dp = result["data_parallel"]
        footer.append(f"data-parallel: one worker's step (I/P instances each), link "
                      f"{dp['link']['name']}, composition {dp['composition']}; fractions: {dp['fractions']}")
    return render_table(f"Sweep of {result['vary']} ({result['symbol']}): {result['arch']}", columns,
                        list(rows.values()), footer)


def sweep_output(result: dict, fmt: str) -> str:
    """`costmodel sweep` (result: costmodel.present.data.sweep_report)."""
    if fmt == "json":
        return to_json(result)
    if fmt == "csv":
        return to_csv(long_rows(result), long_columns(result))
    return _sweep_table(result)


__all__ = ["conventions", "costs_output", "prediction_output", "sweep_output", "symbolic_output"]
