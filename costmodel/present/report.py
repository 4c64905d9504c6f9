"""Rendering of per-op results as a table, JSON or CSV, and atomic file writes.

Tables go to stdout for people; JSON and CSV carry raw SI numbers (seconds, bytes, FLOPs)
with the units in the column names, so they pipe cleanly.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from typing import Iterable, Sequence

from costmodel.files import atomic_write  # noqa: F401  (its home was here; importers may still use it)
from costmodel.units import fmt_fraction, fmt_seconds, human  # noqa: F401  (re-exported)

FORMATS = ("table", "json", "csv")
#: the console width tables are laid out for (a wider table has its cells wrapped by rich)
TABLE_WIDTH = 200
#: characters rich would not print as they are (control characters, tabs, newlines)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def to_json(result: dict) -> str:
    return json.dumps(_jsonable(result), indent=2) + "\n"


def to_csv(rows: Sequence[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _jsonable(row.get(c)) for c in columns})
    return buf.getvalue()


def render_table(title: str, columns: Sequence[tuple[str, str, callable]], rows: Iterable[dict],
                 footer: Sequence[str] = ()) -> str:
    """A table as text, in rich's layout (heavy header rule, columns separated by a bar, numbers
    right-aligned). `columns` are (header, key, formatter).

    Every string prints literally: a name such as ``[/bold] x`` or ``:smile:`` is text, never
    rich markup or an emoji code. A table that fits in TABLE_WIDTH columns and holds no control
    characters (nearly all) is laid out here, line by line, exactly as rich lays it out (a test
    compares the two): rich measures and renders every cell through several layers of objects,
    about 100 us a cell, so a 10,000-layer network's 160,000 rows took ~110 s; here a row costs
    a few microseconds. Other tables (cells to wrap) go through rich itself, as Text.
    """
    from rich.cells import cell_len

    headers = [header for header, _, _ in columns]
    right = [key not in ("op", "phase", "layer_type", "name", "group", "kind") for _, key, _ in columns]
    cells = [[str(fmt(row.get(key))) for _, key, fmt in columns] for row in rows]
    plain = not _CONTROL.search(title + "".join(headers)) and not _CONTROL.search("".join(c for line in cells for c in line))
    n = len(columns)
    widths = [cell_len(h) for h in headers]
    if plain and cells:
        for i, column in enumerate(zip(*cells)):
            widest = max(map(len, column)) if "".join(column).isascii() else max(map(cell_len, column))
            widths[i] = max(widths[i], widest)
    table_width = sum(widths) + 3 * (n - 1)
    if not plain or table_width > TABLE_WIDTH or table_width == 0:
        return _render_rich(title, headers, right, cells, footer)
    out = [_print(None, title, table_width)] if title else []
    layout = list(zip(widths, right))

    def line(values: list[str], bar: str) -> str:
        if "".join(values).isascii():
            return f" {bar} ".join(v.rstrip().rjust(w) if r else v.ljust(w) for v, (w, r) in zip(values, layout)) + "\n"
        parts = []
        for value, (width, r) in zip(values, layout):
            if r:
                value = value.rstrip()  # as rich's right justification does
            pad = " " * (width - cell_len(value))
            parts.append(pad + value if r else value + pad)
        return f" {bar} ".join(parts) + "\n"

    out.append(line(headers, "┃"))
    out.append("╇".join("━" * (w + (1 if i in (0, n - 1) else 2) - (1 if n == 1 else 0))
                        for i, w in enumerate(widths)) + "\n")
    out.extend(line(values, "│") for values in cells)
    out.extend(_print(None, text) for text in footer)
    return "".join(out)


def _console(width: int = TABLE_WIDTH):
    from rich.console import Console

    return Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False, emoji=False,
                   markup=False, highlight=False)


def _print(console, text: str, width: int | None = None) -> str:
    """One piece of text as rich prints it (wrapped at the console's width; with `width`, left-
    justified to it, as a table's title), literally: no markup, no emoji codes. `console`: a
    console of TABLE_WIDTH columns, None for one made when needed.

    A line that fits and holds no control character (nearly all) is laid out here as rich lays
    it out (a test compares the two): importing rich.console costs a cold process ~30 ms."""
    from rich.cells import cell_len

    text = str(text)
    if "\n" not in text and not _CONTROL.search(text) and cell_len(text) <= (width or TABLE_WIDTH):
        if width is None:
            return text + "\n"
        return text + " " * (width - cell_len(text)) + "\n" if text else ""
    from rich.text import Text

    console = console or _console()
    console.file = io.StringIO()
    console.print(Text(str(text)), width=width, justify="left" if width else None)
    return console.file.getvalue()


def _render_rich(title: str, headers: list[str], right: list[bool], cells: list[list[str]],
                 footer: Sequence[str]) -> str:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title) if title else None, title_justify="left", show_edge=False, pad_edge=False)
    for header, r in zip(headers, right):
        table.add_column(Text(header), justify="right" if r else "left")
    for line in cells:
        table.add_row(*(Text(c) for c in line))
    console = _console()
    console.print(table)
    for text in footer:
        console.print(Text(str(text)))
    return console.file.getvalue()


def render(result: dict, fmt: str, columns: Sequence[tuple[str, str, callable]], title: str,
           footer: Sequence[str] = (), csv_columns: Sequence[str] | None = None) -> str:
    """Render a per-op result (a dict with an 'ops' list) in one of FORMATS."""
    if fmt == "json":
        return to_json(result)
    if fmt == "csv":
        return to_csv(result["ops"], csv_columns or [key for _, key, _ in columns])
    return render_table(title, columns, result["ops"], footer)
