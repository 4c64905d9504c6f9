"""Fit of the per-op time models over the symbolic features (scikit-learn conventions).

One `OpTimeModel` per op kind: a non-negative linear model over costmodel.machine.features.FEATURES,
fitted on relative error, each sample's squared relative error weighted by its time t (a
sample weight of 1/t on the squared residual): a 10 us op still counts, but the large ops that
make up most of a step count more (measured: with pure relative error, 1/t^2, the median
step-time error of benchmarks/accuracy.py's strided float32 set was 10.0 %, with 1/t 4.8 %),
with grouped cross-validation (the groups are the sweep's architectures, so an
architecture is never both in the training and in the validation folds) and prediction
intervals from the cross-validated residual ratios.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from costmodel.machine.timemodel import FEATURES

MODEL_NAME = "nnls-linear"
#: a time of 0 is read as this: torch.profiler's resolution is 1 us, and an op group whose
#: time it reports as 0 (an "other" with no gap) would otherwise get an infinite weight
T_FLOOR = 1e-6


class OpTimeModel:
    """t = X @ coef_, coef_ >= 0, fitted by least squares on relative error weighted by t."""

    def __init__(self, features: tuple[str, ...] = FEATURES):
        self.features = features

    def fit(self, X: np.ndarray, t: np.ndarray) -> "OpTimeModel":
        from sklearn.linear_model import LinearRegression

        X = np.asarray(X, dtype=float)
        t = np.asarray(t, dtype=float)
        scale = np.abs(X).max(axis=0)
        scale[scale == 0] = 1.0
        reg = LinearRegression(fit_intercept=False, positive=True)
        # weight 1/t^2 would make each residual a relative error; 1/t weighs those by t
        reg.fit(X / scale, t, sample_weight=1.0 / t)
        self.coef_ = reg.coef_ / scale
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

    def as_profile_entry(self) -> dict:
        return {"model": MODEL_NAME, "features": list(self.features), "coef": self.coef,
                "cv_error": self.cv_error, "interval": list(self.interval),
                "n_samples": self.n_samples}


def fit_op(X: np.ndarray, t: np.ndarray, groups: np.ndarray, n_splits: int = 5,
           features: tuple[str, ...] = FEATURES) -> FitResult:
    """Fit one op kind (X's columns are `features`) and estimate its error by grouped
    cross-validation."""
    from sklearn.model_selection import GroupKFold

    X, t, groups = np.asarray(X, float), np.asarray(t, float), np.asarray(groups)
    t = np.where(t > 0, t, T_FLOOR)
    n_groups = len(np.unique(groups))
    model = OpTimeModel(features).fit(X, t)
    if n_groups >= 2:
        cv_pred = np.empty_like(t)
        for train, test in GroupKFold(n_splits=min(n_splits, n_groups)).split(X, t, groups):
            cv_pred[test] = OpTimeModel(features).fit(X[train], t[train]).predict(X[test])
    else:  # one group: in-sample residuals are all there is
        cv_pred = model.predict(X)
    cv_pred = np.maximum(cv_pred, 1e-12)
    ratio = t / cv_pred
    return FitResult(
        coef=[float(c) for c in model.coef_],
        cv_error=float(np.median(np.abs(1.0 / ratio - 1.0))),
        interval=(float(np.quantile(ratio, 0.05)), float(np.quantile(ratio, 0.95))),
        n_samples=int(len(t)),
        n_groups=n_groups,
        features=tuple(features),
    )
