"""Backends behind one interface: what a step's rows are, how they are keyed and which
features their time models use (kerncraft's pluggable models, DESIGN.md "Growth").

A backend is a registered object with:

- ``name`` and ``impls``: "numpy" with the reference CNN's implementations "index" and
  "strided"; "torch" with PyTorch's one;
- ``rows(arch, impl, threads, machine)``: the rows of one step whose times a profile models,
  each a typed `Row` with its `ModelKey`;
- ``features(model)``: the features the time model of `model` is fitted on
  (costmodel.machine.timemodel);
- ``calibration_hint(dtype, impl, threads)``: the command that makes its profile entry.

The machine side (calib.backends) registers, under the same names, how a backend's step is
measured and how its calibration sweep is timed. A data-parallel backend wraps either one:
its rows are the wrapped backend's rows at I/P plus the allreduce rows (phase
"communication"). Pure: no clock, no kernel, no torch.
"""

from __future__ import annotations

from costmodel.errors import UsageError
from costmodel.machine.backends import numpy, torch  # noqa: F401  (register themselves)
from costmodel.machine.backends.base import BACKENDS, OTHER, Backend, ModelKey, Row, register  # noqa: F401


def backend(name: str) -> Backend:
    """The registered backend `name`; a one-line error naming the known ones."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise UsageError(f"--backend: {name!r} is not one of {', '.join(BACKENDS)}") from None
