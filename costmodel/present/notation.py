"""Ops and rows in the course's notation: the records' templates (costmodel.model.ops) with the
layer filled in. A template holds $m for layer m's superscript and $n for layer m+1's."""

from __future__ import annotations

from string import Template


def _next(layer: int | str) -> int | str:
    return layer + 1 if isinstance(layer, int) else f"{layer}+1"


def course_name(template: str, layer: int | str) -> str:
    """Plain text: ('W$m phi(pad(Z$m))', 2) -> 'W^2 phi(pad(Z^2))'; layer 'm' gives the symbolic form."""
    def sup(k: int | str) -> str:
        return f"^{k}" if len(str(k)) == 1 else f"^{{{k}}}"

    return Template(template).substitute(m=sup(layer), n=sup(_next(layer)))


def course_tex(template: str, layer: int | str) -> str:
    """As matplotlib mathtext: '$W^{2}\\phi(...)$'."""
    return "$" + Template(template).substitute(m=f"^{{{layer}}}", n=f"^{{{_next(layer)}}}") + "$"


def op_text(layer_kind: str, op: str) -> str:
    """The plain-text template of op `op` of `layer_kind` layers."""
    from costmodel.model.ops import record

    return record(layer_kind, op).text


def label(row) -> str:
    """A row (costmodel.machine.backends.Row or PredictedRow) as 'W^2 phi(pad(Z^2)) [conv_matmul, layer 2]'."""
    return f"{course_name(row.text, row.layer)} [{row.name}, layer {row.layer}]"


#: the op kinds (costmodel.model.ops) as the subject of a sentence
KIND_PLURAL = {"matrix product": "matrix products", "elementwise": "elementwise ops"}


def kind_name(kind: str) -> str:
    return KIND_PLURAL.get(kind, kind)
