"""Text for LaTeX: escaping, numbers (counts with SI prefixes, seconds, fractions), ranges of
layers and each op in the slides' notation (costmodel.present.latex builds the tables)."""

from __future__ import annotations

import re
from typing import Iterable

_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
    "\n": " ", "\r": " ", "\t": " ",
}
_SPECIAL = re.compile("|".join(re.escape(c) for c in _ESCAPES))


def latex_escape(text: object) -> str:
    """`text` as LaTeX text-mode source that prints it literally (line breaks become spaces)."""
    return _SPECIAL.sub(lambda m: _ESCAPES[m.group()], str(text))


def fmt_count(x: float | int | None, unit: str = "") -> str:
    r"""3 significant digits with an SI prefix: 1234567890 -> ``1.23\,G``, (45.4e6, 'B') ->
    ``45.4\,MB``; None -> ``--``."""
    if x is None:
        return "--"
    x = float(f"{float(x):.3g}")  # round first, so that 999.7 becomes 1\,k, not 1e+03
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return rf"{x / factor:.3g}\,{prefix}{unit}"
    return rf"{x:.3g}\,{unit}" if unit else f"{x:.3g}"


def fmt_seconds(s: float | None) -> str:
    r"""3 significant digits in s, ms, \textmu s or ns: 0.01234 -> ``12.3\,ms``."""
    if s is None:
        return "--"
    s = float(f"{s:.3g}")
    for factor, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, r"\(\mu\)s")):
        if abs(s) >= factor:
            return rf"{s / factor:.3g}\,{unit}"
    return rf"{s / 1e-9:.3g}\,ns"


def percents(text: str) -> str:
    r"""Text with percentages typeset: '5-95 %' -> ``5--95\,\%``."""
    return latex_escape(text).replace(" \\%", "\\,\\%").replace("5-95", "5--95")


def fmt_fraction(f: float | None) -> str:
    r"""0.345 -> ``34.5\,\%``."""
    return "--" if f is None else rf"{100 * f:.1f}\,\%"


def layer_ranges(layers: Iterable[int]) -> str:
    """[1, 2, 3, 5] -> '1--3, 5'."""
    runs: list[list[int]] = []
    for m in sorted(set(layers)):
        if runs and m == runs[-1][-1] + 1:
            runs[-1].append(m)
        else:
            runs.append([m])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}--{r[-1]}" for r in runs)


def describe(layer_type: str, op: str, loss: str = "mse") -> str:
    """The op in the slides' notation (LaTeX math, from its record); an op without a record is
    an error."""
    from costmodel.model.ops import record

    return record(layer_type, op).latex_for(loss)


def breakable(latex: str) -> str:
    """Plain parentheses instead of \\left( \\right), so that a long sum may break after a +."""
    return latex.replace(r"\left(", "(").replace(r"\right)", ")")
