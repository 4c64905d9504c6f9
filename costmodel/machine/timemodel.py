"""The time model of an op kind, evaluated in exactly one place: fit (calib.fit), predict,
explain and `profile show` all call this module.

An op kind's time on a machine is a non-negative linear combination of named terms

    t = c_call + c_flop FLOPs + c_byte bytes + c_L2 bytes_beyond_L2 + c_L3 bytes_beyond_L3 (+ ...)

(PALEO's composition, named: the *sum* of a per-call overhead, compute time and memory
time). The `bytes_beyond_*` features are the row's bytes when its working set (every array it
reads or writes) exceeds that cache level, else 0: the extra time per byte of fetching from
the next level. A backend may add features of its own (`bytes_fresh`, `flops_lane_waste`, see
costmodel.machine.backends.torch). Every coefficient reads as a machine fact (`fact`): 1/c_flop
is FLOP/s, 1/c_byte is bytes/s, c_call is seconds per call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from costmodel.units import fmt_seconds, human, threads_text

if TYPE_CHECKING:
    import numpy as np

    from costmodel.machine.backends import Row
    from costmodel.machine.machine_facts import OpModel

#: the features every backend's models use
FEATURES = ("calls", "flops", "bytes", "bytes_beyond_L2", "bytes_beyond_L3")
#: features a backend adds from its rows' `basis` (0 where a row has none)
ROW_FEATURES = ("bytes_fresh", "flops_lane_waste", "gemm_calls", "inner_loops", "elements")
ALL_FEATURES = FEATURES + ROW_FEATURES

#: features whose coefficient (seconds per unit) reads as a rate: feature -> (rate, unit);
#: a qualified name such as bytes_beyond_L2 reads as the same rate, qualified
RATE_FEATURES = {"flops": ("FLOP/s", "FLOP"), "bytes": ("B/s", "byte")}
CALL_FEATURE = "calls"


@dataclass(frozen=True)
class Machine:
    """What the features of a row depend on besides the row: the cache sizes in bytes of the
    machine whose profile is used ({"L2": ..., "L3": ...}; a missing level counts as
    infinitely large) and its CPU flags (SIMD width)."""

    caches: Mapping[str, int] = field(default_factory=dict)
    cpu_flags: tuple[str, ...] = ()

    @classmethod
    def of(cls, fingerprint) -> "Machine":
        return cls(dict(fingerprint.caches), tuple(fingerprint.cpu_flags))


def feature_values(row: "Row", machine: Machine) -> dict[str, float]:
    """Every feature of ALL_FEATURES for one row."""
    flops = float(row.basis.get("flops", row.flops))
    nbytes = float(row.basis.get("bytes", row.bytes))
    inf = float("inf")
    l2 = float(machine.caches.get("L2") or inf)
    l3 = float(machine.caches.get("L3") or inf)
    values = {"calls": 1.0, "flops": flops, "bytes": nbytes,
              "bytes_beyond_L2": nbytes if nbytes > l2 else 0.0,  # working set: every array, once
              "bytes_beyond_L3": nbytes if nbytes > l3 else 0.0}
    for name in ROW_FEATURES:
        values[name] = float(row.basis.get(name, 0.0))
    return values


def check_features(features: Iterable[str]) -> None:
    unknown = [f for f in features if f not in ALL_FEATURES]
    if unknown:
        raise ValueError(f"unknown feature {unknown[0]!r} (this costmodel knows {', '.join(ALL_FEATURES)})")


def design_matrix(rows: Sequence["Row"], machine: Machine, features: Sequence[str]) -> "np.ndarray":
    """The (len(rows), len(features)) matrix of the rows' feature values, for the fit."""
    import numpy as np

    check_features(features)
    return np.array([[feature_values(row, machine)[f] for f in features] for row in rows], dtype=float).reshape(
        len(rows), len(features))


def terms(model: "OpModel", values: Mapping[str, float]) -> dict[str, float]:
    """Seconds of each of the model's terms for a row with these feature values."""
    return {f: c * values[f] for f, c in zip(model.features, model.coef)}


def seconds(model: "OpModel", values: Mapping[str, float]) -> float:
    """The model's time for a row with these feature values: the sum of its terms."""
    return sum(terms(model, values).values())


def fact(feature: str, coef: float) -> str:
    """One coefficient read as a machine fact: ('flops', 1.35e-11) -> '74 GFLOP/s',
    ('bytes_beyond_L3', 5e-11) -> '20 GB/s beyond L3', ('calls', 1.2e-5) -> '12.0 us per call'."""
    if feature == CALL_FEATURE:
        return f"{fmt_seconds(coef)} per call"
    if feature == "gemm_calls":
        return f"{fmt_seconds(coef)} per image and group"
    if feature == "inner_loops":
        return f"{coef * 1e9:.3g} ns per inner loop"
    if feature == "elements":
        # a fit that leaves the term near 0 reads as none, not as a rate no core has
        return f"{human(1 / coef)} elements/s" if coef > 1e-15 else "no cost per element"
    quantity, _, qualifier = feature.partition("_")
    if quantity in RATE_FEATURES:
        rate, unit = RATE_FEATURES[quantity]
        text = human(1 / coef, rate) if coef > 0 else f"no cost per {unit}"
        return f"{text} {qualifier.replace('_', ' ')}".rstrip()
    return f"{feature}: {coef:.3g} s each"



#: the model name of a fit whose FLOP term is the peak's (calib.fit.flops_at_peak)
PINNED_MODEL = "roofline-linear"

BYTE_LEVELS = (("bytes", "L2", ""), ("bytes_beyond_L2", "L3", " beyond L2"), ("bytes_beyond_L3", "memory", " beyond L3"))


def _of_ceiling(rate: float, ceiling: float | None, unit: str, what: str = "") -> str:
    if ceiling is None or rate <= 0:
        return ""
    if rate >= ceiling * (1 - 1e-6):  # the bound binds: the data alone asked for more, or nothing
        return f" (at the {human(ceiling, unit)}{what}: the fit's bound)"
    return f" ({100 * rate / ceiling:.0f} % of the {human(ceiling, unit)}{what})"


def model_facts(model: "OpModel") -> list[str]:
    """An op model's coefficients read as machine facts, each beside the ceiling it was fitted
    under when the model has one: '12.0 us per call', '74 GFLOP/s (35 % of the 210 GFLOP/s
    peak)'; a roofline-linear model's FLOP terms (its FLOPs, and a fused convolution's FLOPs
    on padding lanes) are the peak itself, and say so. The byte terms read as the effective
    rate of each level: in cache 1/c_byte, beyond L2 1/(c_byte + c_L2), beyond L3
    1/(c_byte + c_L2 + c_L3), which is what data of that level moves at (the coefficient
    beyond L2 alone is not a rate of anything)."""
    coef = dict(zip(model.features, model.coef))
    ceiling = model.ceiling
    effective, total = {}, 0.0  # byte feature -> (cost per byte of its level, level, qualifier)
    for feature, level, qualifier in BYTE_LEVELS:
        if feature in coef:
            total += coef[feature]
            effective[feature] = (total, level, qualifier)
    facts = []
    for feature, c in coef.items():
        if feature in effective:
            cost, level, qualifier = effective[feature]
            if cost <= 0:
                facts.append(f"no cost per byte{qualifier}")
                continue
            bound = ceiling.bytes_per_second.get(level) if ceiling else None
            what = f" of {threads_text(ceiling.threads)}" if ceiling else ""
            facts.append(human(1 / cost, "B/s") + qualifier + _of_ceiling(1 / cost, bound, "B/s", what))
        elif feature == "flops" and ceiling is not None and c > 0 and model.model == PINNED_MODEL:
            facts.append(f"{fact(feature, c)} (the peak: a product's FLOPs are priced at it)")
        elif feature == "flops_lane_waste" and ceiling is not None and c > 0 and model.model == PINNED_MODEL:
            facts.append(f"{fact(feature, c)} (the peak: padding lanes compute at it)")
        elif feature == "flops" and ceiling is not None and c > 0:
            facts.append(fact(feature, c) + _of_ceiling(1 / c, ceiling.flops_per_second, "FLOP/s", " peak"))
        else:
            facts.append(fact(feature, c))
    return facts
