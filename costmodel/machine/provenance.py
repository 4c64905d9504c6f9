"""Where a prediction's numbers come from: which profile, made on which machine, and whether that
machine is this one.

`compare_machines` names the differences between two fingerprints that change speed, and only
those: the vector ISA (avx512f, avx2, fma, ... from the CPU flags), the CPU itself (its model
name, or vendor, family and model number when the names agree), the data caches per level, the
BLAS library and its version, the BLAS kernel family (OpenBLAS picks Haswell or SkylakeX
kernels at run time, and OPENBLAS_CORETYPE overrides it), the cores available when the run's
threads need them, and the NumPy and torch versions. Not differences: the OS's platform string,
Python's version, the stepping, flags that no float32/float64 kernel uses (security mitigations,
virtualisation), the instruction cache. Pure: it compares data and reads nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

from costmodel.machine.profile import Fingerprint, Profile

__all__ = ["Difference", "ISA_LEVELS", "compare_machines", "describe_differences", "isa_level", "provenance",
           "warning_line"]

#: vector ISA levels, best first: (cpuinfo flag, name); x86 then Arm
ISA_LEVELS = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4.2"),
              ("sve2", "SVE2"), ("sve", "SVE"), ("asimd", "ASIMD"))
#: cache levels whose size changes the speed of data-bound kernels (not L1i)
DATA_CACHES = ("L1d", "L2", "L3")
VENDORS = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel", "0x41": "Arm"}


@dataclass(frozen=True)
class Difference:
    """One way the profile's machine differs from this one; `made` and `here` read as they do in
    the warning line (e.g. name "isa", made "AVX-512", here "AVX2")."""

    name: str
    made: str
    here: str

    def as_dict(self) -> dict:
        return asdict(self)


def isa_level(flags) -> str | None:
    """The best vector ISA among the CPU flags ('AVX-512', 'AVX2', ..., 'ASIMD'), None if none."""
    flags = set(flags)
    return next((name for flag, name in ISA_LEVELS if flag in flags), None)


def _iec(n: int) -> str:
    for factor, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= factor:
            return f"{n / factor:.3g} {unit}"
    return f"{n} B"


def _cores(n: int) -> str:
    return f"{n} core" if n == 1 else f"{n} cores"


def _identity(fp: Fingerprint) -> str | None:
    if fp.cpu_vendor is None or fp.cpu_family is None or fp.cpu_model_id is None:
        return None
    return f"{VENDORS.get(fp.cpu_vendor, fp.cpu_vendor)} family {fp.cpu_family} model {fp.cpu_model_id}"


def compare_machines(made: Fingerprint | Mapping, here: Fingerprint | Mapping,
                     threads: int | None = None) -> list[Difference]:
    """The differences between the machine a profile was `made` on and this one (`here`) that
    change speed, in the order of the warning line; empty when they match. A quantity one side
    does not record (an older profile, an OS without sysfs caches) is not compared.

    `threads`: the threads of the run; the cores available differ only where the run needs
    them (threads above the smaller count; None: always)."""
    made, here = Fingerprint.model_validate(made), Fingerprint.model_validate(here)
    diffs: list[Difference] = []

    def add(name: str, a, b, show=str) -> None:
        if a is not None and b is not None and a != b:
            diffs.append(Difference(name, show(a), show(b)))

    if made.cpu_model != here.cpu_model:
        add("cpu", made.cpu_model, here.cpu_model)
    else:
        add("cpu", _identity(made), _identity(here))
    if made.cpu_flags and here.cpu_flags:
        level_made, level_here = isa_level(made.cpu_flags), isa_level(here.cpu_flags)
        add("isa", level_made or "no vector ISA", level_here or "no vector ISA")
        if level_made == level_here:
            add("fma", "FMA" if "fma" in made.cpu_flags else "no FMA", "FMA" if "fma" in here.cpu_flags else "no FMA")
    blas_made, blas_here = (fp.blas[0] if fp.blas else None for fp in (made, here))
    if blas_made is not None and blas_here is not None:
        add("blas_kernels", blas_made.architecture, blas_here.architecture, lambda a: f"{a} kernels")
        label = lambda b: f"{b.internal_api} {b.version}"  # noqa: E731
        if label(blas_made) == label(blas_here):
            add("blas", blas_made.threading_layer, blas_here.threading_layer, lambda t: f"BLAS threading {t}")
        else:
            add("blas", label(blas_made), label(blas_here))
    for level in DATA_CACHES:
        if made.caches and here.caches:
            a, b = made.caches.get(level), here.caches.get(level)
            if a != b:
                diffs.append(Difference(level, f"{level} {_iec(a)}" if a else f"no {level}",
                                        f"{level} {_iec(b)}" if b else f"no {level}"))
    cores_made = made.cores_available or made.cores
    cores_here = here.cores_available or here.cores
    if threads is None or threads > min(cores_made, cores_here):
        add("cores", cores_made, cores_here, _cores)
    add("numpy", made.numpy_version, here.numpy_version, lambda v: f"NumPy {v}")
    add("torch", made.torch_version, here.torch_version, lambda v: f"torch {v}")
    return diffs


def describe_differences(diffs: list[Difference]) -> str:
    """One line: 'profile made with AVX-512, SkylakeX kernels, L2 1 MiB; this machine: AVX2,
    Haswell kernels, L2 512 KiB'; '' when there is no difference."""
    if not diffs:
        return ""
    return (f"profile made with {', '.join(d.made for d in diffs)}; "
            f"this machine: {', '.join(d.here for d in diffs)}")


def provenance(profile: Profile, here: Fingerprint | Mapping, *, path: str | Path | None = None,
               reference: bool = False, threads: int | None = None) -> dict:
    """Where a prediction's profile comes from, for the JSON and DataFrame outputs:
    ``{path, reference, machine_match, differences, transferred}``. `path` is the profile's file
    (None: given as an object), `reference` whether it is the one shipped with costmodel, `here`
    this machine's fingerprint (costmodel.machine.fingerprint.take_fingerprint). A transferred
    profile is compared with the machine it was transferred from."""
    made = profile.transfer.source_fingerprint if profile.transfer is not None else profile.fingerprint
    diffs = compare_machines(made, here, threads)
    return {"path": None if path is None else str(path), "reference": reference,
            "machine_match": not diffs, "differences": [d.as_dict() for d in diffs],
            "transferred": profile.transfer is not None}


def warning_line(prov: dict) -> str | None:
    """The one warning line of a provenance, None when the profile was made on this machine."""
    if prov["machine_match"]:
        return None
    line = describe_differences([Difference(**d) for d in prov["differences"]])
    if prov["transferred"]:
        return f"{line}: transferred to this machine by a probe (docs/transfer.md); `costmodel calibrate` replaces it"
    return f"{line}: predictions may not hold here; run `costmodel calibrate`"
