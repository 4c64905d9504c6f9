"""train() learns the digits example, and refuses unusable data files with one clear line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calib.train import train
from costmodel.model.arch import load_arch
from costmodel.errors import UsageError
from tests.test_cnn import EXAMPLES

DIGITS = next(p for p in EXAMPLES if p.stem == "digits-small")


def test_digits_example_trains():
    pytest.importorskip("sklearn")
    epochs = []
    result = train(load_arch(DIGITS), "digits", seed=0,
                   progress=lambda epoch, loss, acc: epochs.append((epoch, loss, acc)))
    assert result["arch"] == "digits-small" and result["batch"] == 32
    assert [e for e, _, _ in epochs] == list(range(1, result["epochs"] + 1))
    assert [loss for _, loss, _ in epochs] == result["loss"]
    assert result["loss"][-1] < result["loss"][0]
    assert result["test_accuracy"] >= 0.95
    assert result["train_accuracy"] >= result["test_accuracy"] - 0.05


def test_npz_trains_with_the_same_split(tmp_path):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    digits = load_digits()
    path = tmp_path / "digits.npz"
    np.savez(path, X=digits.images[..., np.newaxis] / 16.0, y=digits.target)
    from_npz = train(load_arch(DIGITS), path, epochs=2, impl="strided")
    builtin = train(load_arch(DIGITS), "digits", epochs=2, impl="strided")
    assert from_npz == builtin


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    X = np.zeros((20, 8, 8, 1))
    y = np.arange(20) % 10
    files = {}

    def npz(name, **arrays):
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        return path

    files["not-npz"] = (tmp_path / "text.npz", "not a readable .npz")
    files["not-npz"][0].write_text("hello")
    files["npy"] = (tmp_path / "single.npy", "not an .npz archive")
    np.save(files["npy"][0], X)
    files["missing-y"] = (npz("missing-y", X=X), "missing array y")
    files["missing-both"] = (npz("missing-both", Z=X), "missing array X and y")
    files["wrong-shape"] = (npz("wrong-shape", X=np.zeros((20, 8, 8)), y=y), "X has shape")
    files["wrong-size"] = (npz("wrong-size", X=np.zeros((20, 9, 8, 1)), y=y), r"takes \(N, 8, 8, 1\)")
    files["float-labels"] = (npz("float-labels", X=X, y=y.astype(float)), "integer labels")
    files["label-range"] = (npz("label-range", X=X, y=y + 5), "labels must lie in 0..9")
    files["too-few"] = (npz("too-few", X=X[:3], y=y[:3]), "cannot split")
    files["missing-file"] = (tmp_path / "nothing.npz", "no such file")
    return files


@pytest.mark.parametrize("case", ["not-npz", "npy", "missing-y", "missing-both", "wrong-shape",
                                  "wrong-size", "float-labels", "label-range", "too-few",
                                  "missing-file"])
def test_bad_npz_files_are_usage_errors(tmp_path, case):
    pytest.importorskip("sklearn")
    path, message = _bad_files(tmp_path)[case]
    with pytest.raises(UsageError, match=message) as info:
        train(load_arch(DIGITS), path, epochs=1)
    text = str(info.value)
    assert text.startswith(str(path)) and "\n" not in text


def test_digits_needs_the_digits_input_shape():
    pytest.importorskip("sklearn")
    with pytest.raises(UsageError, match="digits: X has shape"):
        train(load_arch(next(p for p in EXAMPLES if p.stem == "mnist-mlp")), "digits", epochs=1)
