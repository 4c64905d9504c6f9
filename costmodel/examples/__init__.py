"""The architecture files shipped with costmodel (simpleNN's networks and a few more): a
pip-installed user runs `costmodel predict --example mnist-demo-layer4`, and `costmodel
examples` lists them."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from costmodel.errors import UsageError


def example_paths() -> dict[str, Path]:
    """name -> path of every shipped architecture file, by name."""
    folder = Path(str(resources.files("costmodel.examples")))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def example_path(name: str) -> Path:
    """The shipped architecture file `name` (without .yaml); a one-line error listing the names."""
    paths = example_paths()
    if name not in paths:
        raise UsageError(f"--example {name!r}: no such example; the examples are {', '.join(paths)}")
    return paths[name]


def description(path: Path) -> str:
    """The first comment of an example file: where the network comes from."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    return " ".join(lines)
