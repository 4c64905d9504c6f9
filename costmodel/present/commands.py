"""The analytical commands (costs, and later predict, latex ...): load, compute, render.

Pure: no clock and no kernel; cli.py calls these and prints what they return.
"""

from __future__ import annotations

from pathlib import Path

from costmodel.model.arch import load_arch
from costmodel.present.report import fmt_fraction, fmt_seconds, human, render, render_table, to_csv, to_json

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


def costs_command(arch_path: Path, *, batch, impl, fmt, symbolic=False) -> str:
    from costmodel.model.evaluate import costs_report, symbolic_report

    arch = load_arch(arch_path).with_batch(batch)
    if symbolic:
        return _symbolic(symbolic_report(arch, impl), fmt)
    report = costs_report(arch, impl, None)
    if fmt != "table":
        return render(report, fmt, COSTS_COLUMNS, "", csv_columns=COSTS_CSV)
    grand = report["totals"]["total"]
    share_cols = [("", "group", str), ("FLOPs", "flops", human), ("bytes", "bytes", lambda v: human(v, "B")),
                  ("FLOP share", "flop_share", fmt_fraction), ("byte share", "byte_share", fmt_fraction),
                  ("kept", "memory_kept_bytes", lambda v: human(v, "B"))]
    by_phase = _share_rows(report["totals"]["by_phase"], "group", grand)
    by_layer = _share_rows({f"layer {k}": v for k, v in report["totals"]["by_layer"].items()}, "group", grand)
    total = _share_rows({"step": grand}, "group", grand)
    return "".join([
        render_table(f"Costs of one SG step: {arch.name} (batch I={arch.batch}, {arch.dtype}, impl={impl})",
                     COSTS_COLUMNS, report["ops"]),
        "\n",
        render_table("Totals", share_cols, by_phase + by_layer + total,
                     [report["flop_convention"], report["byte_convention"], report["memory_convention"]]),
    ])


def _symbolic(report: dict, fmt: str) -> str:
    """One row per distinct op formula (layer kind, op, phase), in the course's notation."""
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
    legend = "symbols: " + ", ".join(report["symbols"])
    return render_table(f"Symbolic costs: {report['arch']} ({report['dtype']}, impl={report['impl']})",
                        cols, rows, [legend, report["flop_convention"], report["byte_convention"]])


PREDICT_COLUMNS = [
    ("layer", "layer", str), ("type", "layer_type", str), ("op", "op", str), ("phase", "phase", str),
    ("time", "seconds", fmt_seconds), ("interval", "interval", str), ("fraction", "fraction", fmt_fraction),
    ("FLOPs", "flops", human), ("bytes", "bytes", lambda v: human(v, "B")),
]
PREDICT_CSV = ["layer", "layer_type", "op", "phase", "kind", "seconds", "seconds_low", "seconds_high",
               "fraction", "flops", "bytes"]


def _interval(row: dict) -> str:
    return f"{fmt_seconds(row['seconds_low'])} - {fmt_seconds(row['seconds_high'])}"


def predict_command(arch_path: Path, *, profile, batch, threads, impl, fmt, by="op", plot=None,
                    backend="numpy") -> str:
    from costmodel.machine.predict import group, predict
    from costmodel.machine.profile import find_profile

    arch = load_arch(arch_path).with_batch(batch)
    prof = find_profile(profile)
    result = predict(arch, prof, impl=impl, threads=threads, backend=backend)
    impl = result["impl"]
    if plot:
        from costmodel.present.plots import plot_predict

        plot_predict(result, prof.ceilings, plot)
        _plot_written(plot)
    rows = group(result, by)
    for row in rows:
        row["interval"] = _interval(row)
    if by != "op":
        result = {k: v for k, v in result.items() if k != "ops"} | {"by": by, "groups": rows}
        columns = [(by, by, str), ("ops", "ops", str), ("time", "seconds", fmt_seconds),
                   ("interval", "interval", str), ("fraction", "fraction", fmt_fraction),
                   ("FLOPs", "flops", human), ("bytes", "bytes", lambda v: human(v, "B"))]
        csv_columns = [by, "ops", "seconds", "seconds_low", "seconds_high", "fraction", "flops", "bytes"]
    else:
        columns, csv_columns = PREDICT_COLUMNS, PREDICT_CSV
    if fmt == "json":
        return to_json(result)
    if fmt == "csv":
        return to_csv(rows, csv_columns)
    footer = [
        f"step: {fmt_seconds(result['total_seconds'])} predicted "
        f"(interval {fmt_seconds(result['total_seconds_low'])} - {fmt_seconds(result['total_seconds_high'])}, "
        "5-95 % of cross-validated measured/predicted, summed over the ops)",
        f"{arch.name}: batch I={arch.batch}, {arch.dtype}, "
        + ("impl=" + impl if backend == "numpy" else "PyTorch op groups (docs/torch-mapping.md)")
        + f", threads={result['threads']}; "
        f"profile made on {result['profile']['cpu_model']} ({result['profile']['created'][:10]})",
    ]
    title = f"Predicted SG step{' in PyTorch' if backend == 'torch' else ''}: {arch.name}"
    return render_table(title, columns, rows, footer)


def latex_command(arch_path: Path, *, output=None, standalone=False, profile=None, measured_fractions=None,
                  impl="index", batch=None, threads=None) -> str:
    """The LaTeX tables of the arch's step (costmodel.present.latex): written atomically to `output`
    (then "" is returned), else returned. Without `profile`, the user's or the shipped one is
    used; if neither exists, the tables have no time columns and say so.
    `measured_fractions`: (layer, op, phase) -> measured fraction of the step."""
    from costmodel.errors import UsageError
    from costmodel.present.latex import latex_document
    from costmodel.machine.profile import default_profile_path, embedded_profile_path, find_profile
    from costmodel.present.report import atomic_write

    arch = load_arch(arch_path).with_batch(batch)
    found = None
    if profile is not None or default_profile_path().exists() or embedded_profile_path().exists():
        found = find_profile(profile)
    text = latex_document(arch, impl=impl, profile=found, threads=threads, measured=measured_fractions,
                          standalone=standalone)
    if output is None:
        return text
    try:
        atomic_write(output, text)
    except OSError as exc:
        raise UsageError(f"{output}: cannot write: {exc.strerror or exc}") from None
    return ""


def _plot_written(path) -> None:
    import sys

    print(f"plot written to {path}", file=sys.stderr)


def explain_command(arch_path: Path, *, profile, batch, threads, impl, fmt) -> str:
    from costmodel.present.explain import explain, render_text
    from costmodel.machine.profile import find_profile

    facts = explain(load_arch(arch_path), find_profile(profile), impl=impl, threads=threads, batch=batch)
    return to_json(facts) if fmt == "json" else render_text(facts)


def _sweep_table(result: dict) -> str:
    """Groups as rows, the swept values as columns: the step's time, then each group's fraction."""
    from costmodel.present.explain import course_name
    from costmodel.machine.sweep import group_columns

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
            names = ({"layer": g["layer"], "op": g["op"], "name": course_name(g["op"], g["layer"])} if by == "op"
                     else {"group": f"layer {g[by]}" if by == "layer" else str(g[by])})
            rows.setdefault(key, names)[f"v{i}"] = fmt_fraction(g["fraction"])
    for row in rows.values():
        for i in range(len(points)):
            row.setdefault(f"v{i}", "-")
    footer = [f"the predicted step's time, then each {by}'s fraction of it, at every value of {result['vary']}",
              f"{result['arch']}: {result['dtype']}, impl={result['impl']}, threads={result['threads']}"]
    return render_table(f"Sweep of {result['vary']} ({result['symbol']}): {result['arch']}", columns,
                        list(rows.values()), footer)


def sweep_command(arch_path: Path, *, vary, profile, batch, threads, impl, by, fmt, plot=None) -> str:
    from costmodel.machine.profile import find_profile
    from costmodel.machine.sweep import group_columns, long_rows, parse_vary, sweep

    name, values = parse_vary(vary)
    if plot:
        from costmodel.present.plots import plot_format

        plot_format(plot)  # a bad suffix fails before any prediction
    arch = load_arch(arch_path).with_batch(batch)
    result = sweep(arch, find_profile(profile), name, values, impl=impl, threads=threads, by=by)
    if plot:
        from costmodel.present.plots import plot_sweep

        plot_sweep(result, plot)
        _plot_written(plot)
    if fmt == "json":
        return to_json(result)
    if fmt == "csv":
        return to_csv(long_rows(result), [name, *group_columns(by), "seconds", "seconds_low", "seconds_high",
                                          "fraction", "flops", "bytes", "step_seconds"])
    return _sweep_table(result)
