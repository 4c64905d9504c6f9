"""The calibration sweep's timing loop, shared by every backend (calib.backends.numpy,
calib.backends.torch): networks in chunks, each chunk's networks visited in a new random order
every round, garbage collection off while timing, a sample the median over the rounds."""

from __future__ import annotations

import gc
import math
from typing import Callable

import numpy as np

from costmodel.model.arch import Architecture

from calib.noise import relative_spread

#: every visit of a sweep network runs untimed steps of it for at least this long before its
#: timed step (warm_steps)
WARM_VISIT_SECONDS = 0.02
#: and at most this many
MAX_WARM_STEPS = 30


def warm_steps(step_seconds: float) -> int:
    """How many untimed steps a visit of a network whose warm step takes `step_seconds` runs
    before its timed one: enough to last WARM_VISIT_SECONDS (at most MAX_WARM_STEPS), 0 for a
    step at least that long.

    Why (measured 2026-12-01, 2-core AMD EPYC VM, mnist-mlp, index, one process): a 1 ms step
    timed after another network's step, or after 10 ms of other Python work, took 1.40 ms
    with no warm step, 1.25 ms after one, 1.18 ms after three and 1.15 ms after ten, as in a
    training loop of its own (1.18 ms); its loss alone 48, 29, 21 and 11 us (10 us in the
    loop). Four alternating runs of benchmarks/accuracy.py --impl index strided, each with its
    own calibration: median step error 4.5 % and 4.9 % with one warm step per visit, 2.7 % and
    4.0 % with 20 ms of them; within 15 %, 54 and 52 of 60 against 58 and 58. A 20 ms step
    pays at most ~0.2 ms for its first-after-a-disturbance ops, 1 %. Used by the NumPy sweep
    (calib.backends.numpy).
    """
    if step_seconds >= WARM_VISIT_SECONDS:
        return 0
    return min(MAX_WARM_STEPS, math.ceil(WARM_VISIT_SECONDS / max(step_seconds, 1e-6)))


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
