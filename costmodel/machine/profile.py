"""The machine profile: one versioned JSON file describing a CPU to the cost model.

It holds the machine's fingerprint, its measured ceilings (peak matrix-product FLOP/s,
bandwidth by working-set size) and, per (dtype, impl, threads, backend), one fitted model
per op. This module is the format only: load, save, locate, check and render. It reads no
clock and runs no kernel; `calib` measures and fits, then builds a `Profile` and saves it.

An op model is generic: ``features`` name the quantities it is linear in and ``coef`` are
seconds per unit of each. The features this module reads as machine facts are ``flops``
(a coefficient of s/FLOP is shown as FLOP/s), ``bytes`` and ``bytes_<qualifier>`` such as
``bytes_beyond_L2`` (shown as B/s), and ``calls`` (one per call of the op, shown as time per
call); any other feature is shown as seconds each.
"""

from __future__ import annotations

import json
import os
import weakref
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal, Mapping

from pydantic import (AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from costmodel.units import INT64_MAX
from costmodel import __version__
from costmodel.model.arch import DTYPES
from costmodel.model.messages import loc_to_place, short_repr, first_error
from costmodel.errors import UsageError
from costmodel.files import MiB, atomic_write, read_regular
from costmodel.machine.timemodel import fact, model_facts  # noqa: F401  (model_facts re-exported)
from costmodel.present.report import FORMATS, render_table, to_csv, to_json
from costmodel.units import human, iec as _iec, threads_text as _threads

__all__ = ["SCHEMA_VERSION", "BandwidthPoint", "BlasInfo", "Ceilings", "Entry", "Fingerprint", "model_facts",
           "LevelRate", "LoadRecord", "Network", "NetworkPoint", "OpCeiling", "OpModel", "PeakPoint", "Probe",
           "ProductRate", "Profile", "Transfer", "calibration_hint", "default_profile_path", "embedded_profile_path",
           "fact", "load_profile", "render_profile", "save_profile"]

SCHEMA_VERSION = 1
PROFILE_NAME = "profile.json"
REFERENCE_NAME = "reference_profile.json"

#: features whose coefficient (seconds per unit) reads as a rate: feature -> (rate, unit);
#: a qualified name such as bytes_beyond_L2 reads as the same rate, qualified
#: CPU flags shown in the fingerprint summary when present (x86 and Arm vector units)
SIMD_FLAGS = ("avx512f", "avx2", "fma", "avx", "sse4_2", "asimd", "sve", "sve2")

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]

#: a profile file's size (the reference profile, with every entry, is about 100 KiB)
MAX_PROFILE_BYTES = 16 * MiB
#: a coefficient is seconds per unit of its feature (per FLOP, per byte, per call): above one
#: second per unit no machine is described, and the products with int64 counts would overflow
MAX_COEF = 1.0
#: measured/predicted quantiles of the prediction interval
MAX_INTERVAL = 1e3
#: physically possible ceilings: above an exaFLOP/s or 10 PB/s, below 1 per second, a
#: number is not a measurement of a CPU
CEILING_RANGE = {"FLOP/s": (1.0, 1e18), "B/s": (1.0, 1e16), "FLOP/B": (1e-9, 1e9)}
Coefficient = Annotated[float, Field(ge=0, le=MAX_COEF)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BlasInfo(_Model):
    """One BLAS library loaded by NumPy, as threadpoolctl reports it (filepath: basename only)."""

    internal_api: str
    version: str | None = None
    threading_layer: str | None = None
    architecture: str | None = None
    num_threads: PositiveInt
    filepath: str


class Fingerprint(_Model):
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


class BandwidthPoint(_Model):
    working_set_bytes: PositiveInt
    bytes_per_second: PositiveFloat


class PeakPoint(_Model):
    """The best FLOP/s measured for one backend's products (numpy: np.matmul; torch: torch.mm and
    conv2d) of one dtype with `threads` threads."""

    backend: str = "numpy"
    dtype: Literal[DTYPES]
    threads: PositiveInt
    flops_per_second: PositiveFloat


class Ceilings(_Model):
    """Measured ceilings. Matrix products ran with `threads` BLAS threads; the bandwidth probe
    is a NumPy ufunc (single-threaded), counting every array it reads and writes once.
    machine_balance is peak FLOP/s over the bandwidth of the largest working set (memory)."""

    threads: PositiveInt
    matmul_flops_per_second: dict[str, PositiveFloat]
    bandwidth: list[BandwidthPoint] = Field(min_length=1)
    machine_balance: dict[str, PositiveFloat]
    peaks: list[PeakPoint] = Field([], description="peak FLOP/s by backend, dtype and threads (the fit's bounds)")


class LoadRecord(_Model):
    """The load on the machine while a calibration (or measurement) ran (calib.noise)."""

    wall_seconds: Annotated[float, Field(ge=0)]
    cores_available: PositiveInt
    other_cpu: Annotated[float, Field(ge=0)] = Field(description="other processes' CPU time over the "
                                                     "available cores' time")
    steal: Annotated[float, Field(ge=0)] = Field(description="steal time over the available cores' time")
    spread: Annotated[float, Field(ge=0)] | None = Field(None, description="median relative spread of "
                                                         "repeated samples, weighted by time")
    disturbed: bool
    reasons: list[str] = []


class ProductRate(_Model):
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


class LevelRate(_Model):
    level: Literal["L1", "L2", "L3", "memory"]
    working_set_bytes: PositiveInt
    bytes_per_second: PositiveFloat


class Probe(_Model):
    """A short probe of a machine (calib.probe): product rate by shape class, dtype and threads,
    bandwidth by working-set level, and the time of one call of a tiny op per backend."""

    products: list[ProductRate] = []
    bandwidth: list[LevelRate] = []
    call_seconds: dict[str, PositiveFloat] = {}
    seconds: Annotated[float, Field(ge=0)] = 0.0


class Transfer(_Model):
    """Where a transferred profile came from (costmodel.machine.transfer)."""

    rule: str = Field(description="the transfer rule (costmodel.machine.transfer.RULE)")
    source_fingerprint: Fingerprint = Field(description="the machine the profile was made on")
    source_probe: Probe = Field(description="that machine's probe")


class OpCeiling(_Model):
    """The ceilings an op model was fitted under (calib.fit): its per-FLOP rate at most
    `flops_per_second`, its effective per-byte rate at each working-set level ("L2": in cache,
    "L3": beyond L2, "memory": beyond L3) at most bytes_per_second[level]; both measured for
    the `threads` the op runs on."""

    threads: PositiveInt = 1
    flops_per_second: PositiveFloat | None = None
    bytes_per_second: dict[Literal["L2", "L3", "memory"], PositiveFloat] = {}


class OpModel(_Model):
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
        if self.interval[0] > self.interval[1]:
            raise ValueError(f"interval {list(self.interval)} is not increasing")
        return self


class Entry(_Model):
    """The op models calibrated for one (dtype, impl, threads, backend)."""

    dtype: Literal[DTYPES]
    impl: str = Field(min_length=1)
    threads: PositiveInt
    backend: str = "numpy"
    versions: dict[str, str] = Field({}, description="versions of what the backend ran on, e.g. torch")
    ops: dict[str, OpModel] = Field(min_length=1, description="op name, or 'op:variant' (e.g. loss:mse) -> model")
    sweep: dict[str, int | float] = Field({}, description="how the samples were taken (points, rounds, ...)")
    load: LoadRecord | None = Field(None, description="the machine's load while the entry was calibrated")
    accepted_noisy: bool = Field(False, description="written although disturbed (--accept-noisy)")
    transfer_factors: dict[str, PositiveFloat] = Field(
        {}, description="transferred: the factor each term's coefficient was multiplied by")
    step_interval: tuple[PositiveFloat, PositiveFloat] | None = Field(
        None, description="5 % and 95 % quantiles of measured/predicted whole steps of the calibration's networks, "
                          "each predicted by the folds that left it out (calib.fit.step_interval)")
    step_cv_error: Annotated[float, Field(ge=0)] | None = Field(
        None, description="median |predicted/measured - 1| of those steps")
    step_networks: PositiveInt | None = Field(None, description="networks the step interval comes from")

    @model_validator(mode="after")
    def _known_ops(self) -> "Entry":
        # a NumPy entry models the contract's ops; a torch entry PyTorch's op groups and "other"
        from costmodel.machine.backends import OTHER, ModelKey
        from costmodel.model.ops import op_names

        names = op_names()

        def known(key: str) -> bool:
            ops = ModelKey.parse(key).ops
            if self.backend == "numpy":
                return len(ops) == 1 and ops[0] in names
            return all(op in names or op == OTHER for op in ops)

        unknown = sorted(key for key in self.ops if not known(key))
        if unknown:
            raise ValueError(f"unknown op {unknown[0]!r} (not in the op contract)")
        return self

    def model(self, key) -> "OpModel | None":
        """The model of a ModelKey (costmodel.machine.backends), or None."""
        return self.ops.get(str(key))

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.dtype, self.impl, self.threads, self.backend)

    def describe(self) -> str:
        return _setting(*self.key)


class NetworkPoint(_Model):
    """One message size of the allreduce microbenchmark (calib/parallel/network.py)."""

    message_bytes: PositiveInt
    seconds: PositiveFloat = Field(description="median over the repeats of the slowest worker's time")
    predicted_seconds: Annotated[float, Field(ge=0)]
    error: float = Field(description="predicted / measured - 1")
    fitted: bool = Field(True, description="false: measured and shown, left out of the fit")


class Network(_Model):
    """The network between data-parallel workers as the ring allreduce model's two numbers,
    t(n) = 2 (P-1) alpha + 2 (P-1)/P n beta (costmodel.machine.parallel).

    link: "loopback" (workers on this machine), "measured" (workers on several machines,
    `--init`), or "given" (a link the user does not have: `--link`, `--latency`/`--bandwidth`;
    no points). fit_error and max_error: median and largest |predicted/measured - 1| over the
    fitted points."""

    alpha_seconds: Annotated[float, Field(ge=0)] = Field(description="latency: seconds per message")
    beta_seconds_per_byte: Annotated[float, Field(ge=0)]
    workers: PositiveInt | None = Field(None, description="P the benchmark ran with")
    backend: Literal["gloo"] = "gloo"
    link: Literal["loopback", "measured", "given"]
    name: str | None = Field(None, description="the link's name, e.g. 10GbE")
    points: list[NetworkPoint] = []
    fit_error: Annotated[float, Field(ge=0)] | None = None
    max_error: Annotated[float, Field(ge=0)] | None = None
    repeats: PositiveInt | None = None
    created: AwareDatetime | None = None


class Profile(_Model):
    """One machine profile (schema version 1)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    tool_version: str = __version__
    created: AwareDatetime = Field(description="ISO 8601, stored in UTC")
    fingerprint: Fingerprint
    ceilings: Ceilings
    entries: list[Entry] = []
    calibration_seconds: Annotated[float, Field(ge=0)] | None = None
    probe: Probe | None = Field(None, description="the probe of this profile's machine, for transfers")
    transfer: Transfer | None = Field(None, description="set when the profile was transferred from another machine")
    network: Network | None = Field(None, description="data-parallel SG: `costmodel calibrate --network`")

    @field_validator("created")
    @classmethod
    def _utc(cls, created: datetime) -> datetime:
        return created.astimezone(timezone.utc)

    @model_validator(mode="after")
    def _unique_entries(self) -> "Profile":
        seen = set()
        for entry in self.entries:
            if entry.key in seen:
                raise ValueError(f"two entries for {entry.describe()}")
            seen.add(entry.key)
        return self

    @model_validator(mode="after")
    def _possible_ceilings(self) -> "Profile":
        ceil = self.ceilings
        checks = ([(f"ceilings: matmul_flops_per_second: {k}", v, "FLOP/s")
                   for k, v in ceil.matmul_flops_per_second.items()]
                  + [(f"ceilings: bandwidth[{i}]: bytes_per_second", p.bytes_per_second, "B/s")
                     for i, p in enumerate(ceil.bandwidth)]
                  + [(f"ceilings: machine_balance: {k}", v, "FLOP/B") for k, v in ceil.machine_balance.items()])
        for where, value, unit in checks:
            low, high = CEILING_RANGE[unit]
            if not low <= value <= high:
                raise ValueError(f"{where}: {value:.3g} {unit} is not a measurement of a CPU "
                                 f"(expected {low:g} .. {high:g})")
        return self

    def entry(self, dtype: str, impl: str, threads: int, backend: str = "numpy") -> Entry:
        """The entry calibrated for these settings, or an error naming the command that makes it."""
        for entry in self.entries:
            if entry.key == (dtype, impl, threads, backend):
                return entry
        command = calibration_hint(dtype, impl, threads, backend)
        has = "; ".join(e.describe() for e in self.entries) or "nothing"
        source = _SOURCES.get(id(self))
        raise UsageError(f"{source + ': ' if source else ''}"
                         f"the profile has no entry for {_setting(dtype, impl, threads, backend)}: "
                         f"run `{command}` (it has: {has})")


def calibration_hint(dtype: str, impl: str, threads: int, backend: str = "numpy") -> str:
    """The command that calibrates the entry for these settings."""
    from costmodel.machine.backends import backend as get_backend

    return get_backend(backend).calibration_hint(dtype, impl, threads)


# -- files -----------------------------------------------------------------------------------

def default_profile_path() -> Path:
    """$XDG_CACHE_HOME/costmodel/profile.json, by default ~/.cache/costmodel/profile.json."""
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(cache) if os.path.isabs(cache) else Path.home() / ".cache"  # XDG: ignore relative
    return base / "costmodel" / PROFILE_NAME


def embedded_profile_path() -> Path:
    """The reference profile shipped inside the package (costmodel/data/reference_profile.json)."""
    return Path(str(resources.files("costmodel") / "data" / REFERENCE_NAME))


def save_profile(profile: Profile, path: str | Path) -> None:
    """Write the profile atomically: a reader sees the old file or the new one, never a part."""
    try:
        atomic_write(path, profile.model_dump_json(indent=2) + "\n")
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the profile: {exc.strerror or exc}") from None


#: id(profile) -> the file it was loaded from, for errors found after loading (Profile.entry)
_SOURCES: dict[int, str] = {}


class _Duplicates(dict):
    """A JSON object in which a key was given twice (`key`: the first such key)."""

    key: str = ""


def _object(pairs: list[tuple[str, object]]) -> dict:
    """json's object_pairs_hook: a dict, marked when a key repeats (the place is found later)."""
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        data = _Duplicates(data)
        data.key = next(k for k, _ in pairs if k in seen or seen.add(k))
    return data


def _find(data, loc=()):
    """(loc, problem) of the first duplicate key or integer beyond int64 in parsed JSON, or None."""
    stack = [(data, loc)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, _Duplicates):
            return where, f"duplicate key {short_repr(value.key)} (a key may appear once in an object)"
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
            return where, f"{short_repr(value)} is beyond int64"
        if isinstance(value, dict):
            stack.extend((v, (*where, k)) for k, v in reversed(list(value.items())))
        elif isinstance(value, list):
            stack.extend((v, (*where, i)) for i, v in reversed(list(enumerate(value))))
    return None


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile; every problem is one UsageError line naming the file and the
    place (exit status 2).

    The file must be a regular file of at most MAX_PROFILE_BYTES of UTF-8 JSON; a key given twice
    in one object is refused (json would keep the last); values are validated strictly, as JSON
    types (the string "1e-6" is not a number): finite, coefficients in 0 .. MAX_COEF seconds per
    unit, ceilings physically possible, integers within int64.
    """
    raw = read_regular(path, limit=MAX_PROFILE_BYTES, what="profile", error=UsageError,
                       missing="no such profile: run `costmodel calibrate` to make one")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: cannot read the profile: UnicodeDecodeError (not UTF-8 text)") from None
    try:
        data = json.loads(text, object_pairs_hook=_object)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                         "the file is damaged: run `costmodel calibrate` again") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise UsageError(f"{path}: not a costmodel profile ({str(exc).split(';')[0][:80]})") from None
    except RecursionError:
        raise UsageError(f"{path}: not a costmodel profile (JSON nested too deeply)") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: not a costmodel profile (a JSON {type(data).__name__}, not an object)")
    if "schema_version" not in data:
        raise UsageError(f"{path}: not a costmodel profile (no schema_version)")
    version = data["schema_version"]
    if version != SCHEMA_VERSION or not isinstance(version, int) or isinstance(version, bool):
        raise UsageError(f"{path}: schema version {short_repr(version)}, this costmodel reads version "
                         f"{SCHEMA_VERSION}: run `costmodel calibrate` again")
    found = _find(data)
    if found is not None:
        where, problem = found
        raise UsageError(f"{path}: {loc_to_place(where, Profile)}{problem}")
    try:
        profile = Profile.model_validate_json(text, strict=True)
    except ValidationError as exc:
        raise UsageError(f"{path}: {first_error(exc, Profile)}") from None
    _SOURCES[id(profile)] = str(path)
    weakref.finalize(profile, _SOURCES.pop, id(profile), None)
    return profile


# -- rendering -------------------------------------------------------------------------------

def _setting(dtype: str, impl: str, threads: int, backend: str) -> str:
    """'float32, impl index, 2 threads' (and the backend when it is not NumPy)."""
    text = f"{dtype}, impl {impl}, {_threads(threads)}"
    return text if backend == "numpy" else f"{text}, backend {backend}"


def _caches(caches: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {_iec(size)}" for name, size in sorted(caches.items())) or "unknown"


#: byte features whose coefficients add up to the effective cost per byte of a level, and the
#: level's name in OpCeiling.bytes_per_second
def _level(working_set: int, caches: Mapping[str, int]) -> str:
    """The smallest data cache a working set fits in, or 'memory'."""
    for name in ("L1d", "L2", "L3"):
        if name in caches and working_set <= caches[name]:
            return name
    return "memory" if caches else "-"


def _blas_line(b: BlasInfo) -> str:
    details = [d for d in (b.threading_layer, b.architecture and f"{b.architecture} kernels",
                           _threads(b.num_threads)) if d]
    return f"{b.internal_api} {b.version} ({', '.join(details)}) {b.filepath}"


def _fingerprint_lines(fp: Fingerprint) -> list[str]:
    physical = f", {fp.physical_cores} physical" if fp.physical_cores else ""
    return [
        f"CPU: {fp.cpu_model} ({fp.cores} logical cores{physical}); "
        f"SIMD: {' '.join(f for f in SIMD_FLAGS if f in fp.cpu_flags) or '-'}",
        f"caches: {_caches(fp.caches)}",
        f"BLAS: {'; '.join(_blas_line(b) for b in fp.blas) or 'none found'}",
        f"NumPy {fp.numpy_version}, Python {fp.python}, {fp.platform} ({fp.machine}), "
        f"fingerprint taken with {_threads(fp.threads)}",
    ]


def _op_rows(entry: Entry) -> list[dict]:
    return [{"op": op, "model": m.model, "features": m.features, "coef": m.coef,
             "name": ", ".join(model_facts(m)),  # "name": left-justified
             "cv_error": m.cv_error, "interval": m.interval, "n_samples": m.n_samples}
            for op, m in sorted(entry.ops.items())]


def _csv_rows(profile: Profile) -> list[dict]:
    return [{"dtype": entry.dtype, "impl": entry.impl, "threads": entry.threads, "backend": entry.backend,
             "op": row["op"], "model": row["model"], "feature": f, "coef_seconds_per_unit": c,
             "cv_error": row["cv_error"], "interval_lo": row["interval"][0], "interval_hi": row["interval"][1],
             "n_samples": row["n_samples"]}
            for entry in profile.entries for row in _op_rows(entry) for f, c in zip(row["features"], row["coef"])]


CSV_COLUMNS = ["dtype", "impl", "threads", "backend", "op", "model", "feature", "coef_seconds_per_unit",
               "cv_error", "interval_lo", "interval_hi", "n_samples"]


def render_profile(profile: Profile, fmt: str = "table") -> str:
    """The profile as text tables, as JSON (the file's content) or as CSV (one row per op and
    feature, coefficients in seconds per unit)."""
    if fmt == "json":
        return to_json(profile.model_dump(mode="json"))
    if fmt == "csv":
        return to_csv(_csv_rows(profile), CSV_COLUMNS)
    if fmt != "table":
        raise UsageError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    fp, ceil = profile.fingerprint, profile.ceilings
    created = profile.created.isoformat(timespec="seconds")
    header = [f"Machine profile (schema {profile.schema_version}, costmodel {profile.tool_version}, "
              f"created {created})\n" + "".join(f"  {line}\n" for line in _fingerprint_lines(fp))]
    if profile.transfer is not None:
        src = profile.transfer.source_fingerprint
        header.append(f"  transferred to this machine by rule {profile.transfer.rule} (docs/transfer.md) from: "
                      f"{src.cpu_model}, {_caches(src.caches)}, "
                      f"BLAS {'; '.join(_blas_line(b) for b in src.blas) or 'none found'}\n")
    if profile.probe is not None:
        header.append(f"  probe of this machine (for transfers): {len(profile.probe.products)} products, "
                      f"{len(profile.probe.bandwidth)} bandwidth levels, call times of "
                      f"{', '.join(sorted(profile.probe.call_seconds))}; taken in {profile.probe.seconds:.1f} s\n")
    parts = ["".join(header)]
    if ceil.peaks:
        parts.append(render_table(
            "Peak matrix product (the fit's FLOP ceilings)",
            [("dtype", "name", str), ("backend", "group", str), ("threads", "threads", str),
             ("peak", "flops", lambda v: human(v, "FLOP/s")),
             ("machine balance", "balance", lambda v: "-" if v is None else f"{v:.3g} FLOP/B")],
            [{"name": p.dtype, "group": p.backend, "threads": p.threads, "flops": p.flops_per_second,
              "balance": ceil.machine_balance.get(p.dtype)
              if (p.backend, p.threads) == ("numpy", ceil.threads) else None} for p in ceil.peaks]))
    else:
        parts.append(render_table(
            f"Peak matrix product ({_threads(ceil.threads)})",
            [("dtype", "name", str), ("peak", "flops", lambda v: human(v, "FLOP/s")),
             ("machine balance", "balance", lambda v: "-" if v is None else f"{v:.3g} FLOP/B")],
            [{"name": dt, "flops": v, "balance": ceil.machine_balance.get(dt)}
             for dt, v in ceil.matmul_flops_per_second.items()]))
    parts.append(render_table(
        "Bandwidth by working set",
        [("working set", "ws", _iec), ("fits in", "group", str), ("bandwidth", "bw", lambda v: human(v, "B/s"))],
        [{"ws": p.working_set_bytes, "group": _level(p.working_set_bytes, fp.caches), "bw": p.bytes_per_second}
         for p in ceil.bandwidth],
        ["np.add(a, b, out=c), 1 thread: bytes of a, b and c per second"]))
    columns = [("op", "op", str), ("model", "model", str), ("parameters", "name", str),
               ("CV error", "cv_error", lambda v: "-" if v is None else f"{100 * v:.1f} %"),
               ("measured/predicted", "interval", lambda v: f"{v[0]:.2f} .. {v[1]:.2f}"),
               ("samples", "n_samples", str)]
    parts += [render_table(f"Op models: {entry.describe()}"
                           + "".join(f", {name} {version}" for name, version in sorted(entry.versions.items())),
                           columns, _op_rows(entry), _entry_notes(entry)) for entry in profile.entries]
    return "\n".join(parts)


def _entry_notes(entry: Entry) -> list[str]:
    """The entry's load while it was calibrated and, for a transfer, the factors applied."""
    notes = []
    if any(m.ceiling is not None for m in entry.ops.values()):
        notes.append("rates in parentheses: share of the ceiling the fit was bounded by (peak product, "
                     "bandwidth of the level, for the threads the op runs on)")
    load = entry.load
    if load is not None:
        spread = "" if load.spread is None else f", spread of repeated samples {100 * load.spread:.0f} %"
        measured = (f"other processes {100 * load.other_cpu:.0f} % of {load.cores_available} "
                    f"core{'s' if load.cores_available > 1 else ''}, steal {100 * load.steal:.0f} %{spread}")
        if load.disturbed:
            accepted = ": written with --accept-noisy" if entry.accepted_noisy else ""
            notes.append(f"NOISY: calibrated on a disturbed machine ({'; '.join(load.reasons)}){accepted}")
        else:
            notes.append(f"load while calibrating: {measured}: quiet")
    if entry.transfer_factors:
        factors = ", ".join(f"{name} x{factor:.2f}" for name, factor in sorted(entry.transfer_factors.items()))
        notes.append(f"transferred: time factors {factors}")
    return notes
