"""The calibration sweep's timing loop, shared by every backend (calib.backends.numpy,
calib.backends.torch): networks in chunks, each chunk's networks visited in a new random order
every round, garbage collection off while timing, a sample the median over the rounds."""

from __future__ import annotations

import gc
from typing import Callable

import numpy as np

from costmodel.model.arch import Architecture

from calib.noise import relative_spread


def chunked_sweep(archs: list[Architecture], *, chunk: int, rounds: int, seed: int,
                  build: Callable[[int, Architecture], object],
                  run_round: Callable[[list[tuple[int, object]]], dict[int, dict[tuple, float]]],
                  progress: Callable[[int], None] | None = None) -> list[dict]:
    """The sweep's timing loop, shared by both backends: networks in chunks of `chunk`
    (`build(i, arch)` makes network i, warm); in each of `rounds` rounds a chunk's networks are
    visited in a new random order and `run_round(visits)` returns, per network, its seconds per
    (layer, op, phase); gc is off while timing. A sample is the median over the rounds, with
    the rounds' relative spread (calib.noise.relative_spread)."""
    rng = np.random.default_rng(seed)
    samples: list[dict] = []
    for first in range(0, len(archs), chunk):
        nets = [(i, build(i, arch)) for i, arch in enumerate(archs[first:first + chunk], start=first)]
        laps: dict[int, list[dict]] = {i: [] for i, _ in nets}
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for _ in range(rounds):
                for i, seconds in run_round([nets[j] for j in rng.permutation(len(nets))]).items():
                    laps[i].append(seconds)
        finally:
            if gc_was_enabled:
                gc.enable()
        for i, _ in nets:
            for layer, op, phase in laps[i][0]:
                rounds_seconds = [lap.get((layer, op, phase), 0.0) for lap in laps[i]]
                samples.append({"point": i, "layer": layer, "op": op, "phase": phase,
                                "seconds": float(np.median(rounds_seconds)),
                                "spread": relative_spread(rounds_seconds)})  # calib.noise
            if progress:
                progress(1)
        del nets
        gc.collect()
    return samples
