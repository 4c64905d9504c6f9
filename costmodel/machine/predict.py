"""Predicted time of an SG step: its rows (a backend's) timed by a machine profile's models.

For every row of the step, its features (costmodel.machine.timemodel) are evaluated and
multiplied by the coefficients the profile fitted for that row's model key, dtype,
implementation and thread count. The time composition is the sum of the terms (a per-call
overhead, compute time and memory time). The prediction interval of a row is its prediction
scaled by the 5 % and 95 % quantiles of measured/predicted that cross-validation found; the
step's interval sums the rows' bounds (no cancellation of errors assumed).

`predict` returns a `Prediction`; the tables, JSON and CSV are made from it at the edge
(costmodel.present).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from costmodel.errors import UsageError
from costmodel.machine.backends import ModelKey, Row, backend as get_backend
from costmodel.machine.timemodel import ALL_FEATURES, Machine, feature_values, terms

if TYPE_CHECKING:
    from costmodel.machine.backends.parallel import DataParallel
    from costmodel.machine.profile import Profile
    from costmodel.model.arch import Architecture

BY = ("op", "layer", "phase", "kind")


@dataclass(frozen=True)
class PredictedRow:
    """One row of the step with its predicted seconds, interval, share and terms."""

    row: Row
    seconds: float
    seconds_low: float
    seconds_high: float
    cv_error: float | None
    fraction: float
    terms: Mapping[str, float]

    def __getattr__(self, name):  # the row's fields: layer, ops, phase, kind, flops, bytes, ...
        if name == "row":
            raise AttributeError(name)
        return getattr(self.row, name)


@dataclass(frozen=True)
class GroupTotal:
    """The rows of a prediction summed by layer, phase or kind."""

    by: str
    name: object
    ops: int
    seconds: float
    seconds_low: float
    seconds_high: float
    flops: int
    bytes: int
    fraction: float


@dataclass(frozen=True)
class Prediction:
    """The predicted step: its rows in step order and the step's totals.

    `data_parallel` is set by the data-parallel wrapper (costmodel.machine.backends.parallel): the
    rows are then one worker's (its compute at I/P, then the allreduces), `batch` is still the
    whole mini-batch I, and total_seconds is the composed step."""

    arch: "Architecture"
    backend: str
    impl: str
    threads: int
    rows: tuple[PredictedRow, ...]
    total_seconds: float
    total_seconds_low: float
    total_seconds_high: float
    profile_info: Mapping[str, object]
    interval: str = "5-95 % of cross-validated measured/predicted, summed over the ops"  # what the step's bounds are
    data_parallel: "DataParallel | None" = None

    @property
    def dtype(self) -> str:
        return self.arch.dtype

    @property
    def batch(self) -> int:
        return self.arch.batch

    def by(self, by: str) -> list[GroupTotal]:
        """The rows summed by "layer", "phase" or "kind", in order of first appearance."""
        if by not in BY or by == "op":
            raise UsageError(f"--by: {by!r} is not one of layer, phase, kind (or op)")
        groups: dict = {}
        for r in self.rows:
            name = getattr(r.row, by)
            g = groups.setdefault(name, [0, 0.0, 0.0, 0.0, 0, 0])
            g[0] += 1
            g[1] += r.seconds
            g[2] += r.seconds_low
            g[3] += r.seconds_high
            g[4] += r.flops
            g[5] += r.bytes
        total = self.total_seconds
        return [GroupTotal(by, name, n, s, lo, hi, f, b, s / total if total else 0.0)
                for name, (n, s, lo, hi, f, b) in groups.items()]


#: the regimes a model key's variant may end with (costmodel.machine.backends.numpy.regime)
REGIMES = ("threaded", "serial")


def _kind(key: ModelKey) -> ModelKey:
    """`key` without its regime: the model whatever the regime."""
    return ModelKey(key.ops, tuple(v for v in key.variant if v not in REGIMES))


def predict_rows(rows: list[Row], entry, machine: Machine, missing) -> list[tuple]:
    """Per row: (row, seconds, interval factors, terms, CV error) from the entry's models.
    A row without a model is priced by the model of its Row.legacy_model (the key a profile
    made before its model was split off has for it) when the entry has no model of the row's
    key in any regime: a profile made before the split. One made after it that lacks this key
    is an error, not a fallback: raises UsageError(missing(row)), exit status 2."""
    out = []
    for row in rows:
        model = entry.model(row.model)
        if model is None and row.legacy_model is not None:
            kind = _kind(row.model)
            if not any(_kind(ModelKey.parse(k)) == kind for k in entry.ops):
                model = entry.model(row.legacy_model)
        if model is None:
            raise UsageError(missing(row))
        if not any(c > 0 for c in model.coef):  # a hand-edited profile: never a silent 0 s
            raise UsageError(f"the profile's {entry.describe()} model of {str(row.model)!r} has no positive "
                             "coefficient: it would price the op at 0 s; calibrate again")
        unknown = [f for f in model.features if f not in ALL_FEATURES]
        if unknown:
            raise UsageError(f"the profile's {entry.describe()} model of {str(row.model)!r} uses feature "
                                 f"{unknown[0]!r}, which this costmodel does not know: upgrade costmodel "
                                 "or calibrate again")
        parts = terms(model, feature_values(row, machine))
        out.append((row, sum(parts.values()), model.interval, parts, model.cv_error))
    return out


def predict(arch: "Architecture", profile: "Profile", *, impl: str = "index", threads: int | None = None,
            batch: int | None = None, backend: str = "numpy", provenance: Mapping | None = None) -> Prediction:
    """The predicted step of `arch` on the profile's machine: a Prediction whose rows are the
    backend's (the contract's ops for "numpy", PyTorch's op groups for "torch", whose one
    implementation is "torch"). A row without a model in the profile is an error naming the
    command that calibrates it, never a silent 0. `provenance` (costmodel.machine.resolve) is
    carried in the prediction's profile_info beside the profile's CPU and date."""
    be = get_backend(backend)
    if backend != "numpy":
        impl = be.impls[0]
    arch = arch.with_batch(batch)
    if threads is None:
        from costmodel.machine.resolve import default_threads

        threads = default_threads(profile, arch.dtype, impl, backend)
    entry = profile.entry(arch.dtype, impl, threads, backend)
    machine = Machine.of(profile.fingerprint)
    rows = be.rows(arch, impl, threads, machine)
    what = "op" if backend == "numpy" else "op group"

    def missing(row: Row) -> str:
        return (f"the profile's {entry.describe()} calibration has no model for {what} {str(row.model)!r}: "
                f"run `{be.calibration_hint(arch.dtype, impl, threads)}` again")

    try:
        timed = predict_rows(rows, entry, machine, missing)
    except UsageError as exc:  # name the file, as the errors found while loading it do
        from costmodel.machine.profile import source_of

        source = source_of(profile)
        raise (UsageError(f"{source}: {exc}") if source else exc) from None
    total = sum(t[1] for t in timed)
    predicted = tuple(PredictedRow(row, s, s * lo, s * hi, cv, s / total if total > 0 else 0.0, parts)
                      for row, s, (lo, hi), parts, cv in timed)
    step = entry.step_interval_for(total)
    if step is not None:  # a 90 % interval of the step (calib.fit.step_interval)
        (lo, hi), networks, which = step
        low, high = total * lo, total * hi
        how = f"90 % of the cross-validated steps of {networks} calibration networks" + (f" {which}" if which else "")
    else:  # a profile made before step intervals: the ops' own quantiles, summed
        low, high = sum(r.seconds_low for r in predicted), sum(r.seconds_high for r in predicted)
        how = "5-95 % of cross-validated measured/predicted, summed over the ops"
    return Prediction(arch, backend, impl, threads, predicted, total, low, high,
                      {"cpu_model": profile.fingerprint.cpu_model, "created": profile.created.isoformat(),
                       **(provenance or {})}, how)
