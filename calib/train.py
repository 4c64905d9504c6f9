"""Train the reference CNN on a small data set, to show that it learns (not to be fast)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from costmodel.model.arch import Architecture
from costmodel.errors import UsageError

from calib.cnn import ReferenceCNN, one_hot, to_layout
from calib.memory import check_memory


#: the members of a training .npz (np.savez(path, X=X, y=y)) and the arrays they hold
MEMBERS = {"X.npy": "X", "y.npy": "y"}
#: a member expanding more than this (uncompressed / compressed) is taken for a zip bomb, once
#: it is larger than BOMB_MIN_BYTES: deflate reaches ~1000:1 only on nearly constant data
MAX_RATIO = 200
BOMB_MIN_BYTES = 64 << 20


def _header(zf, info, path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, bytes of its data) from a member's .npy header, reading only the header."""
    from numpy.lib import format as npy

    with zf.open(info) as fp:
        version = npy.read_magic(fp)
        read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _, dtype = read(fp)
        header = fp.tell()
    if dtype.hasobject:
        raise UsageError(f"{path}: {info.filename} holds Python objects ({dtype}); expected numbers")
    if any(not isinstance(n, int) or n < 0 for n in shape):
        raise UsageError(f"{path}: {info.filename} has an impossible shape {shape}")
    nbytes = math.prod(shape) * dtype.itemsize
    if header + nbytes != info.file_size:
        raise UsageError(f"{path}: {info.filename}: its header describes {header + nbytes:,} bytes "
                         f"({shape}, {dtype}), but the archive declares {info.file_size:,}: a damaged file")
    return shape, dtype, nbytes


def _open_regular(path: Path):
    """A binary file object of the regular file at `path` (a FIFO, device or directory refused)."""
    import os
    import stat

    from costmodel.files import file_kind

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc.__class__.__name__}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UsageError(f"{path}: {file_kind(mode)}, not a regular file: expected an .npz archive")
    return os.fdopen(fd, "rb")


def _load_npz(path: Path, arch: Architecture | None = None, limit=None) -> tuple[np.ndarray, np.ndarray]:
    """X and y of an .npz archive, checked before they are read: the archive holds exactly
    X.npy and y.npy; each header (shape, dtype, size, read alone) agrees with the size the
    archive declares, with `arch` (X (N, height, width, channels) of real numbers, y (N,)
    integers) and with the memory this process may use; no member expands like a zip bomb.
    Only then are the arrays read, each at most its declared size."""
    import zipfile

    from calib.memory import GiB, memory_limit

    errors = (OSError, ValueError, zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError)
    with _open_regular(path) as fh:
        try:
            if fh.read(6) == b"\x93NUMPY":
                raise UsageError(f"{path}: not an .npz archive (one array; expected arrays X and y)")
            fh.seek(0)
            zf = zipfile.ZipFile(fh)
        except errors as exc:
            raise UsageError(f"{path}: not a readable .npz archive ({exc.__class__.__name__})") from None
        with zf:
            names = zf.namelist()
            if len(set(names)) != len(names):
                twice = next(n for n in names if names.count(n) > 1)
                raise UsageError(f"{path}: the member {twice!r} appears twice in the archive")
            missing = [MEMBERS[n] for n in MEMBERS if n not in names]
            bare = [n for n in names if n in MEMBERS.values()]
            if missing and bare:
                raise UsageError(f"{path}: the members {', '.join(map(repr, bare))} must be .npy arrays named "
                                 "X.npy and y.npy, as np.savez(path, X=X, y=y) writes them")
            if missing:
                raise UsageError(f"{path}: missing array {' and '.join(missing)} "
                                 "(expected X (N, H, W, C) and y (N,))")
            unknown = [n for n in names if n not in MEMBERS]
            if unknown:
                raise UsageError(f"{path}: unexpected member {unknown[0][:60]!r} (an .npz for train holds "
                                 "X.npy and y.npy only)")
            headers = {}
            for name in MEMBERS:
                info = zf.getinfo(name)
                ratio = info.file_size / max(info.compress_size, 1)
                if info.file_size > BOMB_MIN_BYTES and ratio > MAX_RATIO:
                    raise UsageError(f"{path}: {name} expands {ratio:.0f}:1 to {info.file_size / GiB:.1f} GiB "
                                     f"(more than {MAX_RATIO}:1: a zip bomb?); save it with np.savez")
                try:
                    headers[MEMBERS[name]] = _header(zf, info, path)
                except errors as exc:
                    raise UsageError(f"{path}: {name} is not a readable .npy array "
                                     f"({exc.__class__.__name__})") from None
            (x_shape, x_dtype, x_bytes), (y_shape, y_dtype, y_bytes) = headers["X"], headers["y"]
            if arch is not None:
                _check_shapes(str(path), arch, x_shape, x_dtype, y_shape, y_dtype)
                limit = limit or memory_limit()
                need = x_bytes + y_bytes + 3 * math.prod(x_shape) * arch.itemsize  # + the split, the layout
                if limit.bytes is not None and need > limit.bytes:
                    raise UsageError(f"{path}: X is {x_bytes / GiB:.1f} GiB ({x_shape}, {x_dtype}); training "
                                     f"on it needs about {need / GiB:.1f} GiB, but only "
                                     f"{limit.bytes / GiB:.1f} GiB is available ({limit.source})")
            try:
                arrays = []
                for name in MEMBERS:
                    with zf.open(name) as fp:
                        arrays.append(np.lib.format.read_array(fp, allow_pickle=False))
            except errors as exc:
                raise UsageError(f"{path}: cannot read its arrays ({exc.__class__.__name__})") from None
    return arrays[0], arrays[1]


def _check_shapes(where: str, arch: Architecture, x_shape, x_dtype, y_shape, y_dtype) -> None:
    """X (N, height, width, channels) of real numbers and y (N,) integers, for `arch`."""
    shape = (arch.input.height, arch.input.width, arch.input.channels)
    if len(x_shape) != 4 or tuple(x_shape[1:]) != shape:
        raise UsageError(f"{where}: X has shape {tuple(x_shape)}, but {arch.name} takes (N, {shape[0]}, "
                         f"{shape[1]}, {shape[2]}) images")
    if not np.issubdtype(x_dtype, np.number) or np.issubdtype(x_dtype, np.complexfloating):
        raise UsageError(f"{where}: X has dtype {x_dtype}, expected real numbers")
    if tuple(y_shape) != (x_shape[0],) or not np.issubdtype(y_dtype, np.integer):
        raise UsageError(f"{where}: y must hold {x_shape[0]} integer labels, got shape {tuple(y_shape)} "
                         f"and dtype {y_dtype}")


def load_data(data: str | Path, arch: Architecture):
    """(X_train, y_train, X_test, y_test), images (N, height, width, channels).

    "digits" is scikit-learn's 8x8 digits scaled to [0, 1]; anything else is an .npz file
    with X (N, H, W, C) (used as given) and y (N,) integer labels. Both are split the same
    way: train_test_split(test_size=0.25, random_state=0, stratified by label).
    """
    if str(data) == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        X, y, where = digits.images[..., np.newaxis] / 16.0, digits.target, "digits"
    else:
        path = Path(data)
        X, y = _load_npz(path, arch)
        where = str(path)
    _check_shapes(where, arch, X.shape, X.dtype, y.shape, y.dtype)
    if np.issubdtype(X.dtype, np.floating) and not np.isfinite(X).all():
        bad = int(np.size(X) - np.count_nonzero(np.isfinite(X)))
        raise UsageError(f"{where}: X holds {bad} values that are not finite (NaN or infinity)")
    if y.size and (y.min() < 0 or y.max() >= arch.n_classes):
        raise UsageError(f"{where}: labels must lie in 0..{arch.n_classes - 1} "
                         f"(the output layer has {arch.n_classes} units)")
    from sklearn.model_selection import train_test_split  # after the checks: ~1 s and ~100 MB to import

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
        if not math.isfinite(total):
            raise UsageError(f"{arch.name}: training diverged in epoch {epoch}: the loss is {total} "
                             f"(optimizer lr {arch.optimizer.lr:g}, momentum {arch.optimizer.momentum:g}: "
                             "try a smaller lr, or scale X)")
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
