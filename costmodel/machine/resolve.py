"""Which profile a prediction uses, and where it comes from (DESIGN.md, "Trust").

The profile is, in order: the one given (``--profile FILE``, or a Profile object in the API);
the file named by $COSTMODEL_PROFILE; the user's own (``costmodel calibrate`` writes
$XDG_CACHE_HOME/costmodel/profile.json); else the reference profile shipped with costmodel.
Every prediction carries its provenance (costmodel.machine.provenance): the file, whether it
is the reference one, whether its machine is this one, the differences that change speed, and
whether it was transferred.

When the reference profile is the one used and this machine differs from its machine, it is
transferred to this machine by a short probe (costmodel.machine.transfer, docs/transfer.md;
the probe itself runs on the machine side, calib.probe, and is passed in as `prober`, cached
in the user's cache directory). Only the entries the prediction needs are probed and
transferred. A profile of another machine that the user gave is not transferred: one warning
line names the differences.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from costmodel.errors import UsageError
from costmodel.machine import profile as profiles
from costmodel.machine.profile import Profile, load_profile

ENV = "COSTMODEL_PROFILE"

#: prober(threads=[...], dtypes=[...], torch=bool) -> this machine's Probe (calib.probe.cached_probe)
Prober = Callable[..., object]


@dataclass(frozen=True)
class Resolved:
    """The profile a prediction uses, its provenance and the thread count it predicts for."""

    profile: Profile
    provenance: dict
    threads: int
    note: str | None  # the one line to tell the user, if any


def _stderr(line: str) -> None:
    from costmodel.errors import warn

    warn(line)  # held until a CLI command ends: a refusal stays one line


def locate(path: str | Path | None = None) -> tuple[Profile, Path | None, bool]:
    """(profile, its file, whether it is the shipped reference) by the order of the module
    docstring; UsageError when $COSTMODEL_PROFILE names a file that is not a profile."""
    if path is not None:
        return load_profile(path), Path(path), False
    env = os.environ.get(ENV)
    if env:
        if not Path(env).is_file():
            raise UsageError(f"${ENV}={env}: no such profile file")
        return load_profile(env), Path(env), False
    user = profiles.default_profile_path()
    if user.exists():
        return load_profile(user), user, False
    reference = profiles.embedded_profile_path()
    if not reference.exists():
        raise UsageError(f"no profile: {user} does not exist and this costmodel ships no reference "
                         "profile: run `costmodel calibrate`")
    return load_profile(reference), reference, True


def default_threads(profile: Profile, dtype: str, impl: str, backend: str = "numpy") -> int:
    """The thread count to predict for when none is given: the cores this process may use if
    the profile has a calibration for that many, else the largest it has within them, else its
    smallest (resolve then says that the prediction is for more threads than cores)."""
    from costmodel.machine.fingerprint import available_cores

    have = sorted({e.threads for e in profile.entries if (e.dtype, e.impl, e.backend) == (dtype, impl, backend)})
    cores = available_cores()
    if cores in have or not have:
        return cores
    within = [t for t in have if t <= cores]
    return within[-1] if within else have[0]


def _needed(profile: Profile, dtype: str, threads: int, backend: str, impl: str | None = None) -> Profile:
    """The profile with only the entries a prediction of (dtype, threads, backend) reads: those
    of `impl`, or of both NumPy implementations when None (explain compares them)."""
    entries = [e for e in profile.entries if (e.dtype, e.threads, e.backend) == (dtype, threads, backend)
               and (impl is None or e.impl == impl)]
    return profile.model_copy(update={"entries": entries or profile.entries})


def _fewer_threads(profile: Profile, dtype: str, impl: str, backend: str, threads: int) -> tuple[Profile, str | None]:
    """The reference profile with NumPy entries at `threads` rescaled from more threads
    (costmodel.machine.transfer.fewer_threads) when it has none at `threads` but some at more
    (a machine with fewer cores than the profile's), and the words saying so; else unchanged."""
    from costmodel.machine.transfer import THREADS_RULE, TransferError, fewer_threads

    counts = {e.threads for e in profile.entries if (e.dtype, e.impl, e.backend) == (dtype, impl, backend)}
    if backend != "numpy" or threads in counts or not any(n > threads for n in counts):
        return profile, None
    try:
        rescaled = fewer_threads(profile, threads)
    except TransferError:
        return profile, None
    source = min(n for n in counts if n > threads)
    return rescaled, (f"its {source}-thread entries rescaled to {threads} thread{'s' if threads > 1 else ''} by "
                      f"its probe's product rates (rule {THREADS_RULE}, docs/transfer.md)")


def resolve(path: str | Path | Profile | None, *, dtype: str, impl: str = "index", backend: str = "numpy",
            threads: int | None = None, prober: Prober | None = None,
            warn: Callable[[str], None] | None = _stderr, only_impl: bool = False) -> Resolved:
    """The profile for a prediction of (dtype, impl, backend, threads), transferred when it is
    the reference profile of another machine and a `prober` is given; its provenance; and the
    thread count (default_threads when None). `warn` gets the one line to tell (None: silent).
    `only_impl`: transfer only `impl`'s entries (a prediction of one implementation; explain
    and compare read both). The prober is called as prober(**probe_needs(...), fingerprint=...)
    with this machine's fingerprint, taken once."""
    from costmodel.machine.fingerprint import take_fingerprint
    from costmodel.machine.provenance import provenance, warning_line

    if isinstance(path, Profile):
        profile, file, reference = path, None, False
    else:
        profile, file, reference = locate(path)
    if backend != "numpy":
        impl = backend
    from costmodel.machine.fingerprint import available_cores

    chosen = threads is None
    cores = available_cores()
    rescaled = None
    if reference and prober is not None:
        profile, rescaled = _fewer_threads(profile, dtype, impl, backend, threads or cores)
    if reference and prober is not None and threads and threads > cores:
        raise UsageError(f"--threads {threads}: this process may use {cores} core{'s' if cores > 1 else ''}, and the "
                         "reference profile is transferred by a probe of this machine, which cannot run "
                         f"{threads} threads on them: leave --threads out, or give a profile calibrated for "
                         f"{threads} threads with --profile")
    threads = threads or default_threads(profile, dtype, impl, backend)
    profile.entry(dtype, impl, threads, backend)  # no such entry: its one line now, before any probe
    here = take_fingerprint(threads)
    prov = provenance(profile, here, path=file, reference=reference, threads=threads)
    note = warning_line(prov)
    if reference and not prov["machine_match"] and prober is not None:
        from costmodel.machine.transfer import TransferError, check_transferable, probe_needs, transfer

        needed = _needed(profile, dtype, threads, backend, impl if only_impl and backend == "numpy" else None)
        try:
            check_transferable(needed)  # before the probe, which it would not use
            moved = transfer(needed, prober(**probe_needs(needed), fingerprint=here), here)
        except TransferError as exc:
            note = f"{note}; it could not be transferred: {exc}"
        else:
            profile = moved
            prov = provenance(profile, here, path=file, reference=reference, threads=threads)
            note = warning_line(prov)
    if rescaled:
        note = f"{note}; {rescaled}" if note else rescaled
    if reference:
        note = "no profile of this machine, so the reference profile shipped with costmodel" + (
            f": {note}" if note else ", made on a machine like this one; `costmodel calibrate` makes yours")
    if chosen and threads != cores:
        fewer = (f"predicted for {threads} thread{'s' if threads > 1 else ''}, the profile's "
                 f"{'largest' if threads < cores else 'fewest'}; this process may use {cores} "
                 f"core{'s' if cores > 1 else ''}")
        note = f"{note}; {fewer}" if note else fewer
    if note and warn is not None:
        warn(note)
    return Resolved(profile, prov, threads, note)
