"""The machine side of the backends (costmodel.machine.backends): how each one's step is
measured and how its calibration sweep is timed. `machine_backend(name)` returns the module:

- ``time_sweep(archs, impl, *, threads, rounds, chunk, seed, progress)``: samples
  {"point", "layer", "op", "phase", "seconds"} of every row of every sweep network;
- ``versions()``: what the entry records of the software it ran on (e.g. torch's version).

torch is imported only by calib.backends.torch, and only when it is used.
"""

from __future__ import annotations

import importlib

from costmodel.errors import CostModelError

MODULES = {"numpy": "calib.backends.numpy", "torch": "calib.backends.torch"}


def machine_backend(name: str):
    """The module of backend `name` (calib.backends.numpy, calib.backends.torch)."""
    try:
        return importlib.import_module(MODULES[name])
    except KeyError:
        raise CostModelError(f"--backend: {name!r} is not one of {', '.join(MODULES)}") from None
