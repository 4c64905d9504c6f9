"""What every backend's rows are: typed keys (`ModelKey`), rows (`Row`) and the `Backend`
protocol with its registry (costmodel.machine.backends)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Protocol

if TYPE_CHECKING:
    from costmodel.machine.timemodel import Machine
    from costmodel.model.arch import Architecture

OTHER = "other"


@dataclass(frozen=True, order=True)
class ModelKey:
    """The op kind a time model is fitted for: the ops it times (one, or a fused group) and a
    variant (the loss for the loss ops; the regime of a strided op, "threaded" or "serial"; the
    phase of PyTorch's "other"). Written "op:variant" in a profile file (`str`), read back by
    `parse` when a profile is loaded, nowhere else."""

    ops: tuple[str, ...]
    variant: tuple[str, ...] = ()

    def __str__(self) -> str:
        ops = "+".join(self.ops)
        return f"{ops}:{'+'.join(self.variant)}" if self.variant else ops

    @classmethod
    def parse(cls, text: str) -> "ModelKey":
        ops, _, variant = text.partition(":")
        return cls(tuple(ops.split("+")), tuple(variant.split("+")) if variant else ())


@dataclass(frozen=True)
class Row:
    """One timed row of a step: a single op of the contract or a group of ops that one kernel
    runs (PyTorch's fused convolution), or PyTorch's "other" (ops == ()).

    flops, bytes_read, bytes_written and memory_kept are the row's own costs (0 for "other");
    `basis` holds what its features are computed from (flops and bytes, for "other" those of
    its scope, and a backend's own quantities such as bytes_fresh); `text` and `mathtext` are
    its notation, with $m and $n for layer m's and layer m+1's superscripts."""

    layer: int
    layer_type: str
    ops: tuple[str, ...]
    phase: str
    kind: str
    flops: int
    bytes_read: int
    bytes_written: int
    memory_kept: int
    model: ModelKey
    text: str
    mathtext: str
    basis: Mapping[str, float] = field(default_factory=dict)
    extra: Mapping[str, float] = field(default_factory=dict)  # backend columns shown in outputs
    how: Mapping[str, str] = field(default_factory=dict)  # implementation -> how its kernel does it
    #: the key a profile made before `model` was split off priced this row by (predict_rows:
    #: NumPy's outer products, PyTorch's depthwise convolutions), None when the row's model is
    #: as old as profiles
    legacy_model: ModelKey | None = None

    @property
    def name(self) -> str:
        """The row's op, or its ops joined with "+", or "other"."""
        return "+".join(self.ops) if self.ops else OTHER

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.layer, self.name, self.phase)


class Backend(Protocol):
    name: str
    impls: tuple[str, ...]

    def rows(self, arch: "Architecture", impl: str, threads: int, machine: "Machine") -> list[Row]: ...

    def features(self, model: ModelKey, impl: str = "") -> tuple[str, ...]:
        """The features of `model`'s fit in implementation `impl` (timemodel.ALL_FEATURES)."""
        ...

    def calibration_hint(self, dtype: str, impl: str, threads: int) -> str: ...

    def setting(self, impl: str) -> str: ...


BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    if backend.name in BACKENDS:
        raise ValueError(f"backend {backend.name!r} is registered twice")
    BACKENDS[backend.name] = backend
    return backend
