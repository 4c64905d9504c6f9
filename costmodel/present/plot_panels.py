"""The panels the figures of costmodel.present.plots are made of: the roofline with the ops named,
the measured bandwidth by working set, and predicted against measured; the colours of op kinds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from costmodel.machine.profile import Ceilings
from costmodel.present.explain import memory_bandwidth
from costmodel.present.notation import course_tex

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


KIND_COLORS = {"matrix product": "tab:blue", "index manipulation": "tab:orange", "elementwise": "tab:green",
               "loss": "tab:red", "update": "tab:purple",
               # PyTorch's groups (costmodel.machine.fused)
               "fused convolution": "tab:cyan", "framework overhead": "tab:gray",
               # data-parallel SG: the allreduces (costmodel.machine.backends.parallel)
               "communication": "tab:brown"}
#: ops named on a roofline or a scatter: the largest by time
LABELLED = 5

#: points to name: (x, y, name, radius of the point's marker in points)
Names = list[tuple[float, float, str, float]]


def _kind_scatter(ax: "Axes", rows: list[dict], x: list[float], y: list[float]) -> Names:
    """Points coloured by op kind, sized by share of the step; returns the largest ops' names
    and places, to be placed by name_points once the figure is complete."""
    total = sum(r["seconds"] for r in rows)
    size = [15 + 400 * r["seconds"] / total for r in rows]  # marker areas, points^2
    for kind, color in KIND_COLORS.items():
        idx = [i for i, r in enumerate(rows) if r["kind"] == kind]
        if idx:
            ax.scatter([x[i] for i in idx], [y[i] for i in idx], s=[size[i] for i in idx], color=color, alpha=0.75,
                       edgecolors="black", linewidths=0.4, label=kind, zorder=3)
    largest = sorted(range(len(rows)), key=lambda i: rows[i]["seconds"], reverse=True)[:LABELLED]
    return [(x[i], y[i], course_tex(rows[i]["mathtext"], rows[i]["layer"]), size[i] ** 0.5 / 2) for i in largest]


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


def name_points(fig: "Figure", names: dict) -> None:
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


def engineering_axis(ax: "Axes", xunit: str | None, yunit: str | None) -> None:
    from matplotlib.ticker import EngFormatter

    if xunit:
        ax.xaxis.set_major_formatter(EngFormatter(unit=xunit))
    if yunit:
        ax.yaxis.set_major_formatter(EngFormatter(unit=yunit))


def roofline_panel(ax: "Axes", rows: list[dict], ceilings: Ceilings, dtype: str, title: str) -> Names:
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
    engineering_axis(ax, None, "FLOP/s")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("achieved FLOP/s")
    dropped = len(rows) - len(ops)
    ax.set_title(f"{title}\n({dropped} ops without FLOPs are in the bandwidth panel only)", fontsize=10)
    _legend_below(ax)
    return names


def bandwidth_panel(ax: "Axes", rows: list[dict], ceilings: Ceilings, title: str) -> Names:
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
    engineering_axis(ax, "B", "B/s")
    ax.set_xlabel("bytes the op reads and writes")
    ax.set_ylabel("achieved bandwidth")
    ax.set_title(title, fontsize=10)
    _legend_below(ax)
    return names


def predicted_measured_panel(ax: "Axes", result: dict) -> Names:
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
    engineering_axis(ax, "s", "s")
    ax.set_xlabel("measured time per op")
    ax.set_ylabel("predicted time per op")
    ax.set_title("Predicted against measured, per op", fontsize=10)
    _legend_below(ax)
    return names
