"""Per-op wall-clock timers of the reference CNN, with as little overhead as possible.

A step is timed as consecutive laps: ``timer.begin()`` starts the clock before the first op
and ``timer.lap(key)`` right after each op closes that op's lap and starts the next one, so
every op costs one ``time.perf_counter_ns`` call and one list append. The laps tile the step:
the Python between two ops (attribute look-ups, calls, returns, freeing a temporary when a
function returns; a few hundred nanoseconds) counts to the op after it, and only the step's
prologue (input checks) and epilogue fall outside the ops. With a trace hook set, the hook's
time counts to the next op: do not time traced steps. ``NullTimer`` has the same interface
and does nothing (untimed runs).
"""

from __future__ import annotations

from time import perf_counter_ns

from costmodel.model.ops import OpKey


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
        """Start the clock: the next lap runs from now."""
        self._t0 = perf_counter_ns()

    def lap(self, key: OpKey) -> None:
        """The op `key` has just finished: record its lap and start the next one."""
        t = perf_counter_ns()
        self.laps.append((key, t - self._t0))
        self._t0 = t

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

    def lap(self, key: OpKey) -> None:
        pass


NULL_TIMER = NullTimer()
