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
from costmodel.present.explain import course_tex, memory_bandwidth
from costmodel.machine.profile import Ceilings
from costmodel.files import atomic_write

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PLOT_FORMATS = {".png": "png", ".pdf": "pdf"}
KIND_COLORS = {"matrix product": "tab:blue", "index manipulation": "tab:orange", "elementwise": "tab:green",
               "loss": "tab:red", "update": "tab:purple",
               # PyTorch's groups (costmodel.machine.fused)
               "fused convolution": "tab:cyan", "framework overhead": "tab:gray"}
#: ops named on a roofline or a scatter: the largest by time
LABELLED = 5
#: groups drawn one by one in a sweep's bars (the rest are summed as "other ops")
MAX_GROUPS = 9


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


def _kind_shares(rows: list[dict], key: str) -> dict[str, float]:
    total = sum(r[key] for r in rows)
    shares: dict[str, float] = {}
    for r in rows:
        shares[r["kind"]] = shares.get(r["kind"], 0.0) + (r[key] / total if total else 0.0)
    return shares


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


#: points to name: (x, y, name, radius of the point's marker in points)
Names = list[tuple[float, float, str, float]]


def _kind_scatter(ax: "Axes", rows: list[dict], x: list[float], y: list[float]) -> Names:
    """Points coloured by op kind, sized by share of the step; returns the largest ops' names
    and places, to be placed by _name_points once the figure is complete."""
    total = sum(r["seconds"] for r in rows)
    size = [15 + 400 * r["seconds"] / total for r in rows]  # marker areas, points^2
    for kind, color in KIND_COLORS.items():
        idx = [i for i, r in enumerate(rows) if r["kind"] == kind]
        if idx:
            ax.scatter([x[i] for i in idx], [y[i] for i in idx], s=[size[i] for i in idx], color=color, alpha=0.75,
                       edgecolors="black", linewidths=0.4, label=kind, zorder=3)
    largest = sorted(range(len(rows)), key=lambda i: rows[i]["seconds"], reverse=True)[:LABELLED]
    return [(x[i], y[i], course_tex(rows[i]["op"], rows[i]["layer"]), size[i] ** 0.5 / 2) for i in largest]


_NAME_STYLE = {"fontsize": 8, "zorder": 4,
               "bbox": {"boxstyle": "round,pad=0.1", "facecolor": "white", "alpha": 0.8, "edgecolor": "none"}}
#: where a name may go, in points beyond its marker's radius, tried in order: beside the
#: point, then further off with a line to it
_OFFSETS = [(dx * side, dy) for dx, dy in ((2, 1), (2, -1), (4, 14), (4, -14), (8, 28), (8, -28), (12, 42),
                                            (12, -42)) for side in (1, -1)]


def _name(ax: "Axes", renderer, x: float, y: float, text: str, radius: float, dx: float, dy: float):
    """One name at offset (dx, dy) beyond the marker's radius; (annotation, box of its text)."""
    from matplotlib.text import Text

    note = ax.annotate(text, (x, y), xytext=(dx + (radius if dx > 0 else -radius), dy), textcoords="offset points",
                       ha="left" if dx > 0 else "right", va="bottom" if dy > 0 else "top", **_NAME_STYLE,
                       arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.4"} if abs(dy) > 1 else None)
    note.set_in_layout(False)  # names must not move the axes they were placed in
    note.update_positions(renderer)
    return note, Text.get_window_extent(note, renderer)  # the name, without its line


def _name_points(fig: "Figure", names: dict) -> None:
    """Name the points of each axes ({axes: Names}) beside them, at the first offset where the
    name stays inside the axes and clears the points and the names already there."""
    from matplotlib.collections import PathCollection
    from matplotlib.transforms import Bbox

    fig.draw_without_rendering()  # the layout moves the axes: place the names in the final ones
    renderer = fig.canvas.get_renderer()
    pixels = fig.dpi / 72
    for ax, points in names.items():
        frame = ax.get_window_extent(renderer)
        taken = []
        for coll in ax.collections:
            if isinstance(coll, PathCollection):
                sizes = coll.get_sizes()
                for i, (px, py) in enumerate(ax.transData.transform(coll.get_offsets())):
                    r = sizes[i % len(sizes)] ** 0.5 / 2 * pixels
                    taken.append(Bbox.from_extents(px - r, py - r, px + r, py + r))
        for x, y, text, radius in points:
            for dx, dy in _OFFSETS:
                note, box = _name(ax, renderer, x, y, text, radius, dx, dy)
                inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
                if inside and not any(box.overlaps(t) for t in taken):
                    break
                note.remove()
            else:  # nowhere clear: the first place
                note, box = _name(ax, renderer, x, y, text, radius, *_OFFSETS[0])
            taken.append(box)


def _legend_below(ax: "Axes") -> None:
    """The legend under the axes, with every kind's marker the same size."""
    legend = ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, frameon=False, ncol=2)
    for handle in legend.legend_handles:
        if hasattr(handle, "set_sizes"):
            handle.set_sizes([30])


def _engineering(ax: "Axes", xunit: str | None, yunit: str | None) -> None:
    from matplotlib.ticker import EngFormatter

    if xunit:
        ax.xaxis.set_major_formatter(EngFormatter(unit=xunit))
    if yunit:
        ax.yaxis.set_major_formatter(EngFormatter(unit=yunit))


def _roofline(ax: "Axes", rows: list[dict], ceilings: Ceilings, dtype: str, title: str) -> Names:
    """Achieved FLOP/s against arithmetic intensity (log-log) under the matrix-product peak and
    the bandwidth roofs (memory, and the fastest cache level probed)."""
    import numpy as np

    ops = [r for r in rows if r["flops"] > 0 and r["seconds"] > 0]
    intensity = [r["flops"] / r["bytes"] for r in ops]
    rate = [r["flops"] / r["seconds"] for r in ops]
    peak = ceilings.matmul_flops_per_second[dtype]
    memory, fastest = memory_bandwidth(ceilings), max(p.bytes_per_second for p in ceilings.bandwidth)
    balance = peak / memory
    lo = min(intensity + [balance]) / 4
    hi = max(intensity + [balance]) * 4
    xs = np.geomspace(lo, hi, 200)
    ax.plot(xs, np.minimum(peak, memory * xs), color="black", lw=1.5,
            label=f"roof: peak {peak / 1e9:.3g} GFLOP/s, memory {memory / 1e9:.3g} GB/s")
    ax.plot(xs, np.minimum(peak, fastest * xs), color="black", lw=1, ls="--",
            label=f"cache roof: {fastest / 1e9:.3g} GB/s")
    ax.axvline(balance, color="grey", lw=0.8, ls=":", label=f"machine balance {balance:.3g} FLOP/B")
    ax.set_xscale("log")
    ax.set_yscale("log")
    names = _kind_scatter(ax, ops, intensity, rate)
    _engineering(ax, None, "FLOP/s")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("achieved FLOP/s")
    dropped = len(rows) - len(ops)
    ax.set_title(f"{title}\n({dropped} ops without FLOPs are in the bandwidth panel only)", fontsize=10)
    _legend_below(ax)
    return names


def _bandwidth(ax: "Axes", rows: list[dict], ceilings: Ceilings, title: str) -> Names:
    """Achieved bytes/s of every op against the bytes it moves, over the profile's measured
    bandwidth by working set."""
    ops = [r for r in rows if r["bytes"] > 0 and r["seconds"] > 0]
    nbytes = [r["bytes"] for r in ops]
    rate = [r["bytes"] / r["seconds"] for r in ops]
    points = sorted(ceilings.bandwidth, key=lambda p: p.working_set_bytes)
    ax.plot([p.working_set_bytes for p in points], [p.bytes_per_second for p in points], color="black", lw=1.2,
            marker="o", markersize=3, label="bandwidth by working set (profile: np.add, 1 thread)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    names = _kind_scatter(ax, ops, nbytes, rate)
    _engineering(ax, "B", "B/s")
    ax.set_xlabel("bytes the op reads and writes")
    ax.set_ylabel("achieved bandwidth")
    ax.set_title(title, fontsize=10)
    _legend_below(ax)
    return names


def _predicted_measured(ax: "Axes", result: dict) -> Names:
    """Predicted against measured seconds per op (log-log) with the +-10 % band; the whole
    step as a star."""
    import numpy as np

    rows = [r | {"seconds": r["measured_seconds"]} for r in result["ops"]
            if r["measured_seconds"] > 0 and r["predicted_seconds"] > 0]
    measured = [r["measured_seconds"] for r in rows]
    predicted = [r["predicted_seconds"] for r in rows]
    step = (result["measured_step_seconds"], result["predicted_seconds"])
    values = measured + predicted + list(step)
    xs = np.geomspace(min(values) / 2, max(values) * 2, 50)
    ax.fill_between(xs, 0.9 * xs, 1.1 * xs, color="0.8", label="within 10 %")
    ax.plot(xs, xs, color="black", lw=0.8, label="predicted = measured")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.scatter(*step, marker="*", s=200, color="gold", edgecolors="black", zorder=5,
               label=f"whole step ({result['step_error_percent']:+.1f} %)")
    names = _kind_scatter(ax, rows, measured, predicted)
    _engineering(ax, "s", "s")
    ax.set_xlabel("measured time per op")
    ax.set_ylabel("predicted time per op")
    ax.set_title("Predicted against measured, per op", fontsize=10)
    _legend_below(ax)
    return names


# -- figures ---------------------------------------------------------------------------------

def plot_predict(result: dict, ceilings: Ceilings, path: str | Path) -> None:
    """A prediction (costmodel.machine.predict.predict): the shares of FLOPs, bytes and time by op kind;
    the ops on the roofline; the bandwidth they reach."""
    plot_format(path)
    rows = result["ops"]
    fig = _figure(17, 5.8)
    shares, roof, bandwidth = fig.subplots(1, 3, width_ratios=[0.8, 1.2, 1.2])
    _stacked(shares, [("FLOPs", _kind_shares(rows, "flops")), ("bytes", _kind_shares(rows, "bytes")),
                      ("time\n(predicted)", _kind_shares(rows, "seconds"))],
             KIND_COLORS, {}, "Shares by op kind")
    names = {roof: _roofline(roof, rows, ceilings, result["dtype"], "Roofline (predicted times)"),
             bandwidth: _bandwidth(bandwidth, rows, ceilings, "Bandwidth reached (predicted times)")}
    fig.suptitle(f"Predicted SG step of {_setting(result)}: {result['total_seconds'] * 1e3:.3g} ms")
    _name_points(fig, names)
    save(fig, path)


def plot_compare(result: dict, ceilings: Ceilings, path: str | Path) -> None:
    """A comparison (calib.commands.compare): shares by kind predicted beside measured, each
    op's predicted time against its measured one, and the measured ops on the roofline."""
    plot_format(path)
    rows = result["ops"]
    measured = [r | {"seconds": r["measured_seconds"]} for r in rows]
    fig = _figure(15, 11)
    (shares, scatter), (roof, bandwidth) = fig.subplots(2, 2)
    _stacked(shares, [("FLOPs", _kind_shares(rows, "flops")), ("bytes", _kind_shares(rows, "bytes")),
                      ("predicted", _kind_shares(rows, "predicted_seconds")),
                      ("measured", _kind_shares(rows, "measured_seconds"))],
             KIND_COLORS, {}, "Shares by op kind")
    names = {scatter: _predicted_measured(scatter, result),
             roof: _roofline(roof, measured, ceilings, result["dtype"], "Roofline (measured times)"),
             bandwidth: _bandwidth(bandwidth, measured, ceilings, "Bandwidth reached (measured times)")}
    fig.suptitle(f"Predicted against measured SG step of {_setting(result)}: measured "
                 f"{result['measured_step_seconds'] * 1e3:.3g} ms, "
                 f"predicted {result['predicted_seconds'] * 1e3:.3g} ms")
    _name_points(fig, names)
    save(fig, path)


def _group_key(row: dict, by: str):
    return (row["layer"], row["op"], row["phase"]) if by == "op" else row[by]


def _group_label(key, by: str) -> str:
    if by == "op":
        return f"{course_tex(key[1], key[0])} [{key[1]}]"
    return f"layer {key}" if by == "layer" else str(key)


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


def plot_sweep(result: dict, path: str | Path) -> None:
    """A sweep (costmodel.machine.sweep.sweep): the step's shares at each value, stacked, and the
    step's predicted time (with its interval) against the value."""
    from matplotlib import colormaps

    plot_format(path)
    by, points = result["by"], result["points"]
    shares = [{_group_key(g, by): g["fraction"] for g in p["groups"]} for p in points]
    keys = list(dict.fromkeys(k for s in shares for k in s))
    if by == "kind":
        colors = {k: KIND_COLORS.get(k, "grey") for k in KIND_COLORS if k in keys}
    else:  # the largest groups get a colour each; ops are stacked largest first, the rest in order
        largest = sorted(keys, key=lambda k: max(s.get(k, 0.0) for s in shares), reverse=True)[:MAX_GROUPS]
        palette = colormaps["tab10"].colors
        colors = {k: palette[i] for i, k in enumerate(largest if by == "op" else [k for k in keys if k in largest])}
        if len(keys) > MAX_GROUPS:
            shares = [{k: v for k, v in s.items() if k in colors}
                      | {"other": sum(v for k, v in s.items() if k not in colors)} for s in shares]
            colors["other"] = "lightgrey"
    labels = {k: (f"other {by}s ({len(keys) - MAX_GROUPS})" if k == "other" else _group_label(k, by))
              for k in colors}
    symbol = _tex_symbol(result["symbol"])
    names = [f"{symbol}={p['value']}" for p in points]
    fig = _figure(14, 5.2)
    bars, times = fig.subplots(1, 2)
    _stacked(bars, list(zip(names, shares)), colors, labels, f"Shares of the step by {by}")
    x = list(range(len(points)))
    seconds = [p["total_seconds"] for p in points]
    below = [p["total_seconds"] - p["total_seconds_low"] for p in points]
    above = [p["total_seconds_high"] - p["total_seconds"] for p in points]
    times.errorbar(x, seconds, yerr=[below, above], marker="o", color="black", capsize=3,
                   label="predicted step (interval: 5-95 % of CV measured/predicted)")
    times.set_xticks(x, names)
    if all(s > 0 for s in seconds) and max(seconds) / min(seconds) > 10:
        times.set_yscale("log")
    _engineering(times, None, "s")
    vary = plain(result["vary"])
    times.set_xlabel(f"{vary} ({symbol})" if result["symbol"] != result["vary"] else vary)
    times.set_ylabel("predicted time of the step")
    times.set_title("Step time", fontsize=10)
    times.legend(loc="upper left", fontsize=8, frameon=False)
    fig.suptitle(f"Sweep of {vary}: {plain(result['arch'])}, {result['dtype']}, impl {result['impl']}, "
                 f"{result['threads']} thread{'s' if result['threads'] != 1 else ''}")
    save(fig, path)
