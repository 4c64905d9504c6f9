"""Train the reference CNN on a small data set, to show that it learns (not to be fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from costmodel.model.arch import Architecture
from costmodel.errors import UsageError

from calib.cnn import ReferenceCNN, one_hot, to_layout
from calib.memory import check_memory


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import zipfile

    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UsageError(f"{path}: not a readable .npz file ({exc.__class__.__name__})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise UsageError(f"{path}: not an .npz archive (one array; expected arrays X and y)")
    with data:
        missing = [key for key in ("X", "y") if key not in data.files]
        if missing:
            raise UsageError(f"{path}: missing array {' and '.join(missing)} "
                             "(expected X (N, H, W, C) and y (N,))")
        try:
            return data["X"], data["y"]
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise UsageError(f"{path}: cannot read its arrays ({exc.__class__.__name__})") from None


def load_data(data: str | Path, arch: Architecture):
    """(X_train, y_train, X_test, y_test), images (N, height, width, channels).

    "digits" is scikit-learn's 8x8 digits scaled to [0, 1]; anything else is an .npz file
    with X (N, H, W, C) (used as given) and y (N,) integer labels. Both are split the same
    way: train_test_split(test_size=0.25, random_state=0, stratified by label).
    """
    from sklearn.model_selection import train_test_split

    if str(data) == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        X, y, where = digits.images[..., np.newaxis] / 16.0, digits.target, "digits"
    else:
        path = Path(data)
        X, y = _load_npz(path)
        where = str(path)
    shape = (arch.input.height, arch.input.width, arch.input.channels)
    if X.ndim != 4 or X.shape[1:] != shape:
        raise UsageError(f"{where}: X has shape {X.shape}, but {arch.name} takes (N, {shape[0]}, "
                         f"{shape[1]}, {shape[2]}) images")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise UsageError(f"{where}: X has dtype {X.dtype}, expected real numbers")
    if y.shape != (X.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise UsageError(f"{where}: y must hold {X.shape[0]} integer labels, got shape {y.shape} "
                         f"and dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= arch.n_classes):
        raise UsageError(f"{where}: labels must lie in 0..{arch.n_classes - 1} "
                         f"(the output layer has {arch.n_classes} units)")
    try:
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=0.25, random_state=0, stratify=y)
    except ValueError as exc:
        raise UsageError(f"{where}: cannot split into train and test sets: {exc}") from None
    return X_train, y_train, X_test, y_test


def accuracy(cnn: ReferenceCNN, X: np.ndarray, y: np.ndarray) -> float:
    """Fraction of instances whose largest output is the label (X in the network's layout)."""
    return float(np.mean(np.argmax(cnn.predict(X), axis=0) == y))


def train(arch: Architecture, data: str | Path = "digits", *, epochs: int = 10,
          batch: int | None = None, impl: str = "index", seed: int = 0,
          progress: Callable[[int, float, float], None] | None = None) -> dict:
    """Train with simpleNN's SG with momentum on shuffled mini-batches (the last one of an
    epoch may be smaller); ``loss`` holds each epoch's mean loss per instance.

    progress(epoch, loss, test_accuracy) is called after every epoch.
    """
    arch = arch.with_batch(batch)
    X_train, y_train, X_test, y_test = load_data(data, arch)
    check_memory(arch, impl)
    cnn = ReferenceCNN(arch, impl=impl, seed=seed)
    rng = np.random.default_rng(seed)
    X_train, X_test = to_layout(X_train, arch), to_layout(X_test, arch)
    Y_train = one_hot(y_train, arch.n_classes, arch.dtype)
    n = y_train.shape[0]
    losses = []
    for epoch in range(1, epochs + 1):
        order = rng.permutation(n)
        total = 0.0
        for start in range(0, n, arch.batch):
            chosen = order[start:start + arch.batch]
            total += cnn.step(X_train[:, chosen], Y_train[:, chosen])
        losses.append(total / n)
        if progress is not None:
            progress(epoch, losses[-1], accuracy(cnn, X_test, y_test))
    return {
        "arch": arch.name,
        "epochs": epochs,
        "batch": arch.batch,
        "loss": losses,
        "train_accuracy": accuracy(cnn, X_train, y_train),
        "test_accuracy": accuracy(cnn, X_test, y_test),
    }
