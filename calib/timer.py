"""Per-op wall-clock timers of the reference CNN, with as little overhead as possible.

Every op runs between ``timer.begin()`` and ``timer.end(key)``: two calls of
``time.perf_counter_ns`` and one list append. ``NullTimer`` has the same interface and does
nothing (untimed runs).
"""

from __future__ import annotations

from time import perf_counter_ns

from costmodel.ops import OpKey


class OpTimer:
    """Records, in the order the ops ran, (key, nanoseconds) of every op of a step.

    ``reset()`` before each step; ``keys()`` lists the ops that ran, ``seconds()`` sums the
    time per OpKey.
    """

    __slots__ = ("laps", "_t0")

    def __init__(self) -> None:
        self.laps: list[tuple[OpKey, int]] = []
        self._t0 = 0

    def begin(self) -> None:
        self._t0 = perf_counter_ns()

    def end(self, key: OpKey) -> None:
        t = perf_counter_ns()
        self.laps.append((key, t - self._t0))

    def reset(self) -> None:
        self.laps.clear()

    def keys(self) -> list[OpKey]:
        """The ops that ran, in order, one entry per run."""
        return [key for key, _ in self.laps]

    def seconds(self) -> dict[OpKey, float]:
        """Seconds per OpKey, summed over the runs since the last reset, in first-run order."""
        total: dict[OpKey, int] = {}
        for key, ns in self.laps:
            total[key] = total.get(key, 0) + ns
        return {key: ns * 1e-9 for key, ns in total.items()}


class NullTimer:
    """The timer interface doing nothing, for untimed steps."""

    __slots__ = ()

    def begin(self) -> None:
        pass

    def end(self, key: OpKey) -> None:
        pass


NULL_TIMER = NullTimer()
