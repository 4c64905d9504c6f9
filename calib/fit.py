"""Fit of the per-op time models over the symbolic features (scikit-learn conventions).

One `OpTimeModel` per op kind: a linear model over costmodel.machine.timemodel.FEATURES, fitted on
relative error, each sample's squared relative error weighted by its time t (a sample weight
of 1/t on the squared residual): a 10 us op still counts, but the large ops that make up most
of a step count more (measured: with pure relative error, 1/t^2, the median step-time error of
benchmarks/accuracy.py's strided float32 set was 10.0 %, with 1/t 4.8 %), with grouped
cross-validation (the groups are the sweep's architectures, so an architecture is never both
in the training and in the validation folds) and prediction intervals from the
cross-validated residual ratios.

Facts are physical (issue 11): every coefficient is >= 0, and with a `Ceiling` no rate is
above what the machine measured. A per-FLOP term c_flop >= 1/peak (the product peak at the
model's thread count), and the effective per-byte cost at each working-set level is at least
1/bandwidth of that level:

    in cache (working set <= L2):  c_byte                          >= 1/B_L2
    beyond L2:                     c_byte + c_L2                   >= 1/B_L3
    beyond L3:                     c_byte + c_L2 + c_L3            >= 1/B_memory

The first two kinds are box bounds; the sums are not. The fit is a least-squares problem with
these linear inequality constraints (convex, so its minimum is unique in the fitted values).
It is solved in two steps: scipy.optimize.lsq_linear (bounded-variable least squares, exact)
with the box bounds; when its solution already satisfies the sums, that is the constrained
minimum too (the common case: a rate far below its roof). Otherwise SLSQP
(scipy.optimize.minimize) minimises the same objective under the sums, from the box solution
raised onto them. A reparametrisation by the levels' effective costs would turn the sums into
boxes but the non-negativity of c_L2 and c_L3 into order constraints: no parametrisation makes
both boxes, so the general solver is used only for the few models whose sums bind.

A coefficient whose feature is 0 in every sample (no sweep network went beyond L3, say) is
not determined by the data: it is set to the least value the bounds allow, so a prediction
beyond the sweep's range runs at most at the measured roof instead of for free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from costmodel.machine.timemodel import FEATURES, PINNED_MODEL

MODEL_NAME = "nnls-linear"  # non-negative coefficients
BOUNDED_MODEL_NAME = "bounded-linear"  # within a Ceiling too
#: a time of 0 is read as this: torch.profiler's resolution is 1 us, and an op group whose
#: time it reports as 0 (an "other" with no gap) would otherwise get an infinite weight
T_FLOOR = 1e-6
#: the features whose coefficients sum to the effective cost per byte at each level
LEVEL_FEATURES = {"L2": ("bytes",), "L3": ("bytes", "bytes_beyond_L2"),
                  "memory": ("bytes", "bytes_beyond_L2", "bytes_beyond_L3")}


@dataclass(frozen=True)
class Ceiling:
    """The physical limits of one op model: FLOP/s (`flops_per_second`, None: unbounded) and
    bytes/s per working-set level ("L2", "L3", "memory"), for the `threads` it runs on
    (stored with the model as costmodel.machine.profile.OpCeiling)."""

    flops_per_second: float | None = None
    bytes_per_second: Mapping[str, float] = field(default_factory=dict)
    threads: int = 1

    def as_dict(self) -> dict:
        return {"threads": self.threads, "flops_per_second": self.flops_per_second,
                "bytes_per_second": dict(self.bytes_per_second)}

    def constraints(self, features: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lower, G, h): coef >= lower, G @ coef >= h, in seconds per unit of each feature."""
        n = len(features)
        lower = np.zeros(n)
        rows, rhs = [], []
        if self.flops_per_second and "flops" in features:
            lower[features.index("flops")] = 1.0 / self.flops_per_second
        for level, bw in self.bytes_per_second.items():
            terms = [f for f in LEVEL_FEATURES[level] if f in features]
            if not terms or terms[-1] != LEVEL_FEATURES[level][-1]:
                continue  # the model has no term for this level: its bytes are costed below it
            if len(terms) == 1:
                j = features.index(terms[0])
                lower[j] = max(lower[j], 1.0 / bw)
            else:
                rows.append([1.0 if f in terms else 0.0 for f in features])
                rhs.append(1.0 / bw)
        return lower, np.array(rows).reshape(-1, n), np.array(rhs)


def bounded_lstsq(A: np.ndarray, b: np.ndarray, lower: np.ndarray, G: np.ndarray, h: np.ndarray) -> np.ndarray:
    """argmin ||A x - b||^2 subject to x >= lower and G x >= h (see the module docstring)."""
    from scipy.optimize import lsq_linear, minimize

    upper = np.full_like(lower, np.inf)
    if A.shape[0] == 0:
        x = lower.copy()
    else:
        x = lsq_linear(A, b, bounds=(lower, upper), method="bvls", tol=1e-12).x
    x = np.maximum(x, lower)
    if G.size and np.any(G @ x < h * (1 - 1e-9)):
        x0 = x.copy()
        for row, need in zip(G, h):  # onto the sums: raise the row's last term
            gap = need - row @ x0
            if gap > 0:
                j = np.flatnonzero(row)[-1]
                x0[j] += gap / row[j]
        norm = max(float(b @ b), 1e-300)
        res = minimize(lambda v: float((A @ v - b) @ (A @ v - b)) / norm, x0,
                       jac=lambda v: 2 * A.T @ (A @ v - b) / norm, method="SLSQP",
                       bounds=list(zip(lower, upper)),
                       constraints=[{"type": "ineq", "fun": lambda v: G @ v - h, "jac": lambda v: G}],
                       options={"ftol": 1e-14, "maxiter": 500})
        x = np.maximum(res.x, lower) if res.success else x0
        # SLSQP meets the constraints to its tolerance: lift the row's last term by what is left
        for row, need in zip(G, h):
            gap = need - row @ x
            if gap > 0:
                j = np.flatnonzero(row)[-1]
                x[j] += gap / row[j]
    return x


def runs_parallel(key: str, backend: str, impl: str, threads: int) -> bool:
    """Whether the op model `key` runs on all `threads` threads: every PyTorch op (intra-op
    threads); in a threaded step of the strided implementation the ':threaded' ones (shared
    among its threads); otherwise the matrix products (BLAS's threads). The rest runs on one
    thread: NumPy's ufuncs and indexing, and the ':serial' products (single-threaded BLAS)."""
    from costmodel.machine.transfer import product_ops

    if threads <= 1:
        return False
    if backend == "torch":
        return True
    op, _, variants = key.partition(":")
    if impl == "strided":  # a threaded step (costmodel.model.ops.threaded_step)
        return "threaded" in variants.split("+")
    return op in product_ops()


def ceiling_of(key: str, *, backend: str, impl: str, threads: int, peaks: Mapping[tuple[str, str, int], float],
               dtype: str, levels: Mapping[str, float]) -> Ceiling | None:
    """The ceiling of the op model `key` of an entry (backend, impl, dtype, threads).

    `peaks`: (backend, dtype, threads) -> measured peak FLOP/s; the bound of an op on n threads
    is the best peak measured with at most n threads (a torch model's: of torch's and NumPy's,
    whichever library runs it, it cannot beat the machine's best measured product); `levels`: one thread's bandwidth per level (calib.machine.level_bandwidth).
    An op on n threads is bounded by the peak measured with n threads and by n times one
    thread's bandwidth (an upper bound: no core moves more than one thread measured; a
    measurement of n threads through Python threads would be limited by the GIL in cache).
    PyTorch's "other" does no arithmetic of its own: no ceiling."""
    if key.startswith("other"):
        return None
    n = threads if runs_parallel(key, backend, impl, threads) else 1
    # n threads can do at least what fewer did: a peak measured lower at n threads than at one
    # (a busy core) must not bound the fit below what one thread reached
    candidates = [flops for (b, dt, m), flops in peaks.items() if b in ("numpy", backend) and dt == dtype and m <= n]
    peak = max(candidates, default=None)
    return Ceiling(peak, {level: n * bw for level, bw in levels.items()}, n)


def flops_at_peak(key: str, backend: str) -> bool:
    """Whether the model `key` has its FLOP term pinned at the measured peak (OpTimeModel): a
    NumPy model of one matrix product (BLAS), and a PyTorch group around a convolution's
    product (oneDNN's direct convolution in float32, im2col + BLAS in float64). A product's
    FLOPs run at the peak; what a shape loses to it (short dimensions, packing, the output's
    traffic, lanes, the call) is in the other terms. Fitted freely, the FLOP term also took the
    losses of the sweep's degenerate products (K = 1, M = 1: 2-20 GFLOP/s) and priced large,
    well-shaped ones 1.35-1.5x too slow (benchmarks/accuracy.py, 2026-12-01). PyTorch's full
    layers are left free: the peak it is bounded by is its convolution's (446 GFLOP/s here),
    twice what torch.mm reaches, and pinned there the MLPs were predicted 24-36 % fast."""
    from costmodel.machine.backends import ModelKey
    from costmodel.machine.transfer import product_ops

    ops = ModelKey.parse(key).ops
    if backend == "torch":  # a convolution group; the full layers' products run below its peak
        return any(op in product_ops() and op.startswith("conv_") for op in ops)
    return backend == "numpy" and len(ops) == 1 and ops[0] in product_ops()


#: the features a roofline-linear model prices at the peak: the FLOPs, and the FLOPs a fused
#: convolution spends on padding lanes (costmodel.machine.backends.torch.lane_waste_flops), which
#: run at the same rate; the compute time is the padded FLOPs over the peak. Fitted freely,
#: the lane waste's coefficient was 0.05-0.6 of the peak's cost forward, and the fit put
#: what unaligned layers lose into the call and byte terms instead: aligned layers (16, 32, 64
#: channels) were predicted 1.2-1.25x slow (benchmarks/accuracy.py --impl torch, 2026-12-01)
PEAK_FEATURES = ("flops", "flops_lane_waste")


class OpTimeModel:
    """t = X @ coef_, coef_ >= 0 and within `ceiling`, fitted by least squares on relative
    error weighted by t. With `pin_flops` and a ceiling with a peak, the coefficients of
    PEAK_FEATURES are 1/peak (the roofline's compute time) and the other terms are fitted to
    the time left."""

    def __init__(self, features: tuple[str, ...] = FEATURES, ceiling: Ceiling | None = None,
                 pin_flops: bool = False):
        self.features = features
        self.ceiling = ceiling
        self.pin_flops = pin_flops

    def pinned(self) -> list[int] | None:
        """The indices of the features whose coefficients are fixed at 1/peak (PEAK_FEATURES
        the model has), or None."""
        if self.pin_flops and self.ceiling is not None and self.ceiling.flops_per_second and "flops" in self.features:
            return [self.features.index(f) for f in PEAK_FEATURES if f in self.features]
        return None

    def fit(self, X: np.ndarray, t: np.ndarray) -> "OpTimeModel":
        X = np.asarray(X, dtype=float)
        t = np.asarray(t, dtype=float)
        lower, G, h = (self.ceiling or Ceiling()).constraints(tuple(self.features))
        scale = np.abs(X).max(axis=0)
        unused = scale == 0
        pin = self.pinned()
        fixed = np.zeros(len(self.features))
        if pin is not None:
            fixed[pin] = 1.0 / self.ceiling.flops_per_second
            unused[pin] = True  # not fitted: their coefficient is the peak's
        used = ~unused
        # a sum with an undetermined coefficient never binds the others: that one meets it
        rows = ~np.any(G[:, unused] != 0, axis=1) if G.size else np.zeros(0, bool)
        # weight 1/t^2 would make each residual a relative error; 1/t weighs those by t
        root = 1.0 / np.sqrt(t)
        A = X[:, used] / scale[used] * root[:, None]
        y = bounded_lstsq(A, (t - X @ fixed) * root, lower[used] * scale[used], G[rows][:, used] / scale[used],
                          h[rows])
        coef = fixed.copy()
        coef[used] = y / scale[used]
        # an undetermined coefficient: the least the bounds allow, in feature order
        for j in np.flatnonzero(unused & (fixed == 0)):
            coef[j] = lower[j]
            for row, need in zip(G, h):
                if row[j]:
                    coef[j] = max(coef[j], need - (row @ coef - coef[j]))
        self.coef_ = coef
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=float) @ self.coef_


@dataclass
class FitResult:
    coef: list[float]
    cv_error: float  # median |predicted/measured - 1| over grouped CV folds
    interval: tuple[float, float]  # 5 % and 95 % quantiles of measured/predicted
    n_samples: int
    n_groups: int
    features: tuple[str, ...] = FEATURES
    model: str = MODEL_NAME
    ceiling: Ceiling | None = None
    cv_predictions: np.ndarray | None = None  # each sample's prediction by the fold that left its network out

    def as_profile_entry(self) -> dict:
        return {"model": self.model, "features": list(self.features), "coef": self.coef,
                "cv_error": self.cv_error, "interval": list(self.interval),
                "n_samples": self.n_samples, "ceiling": self.ceiling and self.ceiling.as_dict()}


def fit_op(X: np.ndarray, t: np.ndarray, groups: np.ndarray, n_splits: int = 5,
           features: tuple[str, ...] = FEATURES, ceiling: Ceiling | None = None,
           pin_flops: bool = False) -> FitResult:
    """Fit one op kind (X's columns are `features`) within `ceiling` and estimate its error by
    grouped cross-validation (every fold fitted within the same ceiling); `pin_flops`: the
    FLOP term at the ceiling's peak (flops_at_peak, OpTimeModel)."""
    from sklearn.model_selection import GroupKFold

    X, t, groups = np.asarray(X, float), np.asarray(t, float), np.asarray(groups)
    t = np.where(t > 0, t, T_FLOOR)
    n_groups = len(np.unique(groups))
    model = OpTimeModel(features, ceiling, pin_flops).fit(X, t)
    if n_groups >= 2:
        cv_pred = np.empty_like(t)
        for train, test in GroupKFold(n_splits=min(n_splits, n_groups)).split(X, t, groups):
            cv_pred[test] = OpTimeModel(features, ceiling, pin_flops).fit(X[train], t[train]).predict(X[test])
    else:  # one group: in-sample residuals are all there is
        cv_pred = model.predict(X)
    cv_pred = np.maximum(cv_pred, 1e-12)
    ratio = t / cv_pred
    return FitResult(
        coef=[float(c) for c in model.coef_],
        cv_error=float(np.median(np.abs(1.0 / ratio - 1.0))),
        interval=_bounded_interval(ratio),
        n_samples=int(len(t)),
        n_groups=n_groups,
        features=tuple(features),
        model=(PINNED_MODEL if model.pinned() is not None else
               BOUNDED_MODEL_NAME if ceiling is not None else MODEL_NAME),
        ceiling=ceiling,
        cv_predictions=cv_pred,
    )


def _bounded_interval(ratio: np.ndarray) -> tuple[float, float]:
    """The 5 % and 95 % quantiles of measured/predicted, within the profile's bounds
    (1/MAX_INTERVAL .. MAX_INTERVAL): an op a fold predicts almost nothing for, measured on a
    loaded machine, gave 1128 and a profile that would not validate (a tiny calibration beside
    a 2-core test run, 2026-12-01); the bound says the same thing, that the model misses it."""
    from costmodel.machine.machine_facts import MAX_INTERVAL

    low, high = (float(np.clip(np.quantile(ratio, q), 1 / MAX_INTERVAL, MAX_INTERVAL)) for q in (0.05, 0.95))
    return low, high


#: the step intervals by size need at least this many calibration networks in each half
MIN_SIZE_CLASS_NETWORKS = 20


def step_interval(seconds: np.ndarray, cv_predictions: np.ndarray, groups: np.ndarray) -> dict:
    """A 90 % interval of a whole step's time, from the fit's residuals by network: for every
    calibration network, its measured step (the sum of its samples' seconds) over its
    cross-validated predicted step (the sum of its samples' predictions by the folds that left
    the network out); the interval is the 5 % and 95 % quantiles of that ratio over the
    networks, and `cv_error` its median |predicted/measured - 1|. Errors of a network's ops that
    cancel, or add up, are in it as they are in a real step (a sum of the ops' own quantiles is
    not: it assumes every op misses the same way).

    The ratio's spread depends on the step's size (per-call overheads and the noise of short
    steps weigh more in a small one), so the networks are also split at the median of their
    cross-validated predicted steps, and each half gets its own interval
    (`step_intervals_by_size`, when each half has MIN_SIZE_CLASS_NETWORKS; predict takes the
    half of its own predicted step). Measured on captured sweeps (2026-12-01): below and above
    the split, the NumPy index implementation's half-widths were 22-27 % and 5-10 %; over the
    held-out steps of benchmarks/accuracy.py, the two halves gave 88 % (NumPy) and 90 % (torch)
    coverage at median half-widths of 24 % and 22 %, against 100 % and 93 % at 29 % and 28 % for
    one interval of all networks."""
    seconds = np.where(np.asarray(seconds, float) > 0, seconds, T_FLOOR)
    groups = np.asarray(groups)
    points = np.unique(groups)
    measured = np.array([seconds[groups == g].sum() for g in points])
    predicted = np.array([np.asarray(cv_predictions)[groups == g].sum() for g in points])
    ratio = measured / np.maximum(predicted, 1e-12)
    by_size = []
    split = float(np.median(predicted))
    small = predicted < split
    if min(small.sum(), (~small).sum()) >= MIN_SIZE_CLASS_NETWORKS:
        by_size = [{"below_seconds": below, "interval": list(_bounded_interval(ratio[sel])),
                    "networks": int(sel.sum())} for below, sel in ((split, small), (None, ~small))]
    return {"step_interval": list(_bounded_interval(ratio)),
            "step_cv_error": float(np.median(np.abs(1.0 / ratio - 1.0))), "step_networks": int(len(points)),
            "step_intervals_by_size": by_size}


def over_ceiling(model, rtol: float = 1e-6) -> list[str]:
    """The rates of a fitted op model (costmodel.machine.profile.OpModel) above the ceiling it
    was fitted under, as text ('84 GFLOP/s > 80 GFLOP/s peak'); empty when all are within, or
    when the model has no ceiling."""
    ceiling = model.ceiling
    if ceiling is None:
        return []
    coef = dict(zip(model.features, model.coef))
    out = []
    if ceiling.flops_per_second and coef.get("flops", 0) > 0:
        if 1 / coef["flops"] > ceiling.flops_per_second * (1 + rtol):
            out.append(f"{1 / coef['flops']:.3g} FLOP/s > {ceiling.flops_per_second:.3g} FLOP/s peak")
    for level, bw in ceiling.bytes_per_second.items():
        terms = [f for f in LEVEL_FEATURES[level] if f in coef]
        if terms and terms[-1] == LEVEL_FEATURES[level][-1]:
            cost = sum(coef[f] for f in terms)
            if cost <= 0 or 1 / cost > bw * (1 + rtol):
                rate = "no cost" if cost <= 0 else f"{1 / cost:.3g} B/s"
                out.append(f"{rate} at level {level} > {bw:.3g} B/s")
    return out
