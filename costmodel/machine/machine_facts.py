"""The parts of a profile that describe the machine and one op's model: the fingerprint, the
measured ceilings, the probe and its transfer, and OpModel (seconds per unit of each feature);
costmodel.machine.profile holds them in its Profile."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from costmodel.model.arch import DTYPES

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]

#: a coefficient is seconds per unit of its feature (per FLOP, per byte, per call): above one
#: second per unit no machine is described, and the products with int64 counts would overflow
MAX_COEF = 1.0
#: measured/predicted quantiles of the prediction interval
MAX_INTERVAL = 1e3
#: physically possible ceilings: above an exaFLOP/s or 10 PB/s, below 1 per second, a
#: number is not a measurement of a CPU
CEILING_RANGE = {"FLOP/s": (1.0, 1e18), "B/s": (1.0, 1e16), "FLOP/B": (1e-9, 1e9)}
Coefficient = Annotated[float, Field(ge=0, le=MAX_COEF)]


class StrictModel(BaseModel):
    #: defer_build: validators are built at first use (the whole Profile's once, when a profile is
    #: loaded), not one per class at import (a cold start's cost)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, defer_build=True)


class BlasInfo(StrictModel):
    """One BLAS library loaded by NumPy, as threadpoolctl reports it (filepath: basename only)."""

    internal_api: str
    version: str | None = None
    threading_layer: str | None = None
    architecture: str | None = None
    num_threads: PositiveInt
    filepath: str


class Fingerprint(StrictModel):
    """What identifies the machine and software a profile was made on."""

    cpu_model: str
    cpu_flags: list[str] = []
    caches: dict[str, PositiveInt] = Field(description="L1d, L1i, L2, L3 -> bytes, as the OS reports them")
    cores: PositiveInt = Field(description="logical CPUs")
    physical_cores: PositiveInt | None = None
    numpy_version: str
    blas: list[BlasInfo] = []
    threads: PositiveInt = Field(description="BLAS threads in effect when the fingerprint was taken")
    python: str
    platform: str
    machine: str
    # since issue 11 (optional: older profiles load without them)
    cpu_vendor: str | None = Field(None, description="cpuinfo's vendor_id (Arm: CPU implementer)")
    cpu_family: str | None = Field(None, description="cpuinfo's cpu family (Arm: CPU architecture)")
    cpu_model_id: str | None = Field(None, description="cpuinfo's model number (Arm: CPU part)")
    cpu_stepping: str | None = Field(None, description="cpuinfo's stepping (Arm: CPU revision)")
    cores_available: PositiveInt | None = Field(None, description="logical CPUs the process may run on "
                                                "(os.sched_getaffinity)")
    torch_version: str | None = Field(None, description="the installed torch, from its metadata")


class BandwidthPoint(StrictModel):
    working_set_bytes: PositiveInt
    bytes_per_second: PositiveFloat


class PeakPoint(StrictModel):
    """The best FLOP/s measured for one backend's products (numpy: np.matmul; torch: torch.mm and
    conv2d) of one dtype with `threads` threads."""

    backend: str = "numpy"
    dtype: Literal[DTYPES]
    threads: PositiveInt
    flops_per_second: PositiveFloat


class Ceilings(StrictModel):
    """Measured ceilings. Matrix products ran with `threads` BLAS threads; the bandwidth probe
    is a NumPy ufunc (single-threaded), counting every array it reads and writes once.
    machine_balance is peak FLOP/s over the bandwidth of the largest working set (memory)."""

    threads: PositiveInt
    matmul_flops_per_second: dict[str, PositiveFloat]
    bandwidth: list[BandwidthPoint] = Field(min_length=1)
    machine_balance: dict[str, PositiveFloat]
    peaks: list[PeakPoint] = Field([], description="peak FLOP/s by backend, dtype and threads (the fit's bounds)")


def increasing(interval):
    """`interval` (low, high) when low <= high (or None), else a ValueError naming it."""
    if interval is not None and interval[0] > interval[1]:
        raise ValueError(f"interval {list(interval)} is not increasing")
    return interval


#: a load record's reasons and notes: each one line (calib.noise writes them) of bounded length
MAX_REASONS = 32
Reason = Annotated[str, Field(max_length=500, pattern=r"^[^\n\r]*$")]


class LoadRecord(StrictModel):
    """The load on the machine while a calibration (or measurement) ran (calib.noise)."""

    wall_seconds: Annotated[float, Field(ge=0)]
    cores_available: PositiveInt
    other_cpu: Annotated[float, Field(ge=0, le=1)] = Field(description="other processes' CPU time over the "
                                                           "available cores' time")
    steal: Annotated[float, Field(ge=0, le=1)] = Field(description="steal time over the available cores' time")
    spread: Annotated[float, Field(ge=0)] | None = Field(None, description="median relative spread of "
                                                         "repeated samples, weighted by time")
    disturbed: bool
    reasons: list[Reason] = Field([], max_length=MAX_REASONS)
    notes: list[Reason] = Field([], max_length=MAX_REASONS, description="what varied without proving other "
                                "load (a spread above its limit, the cores' hand-off)")
    handoff_seconds: list[PositiveFloat] = Field([], max_length=1024, description="the cores' hand-off sampled "
                                                 "during the run "
                                                 "(calib.noise.handoff_seconds), in seconds")

    @model_validator(mode="after")
    def _verdict_has_reasons(self) -> "LoadRecord":
        if self.disturbed != bool(self.reasons):
            raise ValueError("disturbed must be true exactly when reasons are given")
        return self


class ProductRate(StrictModel):
    """A probed product rate: an (m x k) @ (k x n) product (torch 'conv': a convolution with
    the same FLOPs) of one shape class."""

    backend: str = "numpy"
    dtype: Literal[DTYPES]
    threads: PositiveInt
    shape: str
    m: PositiveInt
    k: PositiveInt
    n: PositiveInt
    flops_per_second: PositiveFloat


class LevelRate(StrictModel):
    level: Literal["L1", "L2", "L3", "memory"]
    working_set_bytes: PositiveInt
    bytes_per_second: PositiveFloat


class Probe(StrictModel):
    """A short probe of a machine (calib.probe): product rate by shape class, dtype and threads,
    bandwidth by working-set level, and the time of one call of a tiny op per backend."""

    products: list[ProductRate] = []
    bandwidth: list[LevelRate] = []
    call_seconds: dict[str, PositiveFloat] = {}
    seconds: Annotated[float, Field(ge=0)] = 0.0


class Transfer(StrictModel):
    """Where a transferred profile came from (costmodel.machine.transfer)."""

    rule: str = Field(description="the transfer rule (costmodel.machine.transfer.RULE)")
    source_fingerprint: Fingerprint = Field(description="the machine the profile was made on")
    source_probe: Probe = Field(description="that machine's probe")


class OpCeiling(StrictModel):
    """The ceilings an op model was fitted under (calib.fit): its per-FLOP rate at most
    `flops_per_second`, its effective per-byte rate at each working-set level ("L2": in cache,
    "L3": beyond L2, "memory": beyond L3) at most bytes_per_second[level]; both measured for
    the `threads` the op runs on."""

    threads: PositiveInt = 1
    flops_per_second: PositiveFloat | None = None
    bytes_per_second: dict[Literal["L2", "L3", "memory"], PositiveFloat] = {}


class OpModel(StrictModel):
    """A fitted model of one op's time: seconds from named features (see the module docstring)."""

    model: str
    features: list[str] = Field(min_length=1)
    coef: list[Coefficient] = Field(description="seconds per unit of each feature: finite, 0 .. MAX_COEF")
    cv_error: Annotated[float, Field(ge=0)] | None = Field(
        None, description="median relative error of grouped cross-validation")
    interval: tuple[Annotated[float, Field(gt=0, le=MAX_INTERVAL)], Annotated[float, Field(gt=0, le=MAX_INTERVAL)]] = \
        Field(description="low and high quantiles of measured/predicted time")
    n_samples: PositiveInt
    ceiling: OpCeiling | None = Field(None, description="the ceilings the model was fitted under")

    @model_validator(mode="after")
    def _consistent(self) -> "OpModel":
        if len(self.coef) != len(self.features):
            raise ValueError(f"{len(self.features)} features but {len(self.coef)} coefficients")
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"a feature is listed twice in {self.features}")
        increasing(self.interval)
        return self
