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
import sys
import weakref
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Annotated, Callable, Literal, Mapping

from pydantic import (AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from costmodel import __version__
from costmodel.model.arch import DTYPES, _loc_to_place, _short, first_error
from costmodel.errors import CostModelError, UsageError
from costmodel.files import MiB, atomic_write, read_regular
from costmodel.machine.timemodel import fact
from costmodel.present.report import FORMATS, render_table, to_csv, to_json
from costmodel.units import human, iec as _iec, threads_text as _threads

__all__ = ["SCHEMA_VERSION", "BandwidthPoint", "BlasInfo", "Ceilings", "Entry", "Fingerprint", "OpModel",
           "Profile", "calibrate_command", "check_machine", "default_profile_path", "embedded_profile_path", "fact",
           "find_profile", "load_profile", "render_profile", "save_profile"]

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
INT64_MAX = 2 ** 63 - 1
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


class BandwidthPoint(_Model):
    working_set_bytes: PositiveInt
    bytes_per_second: PositiveFloat


class Ceilings(_Model):
    """Measured ceilings. Matrix products ran with `threads` BLAS threads; the bandwidth probe
    is a NumPy ufunc (single-threaded), counting every array it reads and writes once.
    machine_balance is peak FLOP/s over the bandwidth of the largest working set (memory)."""

    threads: PositiveInt
    matmul_flops_per_second: dict[str, PositiveFloat]
    bandwidth: list[BandwidthPoint] = Field(min_length=1)
    machine_balance: dict[str, PositiveFloat]


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


class Profile(_Model):
    """One machine profile (schema version 1)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    tool_version: str = __version__
    created: AwareDatetime = Field(description="ISO 8601, stored in UTC")
    fingerprint: Fingerprint
    ceilings: Ceilings
    entries: list[Entry] = []
    calibration_seconds: Annotated[float, Field(ge=0)] | None = None

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
        command = calibrate_command(dtype, impl, threads, backend)
        has = "; ".join(e.describe() for e in self.entries) or "nothing"
        source = _SOURCES.get(id(self))
        raise UsageError(f"{source + ': ' if source else ''}"
                         f"the profile has no entry for {_setting(dtype, impl, threads, backend)}: "
                         f"run `{command}` (it has: {has})")


def calibrate_command(dtype: str, impl: str, threads: int, backend: str = "numpy") -> str:
    """The command that calibrates the entry for these settings."""
    from costmodel.machine.backends import backend as get_backend

    return get_backend(backend).calibrate_command(dtype, impl, threads)


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
            return where, f"duplicate key {_short(value.key)} (a key may appear once in an object)"
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
            return where, f"{_short(value)} is beyond int64"
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
        raise UsageError(f"{path}: schema version {_short(version)}, this costmodel reads version "
                         f"{SCHEMA_VERSION}: run `costmodel calibrate` again")
    found = _find(data)
    if found is not None:
        where, problem = found
        raise UsageError(f"{path}: {_loc_to_place(where, Profile)}{problem}")
    try:
        profile = Profile.model_validate_json(text, strict=True)
    except ValidationError as exc:
        raise UsageError(f"{path}: {first_error(exc, Profile)}") from None
    _SOURCES[id(profile)] = str(path)
    weakref.finalize(profile, _SOURCES.pop, id(profile), None)
    return profile


def _stderr_warning(message: str) -> None:
    print(f"costmodel: warning: {message}", file=sys.stderr)


def find_profile(path: str | Path | None = None,
                 warn: Callable[[str], None] = _stderr_warning) -> Profile:
    """The profile at `path`; else the user's default if it exists; else the reference one,
    with a one-line warning."""
    if path is not None:
        return load_profile(path)
    user = default_profile_path()
    if user.exists():
        return load_profile(user)
    reference = embedded_profile_path()
    if not reference.exists():
        raise CostModelError(f"no profile: {user} does not exist and this costmodel ships no reference "
                             "profile: run `costmodel calibrate`")
    profile = load_profile(reference)
    warn("no profile for this machine: using the reference profile shipped with costmodel "
         f"(made on {profile.fingerprint.cpu_model}); run `costmodel calibrate` for yours")
    return profile


# -- checks ----------------------------------------------------------------------------------

def _blas_summary(blas: list[BlasInfo]) -> str:
    return ", ".join(f"{b.internal_api} {b.version}" + (f" ({b.threading_layer})" if b.threading_layer else "")
                     for b in blas) or "none"


def check_machine(profile: Profile, current: Fingerprint | Mapping, threads: int | None = None,
                  warn: Callable[[str], None] = _stderr_warning) -> bool:
    """Warn in one line when the profile was made on another CPU, caches, BLAS or NumPy, or has
    no calibration for `threads` (default: the current fingerprint's). True when all match."""
    made, here = profile.fingerprint, Fingerprint.model_validate(current)
    threads = threads or here.threads
    diffs = []
    if made.cpu_model != here.cpu_model:
        diffs.append(f"CPU {made.cpu_model!r}, here {here.cpu_model!r}")
    for level in sorted(set(made.caches) | set(here.caches)):
        if made.caches.get(level) != here.caches.get(level):
            diffs.append(f"{level} {_iec(made.caches.get(level))}, here {_iec(here.caches.get(level))}")
    if _blas_summary(made.blas) != _blas_summary(here.blas):
        diffs.append(f"BLAS {_blas_summary(made.blas)}, here {_blas_summary(here.blas)}")
    if made.numpy_version != here.numpy_version:
        diffs.append(f"NumPy {made.numpy_version}, here {here.numpy_version}")
    calibrated = sorted({e.threads for e in profile.entries} or {profile.ceilings.threads})
    parts = [f"the profile was made on another machine ({'; '.join(diffs)})"] if diffs else []
    command = "costmodel calibrate"
    if threads not in calibrated:
        parts.append(f"it has calibrations for threads={','.join(map(str, calibrated))}, this run uses "
                     f"threads={threads}")
        command += f" --threads {threads}"
    if parts:
        warn(f"{'; '.join(parts)}: predictions may not hold here; run `{command}`")
    return not parts


# -- rendering -------------------------------------------------------------------------------

def _setting(dtype: str, impl: str, threads: int, backend: str) -> str:
    """'float32, impl index, 2 threads' (and the backend when it is not NumPy)."""
    text = f"{dtype}, impl {impl}, {_threads(threads)}"
    return text if backend == "numpy" else f"{text}, backend {backend}"


def _caches(caches: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {_iec(size)}" for name, size in sorted(caches.items())) or "unknown"


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
             "name": ", ".join(fact(f, c) for f, c in zip(m.features, m.coef)),  # "name": left-justified
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
    parts = [f"Machine profile (schema {profile.schema_version}, costmodel {profile.tool_version}, "
             f"created {created})\n" + "".join(f"  {line}\n" for line in _fingerprint_lines(fp))]
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
                           columns, _op_rows(entry)) for entry in profile.entries]
    return "\n".join(parts)
