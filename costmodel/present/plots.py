"""Plots of a prediction, a comparison with measured steps, and a sweep (matplotlib).

matplotlib is imported on first use. Figures are drawn without pyplot (no display, no global
state; PNG through the Agg canvas) and written atomically: rendered in memory, then written to
a temporary file that is renamed over the target. The format comes from the suffix: .png or .pdf.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import TYPE_CHECKING

from costmodel.errors import UsageError
from costmodel.machine.profile import Ceilings
from costmodel.files import atomic_write
from costmodel.present.notation import course_tex
from costmodel.present.plot_panels import (KIND_COLORS, bandwidth_panel, engineering_axis, name_points,
                                             predicted_measured_panel, roofline_panel)
from costmodel.units import fmt_seconds, human

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PLOT_FORMATS = {".png": "png", ".pdf": "pdf"}
#: groups drawn one by one in stacked bars (the rest are summed as "other")
MAX_GROUPS = 9
BY_TITLES = {"op": "op", "layer": "layer", "phase": "phase", "kind": "op kind"}


def plot_format(path: str | Path) -> str:
    """'png' or 'pdf' from the file's suffix; a one-line UsageError for anything else, and for a
    place the plot could not be written to (before anything is drawn: costmodel.files.check_writable)."""
    from costmodel.files import check_writable

    suffix = Path(path).suffix.lower()
    if suffix not in PLOT_FORMATS:
        raise UsageError(f"--plot {path}: the suffix {suffix or '(none)'} is not one of "
                         f"{', '.join(PLOT_FORMATS)}")
    check_writable(path, label=f"--plot {path}")
    return PLOT_FORMATS[suffix]


def save(fig: "Figure", path: str | Path) -> None:
    """Write `fig` to `path` atomically, in the format its suffix names."""
    fmt = plot_format(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=150)
    try:
        atomic_write(path, buffer.getvalue())
    except OSError as exc:
        raise UsageError(f"--plot {path}: cannot write the plot: {exc.strerror or exc}") from None


def plain(text: object) -> str:
    """A user's string (an architecture's name, a --vary path) as matplotlib text that prints
    literally: a ``$`` would start mathtext (``$...$`` in a name breaks the figure), so it is
    escaped as ``\\$``, the one character matplotlib's mathtext parser treats specially outside math."""
    return str(text).replace("$", r"\$")


def _figure(width: float, height: float) -> "Figure":
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _setting(result: dict) -> str:
    threads = result["threads"]
    return (f"{plain(result['arch'])}: I={result['batch']}, {result['dtype']}, impl {result['impl']}, "
            f"{threads} thread{'s' if threads != 1 else ''}")


def _group_key(row: dict, by: str):
    return (row["layer"], row["op"], row["phase"]) if by == "op" else row[by]


def _shares(rows: list[dict], key: str, by: str = "kind") -> dict:
    """Each group's (`by`: op, layer, phase or kind) share of the rows' `key` (flops, bytes, seconds)."""
    total = sum(r[key] for r in rows)
    shares: dict = {}
    for r in rows:
        g = _group_key(r, by)
        shares[g] = shares.get(g, 0.0) + (r[key] / total if total else 0.0)
    return shares


def _group_label(key, by: str, mathtext: dict | None = None) -> str:
    if by == "op":
        text = (mathtext or {}).get(key)
        return f"{course_tex(text, key[0])} [{key[1]}]" if text else f"{key[1]}, layer {key[0]}"
    return f"layer {key}" if by == "layer" else str(key)


def _group_colors(bars: list[dict], by: str, mathtext: dict | None = None) -> tuple[list[dict], dict, dict]:
    """Colours and legend labels of the groups of stacked bars (each bar {group: share}): op
    kinds their own colours; otherwise the MAX_GROUPS largest groups a colour each and the
    rest summed as "other". Returns the bars (with "other" summed), colours and labels."""
    from matplotlib import colormaps

    keys = list(dict.fromkeys(k for s in bars for k in s))
    if by == "kind":
        colors = {k: KIND_COLORS.get(k, "grey") for k in list(KIND_COLORS) + [k for k in keys if k not in KIND_COLORS]
                  if k in keys}
    else:  # the largest groups get a colour each; ops are stacked largest first, the rest in order
        largest = sorted(keys, key=lambda k: max(s.get(k, 0.0) for s in bars), reverse=True)[:MAX_GROUPS]
        palette = colormaps["tab10"].colors
        colors = {k: palette[i] for i, k in enumerate(largest if by == "op" else [k for k in keys if k in largest])}
        if len(keys) > MAX_GROUPS:
            bars = [{k: v for k, v in s.items() if k in colors}
                    | {"other": sum(v for k, v in s.items() if k not in colors)} for s in bars]
            colors["other"] = "lightgrey"
    labels = {k: (f"other {by}s ({len(keys) - MAX_GROUPS})" if k == "other" else _group_label(k, by, mathtext))
              for k in colors}
    return bars, colors, labels


def _shares_panel(ax: "Axes", named: list[tuple[str, list[dict], str]], by: str) -> None:
    """Stacked bars of the shares by `by`: one bar per (name, rows, quantity key)."""
    mathtext = {_group_key(r, "op"): r.get("mathtext") for _, rows, _ in named for r in rows}
    bars, colors, labels = _group_colors([_shares(rows, key, by) for _, rows, key in named], by, mathtext)
    _stacked(ax, list(zip([name for name, _, _ in named], bars)), colors, labels, f"Shares by {BY_TITLES[by]}")


# -- panels ----------------------------------------------------------------------------------

def _stacked(ax: "Axes", bars: list[tuple[str, dict[str, float]]], colors: dict[str, str], labels: dict[str, str],
             title: str) -> None:
    """Stacked bars of shares (0..1), one bar per (name, {group: share}), each segment of 5 %
    or more labelled with its percentage; the legend beside the axes."""
    x = list(range(len(bars)))
    bottom = [0.0] * len(bars)
    for key, color in colors.items():
        heights = [100 * shares.get(key, 0.0) for _, shares in bars]
        if not any(heights):
            continue
        ax.bar(x, heights, 0.6, bottom=bottom, color=color, label=labels.get(key, key))
        for i, (h, b) in enumerate(zip(heights, bottom)):
            if h >= 5:
                ax.text(i, b + h / 2, f"{h:.0f} %", ha="center", va="center", fontsize=8, color="white")
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xticks(x, [name for name, _ in bars])
    ax.set_ylim(0, 100)
    ax.set_ylabel("share of the step (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


# -- figures ---------------------------------------------------------------------------------

def figure_predict(pred, ceilings: Ceilings, by: str = "kind") -> "Figure":
    """A prediction (costmodel.machine.predict.Prediction): the shares of FLOPs, bytes and time
    by `by` (op, layer, phase or kind); the ops on the roofline; the bandwidth they reach."""
    from costmodel.present.data import prediction_report, predicted_row

    rows = [predicted_row(r) | {"mathtext": r.row.mathtext} for r in pred.rows]
    result = prediction_report(pred) | {"ops": rows}
    # the allreduces of a data-parallel step move bytes over the network, not through memory: they
    # are in the time shares, not on the roofline or the memory bandwidth
    compute = [r for r in rows if r["phase"] != "communication"]
    fig = _figure(17, 5.8)
    shares, roof, bandwidth = fig.subplots(1, 3, width_ratios=[0.8, 1.2, 1.2])
    _shares_panel(shares, [("FLOPs", compute, "flops"), ("bytes", compute, "bytes"),
                           ("time\n(predicted)", rows, "seconds")], by)
    names = {roof: roofline_panel(roof, compute, ceilings, result["dtype"], "Roofline (predicted times)"),
             bandwidth: bandwidth_panel(bandwidth, compute, ceilings, "Bandwidth reached (predicted times)")}
    if pred.data_parallel is None:
        fig.suptitle(f"Predicted SG step of {_setting(result)}: {result['total_seconds'] * 1e3:.3g} ms")
    else:
        dp = pred.data_parallel
        fig.suptitle(f"Predicted data-parallel SG step of {_setting(result)}: one worker of P={dp.workers} "
                     f"(I/P={dp.worker_batch}), link {dp.link.name}, {dp.composition}: "
                     f"{result['total_seconds'] * 1e3:.3g} ms, speedup {dp.speedup:.2f}")
    name_points(fig, names)
    return fig


def plot_predict(pred, ceilings: Ceilings, path: str | Path, by: str = "kind") -> None:
    """Draw figure_predict into `path` (.png or .pdf)."""
    plot_format(path)
    save(figure_predict(pred, ceilings, by), path)


def figure_compare(result: dict, ceilings: Ceilings, by: str = "kind") -> "Figure":
    """A comparison (calib.compare.compare): shares by `by` predicted beside measured, each
    row's predicted time against its measured one, and the measured rows on the roofline."""
    rows = result["ops"]
    measured = [r | {"seconds": r["measured_seconds"]} for r in rows]
    fig = _figure(15, 11)
    (shares, scatter), (roof, bandwidth) = fig.subplots(2, 2)
    _shares_panel(shares, [("FLOPs", rows, "flops"), ("bytes", rows, "bytes"), ("predicted", rows, "predicted_seconds"),
                           ("measured", rows, "measured_seconds")], by)
    names = {scatter: predicted_measured_panel(scatter, result),
             roof: roofline_panel(roof, measured, ceilings, result["dtype"], "Roofline (measured times)"),
             bandwidth: bandwidth_panel(bandwidth, measured, ceilings, "Bandwidth reached (measured times)")}
    fig.suptitle(f"Predicted against measured SG step of {_setting(result)}: measured "
                 f"{result['measured_step_seconds'] * 1e3:.3g} ms, "
                 f"predicted {result['predicted_seconds'] * 1e3:.3g} ms")
    name_points(fig, names)
    return fig


def plot_compare(result: dict, ceilings: Ceilings, path: str | Path, by: str = "kind") -> None:
    """Draw figure_compare into `path` (.png or .pdf)."""
    plot_format(path)
    save(figure_compare(result, ceilings, by), path)


def _tex_symbol(symbol: str) -> str:
    """A course symbol of costmodel.machine.sweep.symbol as mathtext: 'd^3' -> '$d^{3}$',
    'h^1_pool' -> '$h^{1}_{\\mathrm{pool}}$'; any other name unchanged."""
    match = re.fullmatch(r"([A-Za-z])(?:\^\{?(\d+)\}?)?(_pool)?", symbol)
    if not match:
        return plain(symbol)
    letter, m, pool = match.groups()
    sup = "^{%s}" % m if m else ""
    sub = r"_{\mathrm{pool}}" if pool else ""
    return f"${letter}{sup}{sub}$"


def figure_sweep(result: dict) -> "Figure":
    """A sweep (costmodel.present.data.sweep_report): the step's shares at each value, stacked,
    and the step's predicted time (with its interval) against the value."""
    by, points = result["by"], result["points"]
    mathtext = {_group_key(g, "op"): g.get("mathtext") for p in points for g in p["groups"]} if by == "op" else None
    bars, colors, labels = _group_colors([{_group_key(g, by): g["fraction"] for g in p["groups"]} for p in points],
                                         by, mathtext)
    symbol = _tex_symbol(result["symbol"])
    names = [f"{symbol}={p['value']}" for p in points]
    fig = _figure(14, 5.2)
    stacked, times = fig.subplots(1, 2)
    _stacked(stacked, list(zip(names, bars)), colors, labels, f"Shares of the step by {BY_TITLES[by]}")
    x = list(range(len(points)))
    seconds = [p["total_seconds"] for p in points]
    below = [p["total_seconds"] - p["total_seconds_low"] for p in points]
    above = [p["total_seconds_high"] - p["total_seconds"] for p in points]
    times.errorbar(x, seconds, yerr=[below, above], marker="o", color="black", capsize=3,
                   label="predicted step and its interval")
    times.set_xticks(x, names)
    if all(s > 0 for s in seconds) and max(seconds) / min(seconds) > 10:
        times.set_yscale("log")
    engineering_axis(times, None, "s")
    vary = plain(result["vary"])
    times.set_xlabel(f"{vary} ({symbol})" if result["symbol"] != result["vary"] else vary)
    times.set_ylabel("predicted time of the step")
    times.set_title("Step time", fontsize=10)
    times.legend(loc="upper left", fontsize=8, frameon=False)
    fig.suptitle(f"Sweep of {vary}: {plain(result['arch'])}, {result['dtype']}, impl {result['impl']}, "
                 f"{result['threads']} thread{'s' if result['threads'] != 1 else ''}")
    return fig


def figure_workers(result: dict) -> "Figure":
    """A sweep of the number of data-parallel workers P (costmodel.present.data.sweep_report with
    vary "workers"): the predicted step against P, split into one worker's compute and the
    exposed communication, with all the allreduces' time and the ideal T(1)/P; and the speedup
    T(1)/T(P) against the ideal P, each point labelled with its parallel efficiency."""
    points = result["points"]
    workers = [p["value"] for p in points]
    step = [p["total_seconds"] for p in points]
    compute = [p["compute_seconds"] for p in points]
    exposed = [p["exposed_communication_seconds"] for p in points]
    communication = [p["communication_seconds"] for p in points]
    one = points[0]["one_worker_seconds"]
    dp = result["data_parallel"]
    fig = _figure(14, 5.4)
    times, gains = fig.subplots(1, 2)
    x = list(range(len(points)))
    times.bar(x, compute, 0.6, color=KIND_COLORS["matrix product"], label="compute (one worker, I/P instances)")
    times.bar(x, exposed, 0.6, bottom=compute, color=KIND_COLORS["communication"],
              label="exposed communication (step - compute)")
    moving = [i for i in x if communication[i] > 0]  # P = 1 allreduces nothing: no point
    times.plot(moving, [communication[i] for i in moving], color="black", marker="o", ls="--", lw=1,
               label="all allreduces (ring model)")
    times.plot(x, [one / P for P in workers], color="grey", ls=":", marker=".", lw=1,
               label="ideal: T(1)/P")
    for i, s in enumerate(step):
        times.text(i, compute[i] + exposed[i], fmt_seconds(s), ha="center", va="bottom", fontsize=8)
    times.set_xticks(x, [str(P) for P in workers])
    values = [v for v in step + communication + [one / P for P in workers] if v > 0]
    if values and max(values) / min(values) > 30:
        times.set_yscale("log")
    engineering_axis(times, None, "s")
    times.set_xlabel("workers P")
    times.set_ylabel("predicted time of one worker's step")
    times.set_title(f"Step time and its split ({dp['composition']})", fontsize=10)
    times.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, frameon=False, ncol=2)
    gains.plot(workers, workers, color="grey", ls="--", lw=1, label="ideal: speedup = P")
    gains.plot(workers, [p["speedup"] for p in points], color="black", marker="o", label="predicted speedup")
    for P, p in zip(workers, points):
        gains.annotate(f"{100 * p['efficiency']:.3g} %", (P, p["speedup"]), xytext=(4, -10),
                       textcoords="offset points", fontsize=8)
    if len(workers) > 1 and max(workers) / min(workers) >= 4:
        gains.set_xscale("log", base=2)
        gains.set_yscale("log", base=2)
    from matplotlib.ticker import ScalarFormatter

    for axis in (gains.xaxis, gains.yaxis):
        axis.set_major_formatter(ScalarFormatter())
    gains.set_xticks(workers)
    gains.set_xlabel("workers P")
    gains.set_ylabel("speedup T(1)/T(P)")
    gains.set_title("Speedup against P (labels: parallel efficiency)", fontsize=10)
    gains.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, frameon=False, ncol=2)
    link = dp["link"]
    rate = (human(1 / link["beta_seconds_per_byte"], "B/s") if link["beta_seconds_per_byte"] > 0
            else "no cost per byte")
    fig.suptitle(f"Data-parallel SG on P workers: {result['arch']}, I={result['batch']}, {result['dtype']}, "
                 f"impl {result['impl']}; link {link['name']} (latency {fmt_seconds(link['alpha_seconds'])}, {rate})")
    return fig


def plot_sweep(result: dict, path: str | Path) -> None:
    """Draw figure_sweep (figure_workers for a sweep of the workers P) into `path` (.png or .pdf)."""
    plot_format(path)
    save(figure_workers(result) if result["vary"] == "workers" else figure_sweep(result), path)
