"""The machine profile: one versioned JSON file describing a CPU to the cost model.

It holds the machine's fingerprint, its measured ceilings (peak matrix-product FLOP/s,
bandwidth by working-set size) and, per (dtype, impl, threads, backend), one fitted model
per op. This module is the format only: load, save, locate and check (the parts that describe
the machine: costmodel.machine.machine_facts; rendering: costmodel.present.profile_text). It reads no
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
from functools import partial
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, ValidationError, field_validator, model_validator

from costmodel import __version__
from costmodel.errors import UsageError
from costmodel.files import MiB, atomic_write, read_regular
from costmodel.machine.timemodel import fact, model_facts  # noqa: F401  (model_facts re-exported)
from costmodel.model.arch import DTYPES
from costmodel.model.messages import first_error, loc_to_place, short_repr
from costmodel.units import INT64_MAX, fmt_seconds, threads_text as _threads
from costmodel.machine.machine_facts import (  # noqa: F401  (the machine's parts, re-exported)
    BandwidthPoint,
    BlasInfo,
    CEILING_RANGE,
    Ceilings,
    Fingerprint,
    LevelRate,
    LoadRecord,
    MAX_INTERVAL,
    increasing,
    OpCeiling,
    OpModel,
    PeakPoint,
    PositiveFloat,
    PositiveInt,
    Probe,
    ProductRate,
    Transfer,
    StrictModel,
)

__all__ = ["SCHEMA_VERSION", "BandwidthPoint", "BlasInfo", "Ceilings", "Entry", "Fingerprint", "model_facts",
           "LevelRate", "LoadRecord", "Network", "NetworkPoint", "OpCeiling", "OpModel", "PeakPoint", "Probe",
           "ProductRate", "Profile", "Transfer", "calibration_hint", "default_profile_path", "embedded_profile_path",
           "fact", "load_profile", "save_profile"]

SCHEMA_VERSION = 1
PROFILE_NAME = "profile.json"
REFERENCE_NAME = "reference_profile.json"


#: a profile file's size (the reference profile, with every entry, is about 100 KiB)
MAX_PROFILE_BYTES = 16 * MiB


#: a step interval: measured/predicted at 5 % and 95 %, each within 1/MAX_INTERVAL .. MAX_INTERVAL
StepFactor = Annotated[float, Field(ge=1 / MAX_INTERVAL, le=MAX_INTERVAL)]


class SizeInterval(StrictModel):
    """The step interval of the calibration networks whose predicted step is below
    `below_seconds` (None: all the others), as Entry.step_interval (calib.fit.step_interval)."""

    below_seconds: Annotated[float, Field(gt=0, le=1e6)] | None = Field(
        None, description="predicted steps below this, in seconds")
    interval: tuple[StepFactor, StepFactor]
    networks: Annotated[int, Field(ge=1, le=10**6)]

    _check_interval = field_validator("interval")(increasing)


class Entry(StrictModel):
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
    step_interval: tuple[StepFactor, StepFactor] | None = Field(
        None, description="5 % and 95 % quantiles of measured/predicted whole steps of the calibration's networks, "
                          "each predicted by the folds that left it out (calib.fit.step_interval)")
    step_cv_error: Annotated[float, Field(ge=0)] | None = Field(
        None, description="median |predicted/measured - 1| of those steps")
    step_networks: PositiveInt | None = Field(None, description="networks the step interval comes from")
    step_intervals_by_size: list[SizeInterval] = Field(
        [], max_length=2, description="the step interval of the smaller and of the larger half of those "
                                      "networks, by predicted step; empty: step_interval for all")

    _check_step_interval = field_validator("step_interval")(increasing)

    def step_interval_for(self, seconds: float) -> tuple[tuple[float, float], int, str] | None:
        """(interval, networks it comes from, which ones) for a step predicted at `seconds`:
        the size class of step_intervals_by_size it falls in ("predicted below 4.2 ms", "predicted
        from 4.2 ms"), else step_interval (""); None for a profile made before step intervals."""
        if self.step_intervals_by_size:
            small, large = self.step_intervals_by_size
            c, word = (small, "below") if seconds < small.below_seconds else (large, "from")
            return c.interval, c.networks, f"predicted {word} {fmt_seconds(small.below_seconds)}"
        if self.step_interval is None:
            return None
        return self.step_interval, self.step_networks or 0, ""

    @model_validator(mode="after")
    def _size_classes(self) -> "Entry":
        edges = [c.below_seconds for c in self.step_intervals_by_size]
        if edges and (len(edges) != 2 or edges[0] is None or edges[1] is not None):
            raise ValueError("step_intervals_by_size: none, or two classes: the smaller half (with below_seconds) "
                             "and the larger (without)")
        return self

    @model_validator(mode="after")
    def _known_ops(self) -> "Entry":
        # a NumPy entry models the contract's ops; a torch entry PyTorch's op groups and "other"
        from costmodel.machine.backends import OTHER, ModelKey
        from costmodel.machine.backends.numpy import OUTER_PRODUCT
        from costmodel.model.ops import op_names

        names = op_names() | {OUTER_PRODUCT}  # the one model of the NumPy products of inner dimension 1

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
        return setting_text(*self.key)


class NetworkPoint(StrictModel):
    """One message size of the allreduce microbenchmark (calib/parallel/network.py)."""

    message_bytes: PositiveInt
    seconds: PositiveFloat = Field(description="median over the repeats of the slowest worker's time")
    predicted_seconds: Annotated[float, Field(ge=0)]
    error: float = Field(description="predicted / measured - 1")
    fitted: bool = Field(True, description="false: measured and shown, left out of the fit")


class Network(StrictModel):
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
    load: LoadRecord | None = Field(None, description="this machine's load while the benchmark ran (calib.noise)")
    accepted_noisy: bool = Field(False, description="written although disturbed (--accept-noisy)")


class Profile(StrictModel):
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
        from costmodel.machine.fingerprint import available_cores

        has = "; ".join(e.describe() for e in self.entries) or "nothing"
        source = source_of(self)
        cores = available_cores()
        # calibrate refuses more threads than cores: such an entry is made on a machine that has them
        hint = (f"this machine has {cores} core{'s' if cores > 1 else ''}, so that entry must be calibrated on "
                "a machine with more" if threads > cores
                else f"run `{calibration_hint(dtype, impl, threads, backend)}`")
        raise UsageError(f"{source + ': ' if source else ''}"
                         f"the profile has no entry for {setting_text(dtype, impl, threads, backend)}: "
                         f"{hint} (it has: {has})")


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


def check_profile_output(path: Path, *, make_parents: bool = False) -> None:
    """Refuse, in one line and before anything runs, a place a profile cannot be written to or
    must not be: an existing file that is not a costmodel profile (it would be overwritten), a
    directory or any other non-regular file, a path under a regular file, a folder where no file
    can be created (read-only, /proc, no permission). A damaged profile (JSON with a
    schema_version that no longer validates) may be replaced. Nothing is left on disk."""
    from costmodel.files import check_writable

    label = f"-o {path}"
    check_writable(path, label=label, make_parents=make_parents)
    if path.exists():
        try:
            load_profile(path)
        except UsageError as exc:
            head = b""
            try:
                with open(path, "rb") as fh:
                    head = fh.read(1 * MiB)
            except OSError:
                pass
            if not (head.lstrip().startswith(b"{") and b'"schema_version"' in head):
                raise UsageError(f"{label}: the file exists and is not a costmodel profile "
                                 f"({str(exc).removeprefix(f'{path}: ')[:80]}): refusing to replace it; "
                                 "remove it or choose another file") from None


def save_profile(profile: Profile, path: str | Path, *, make_parents: bool = True) -> None:
    """Write the profile atomically: a reader sees the old file or the new one, never a part.
    `make_parents`: create the missing folders (the CLI refuses a -o path in a missing folder
    before it calibrates, check_profile_output)."""
    try:
        atomic_write(path, profile.model_dump_json(indent=2) + "\n", make_parents=make_parents)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the profile: {exc.strerror or exc}") from None


#: id(profile) -> the file it was loaded from, for errors found after loading (Profile.entry)
_SOURCES: dict[int, str] = {}


def source_of(profile: Profile) -> str | None:
    """The file `profile` was loaded from (load_profile), None for one made in memory."""
    return _SOURCES.get(id(profile))


class _Duplicates(dict):
    """A JSON object in which a key was given twice (`key`: the first such key)."""

    key: str = ""


def _integer(text: str, suspect: list[bool]) -> int:
    """json's parse_int: the integer, noted in `suspect` when it is beyond int64."""
    value = int(text)
    if abs(value) > INT64_MAX:
        suspect.append(True)
    return value


def _object(pairs: list[tuple[str, object]], suspect: list[bool] | None = None) -> dict:
    """json's object_pairs_hook: a dict, marked (and noted in `suspect`) when a key repeats (the
    place is found later)."""
    data = dict(pairs)
    if len(data) != len(pairs):
        if suspect is not None:
            suspect.append(True)
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
        suspect: list[bool] = []  # a repeated key or an integer beyond int64 seen while parsing
        data = json.loads(text, object_pairs_hook=partial(_object, suspect=suspect),
                          parse_int=partial(_integer, suspect=suspect))
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
    found = _find(data) if suspect else None  # the walk that names the place, when there is one
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


# -- a setting in words (errors; costmodel.present.profile_text renders the profile) ------------


def setting_text(dtype: str, impl: str, threads: int, backend: str) -> str:
    """'float32, impl index, 2 threads' (and the backend when it is not NumPy)."""
    text = f"{dtype}, impl {impl}, {_threads(threads)}"
    return text if backend == "numpy" else f"{text}, backend {backend}"


