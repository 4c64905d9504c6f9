"""Numbers for reading: SI prefixes, seconds, percentages (plain text)."""

from __future__ import annotations

import math

#: the largest int64: every count (sizes, FLOPs, bytes) must fit in it
INT64_MAX = 2 ** 63 - 1


def human(x: float | int | None, unit: str = "") -> str:
    """1234567 -> '1.23 M'; None -> '-'."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    x = float(x)
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.1f} us"


def fmt_fraction(f: float | None) -> str:
    return "-" if f is None else f"{100 * f:.1f} %"


def iec(n: int | None) -> str:
    """32768 -> '32 KiB'; None -> 'none'."""
    if n is None:
        return "none"
    for factor, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= factor:
            return f"{n / factor:.3g} {unit}"
    return f"{n} B"


def threads_text(n: int) -> str:
    """'1 thread', '2 threads'."""
    return f"{n} thread" if n == 1 else f"{n} threads"
