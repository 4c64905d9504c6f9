"""Rendering of per-op results as a table, JSON or CSV, and atomic file writes.

Tables go to stdout for people; JSON and CSV carry raw SI numbers (seconds, bytes, FLOPs)
with the units in the column names, so they pipe cleanly.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from costmodel.units import fmt_fraction, fmt_seconds, human  # noqa: F401  (re-exported)

FORMATS = ("table", "json", "csv")


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename, so a
    reader never sees a half-written file and an interrupted write leaves nothing behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would create it, not mkstemp's 0600
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


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
    """A rich table as text. `columns` are (header, key, formatter)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for header, key, _ in columns:
        numeric = key not in ("op", "phase", "layer_type", "name", "group", "kind")
        table.add_column(header, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(fmt(row.get(key)) for _, key, fmt in columns))
    console = Console(file=io.StringIO(), width=200, color_system=None, force_terminal=False)
    console.print(table)
    for line in footer:
        console.print(line, highlight=False, markup=False)
    return console.file.getvalue()


def render(result: dict, fmt: str, columns: Sequence[tuple[str, str, callable]], title: str,
           footer: Sequence[str] = (), csv_columns: Sequence[str] | None = None) -> str:
    """Render a per-op result (a dict with an 'ops' list) in one of FORMATS."""
    if fmt == "json":
        return to_json(result)
    if fmt == "csv":
        return to_csv(result["ops"], csv_columns or [key for _, key, _ in columns])
    return render_table(title, columns, result["ops"], footer)
