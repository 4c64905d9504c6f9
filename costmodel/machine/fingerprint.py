"""This machine's fingerprint, read from the OS: what a profile's speed depends on.

Pure in the project's sense: it reads files of the OS (/proc/cpuinfo, sysfs), the scheduler's
CPU affinity and the BLAS libraries already loaded (threadpoolctl), and it reads no clock and
runs no kernel. It is cheap enough to run on every `predict` (benchmarks/fingerprint_speed.py
prints its cost); calib/machine.py re-exports it and adds the measured ceilings.

What it records: the CPU's model name and identity (vendor, family, model, stepping: two
machines sold under one name differ there), its flags (the vector ISA: avx512f, avx2, fma,
...), the cache sizes per level, the cores this process may run on (os.sched_getaffinity),
the BLAS library NumPy loaded and the kernel family it chose (threadpoolctl's
``architecture``, e.g. Haswell or SkylakeX), and the versions of NumPy, the BLAS and torch
(torch's from its installed metadata: torch is never imported here).
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

__all__ = ["available_cores", "blas_info", "cache_sizes", "cpu_identity", "cpu_info", "parse_size",
           "physical_cores", "platform_string", "take_fingerprint", "torch_version"]

SYS_CPU = Path("/sys/devices/system/cpu")
CPUINFO = Path("/proc/cpuinfo")
#: cpuinfo fields naming the CPU's identity: x86 spelling first, then Arm's
IDENTITY_FIELDS = {
    "cpu_vendor": ("vendor_id", "cpu implementer"),
    "cpu_family": ("cpu family", "cpu architecture"),
    "cpu_model_id": ("model", "cpu part"),
    "cpu_stepping": ("stepping", "cpu revision"),
}


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def parse_size(text: str) -> int:
    """A sysfs cache size ('32K', '1024K', '8M', '512') in bytes; K and M are binary."""
    match = re.fullmatch(r"(\d+)\s*([KMG]?)i?B?", text.strip(), re.IGNORECASE)
    if not match:
        raise ValueError(f"unreadable cache size {text!r}")
    shift = {"": 0, "K": 10, "M": 20, "G": 30}[match.group(2).upper()]
    return int(match.group(1)) << shift


def cache_sizes(cpu_dir: Path = SYS_CPU / "cpu0") -> dict[str, int]:
    """Cache sizes of one CPU from sysfs: {'L1d': bytes, 'L1i': ..., 'L2': ..., 'L3': ...};
    empty when the OS does not expose them."""
    suffix = {"Data": "d", "Instruction": "i", "Unified": ""}
    caches = {}
    for index in sorted((cpu_dir / "cache").glob("index*")):
        level, kind, size = (_read(index / name) for name in ("level", "type", "size"))
        if level and kind in suffix and size:
            caches[f"L{level}{suffix[kind]}"] = parse_size(size)
    return caches


def physical_cores(sys_cpu: Path = SYS_CPU) -> int | None:
    """Distinct (package, core) pairs in sysfs topology, or None when it is not readable."""
    cores = set()
    for cpu in sys_cpu.glob("cpu[0-9]*"):
        package, core = _read(cpu / "topology" / "physical_package_id"), _read(cpu / "topology" / "core_id")
        if package is not None and core is not None:
            cores.add((package, core))
    return len(cores) or None


def available_cores() -> int:
    """The logical CPUs this process may run on (os.sched_getaffinity: a taskset or a
    container's cpuset counts), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _cpuinfo_fields(text: str | None) -> dict[str, str]:
    """The first value of every field of /proc/cpuinfo, keys lower-cased."""
    fields: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    return fields


def cpu_info(text: str | None = None) -> tuple[str, list[str]]:
    """CPU model and flags from /proc/cpuinfo (first value of each field; x86 or Arm spelling)."""
    fields = _cpuinfo_fields(_read(CPUINFO) if text is None else text)
    model = next((fields[k] for k in ("model name", "hardware", "model", "cpu model", "processor")
                  if fields.get(k) and not fields[k].isdigit()), None)
    flags = fields.get("flags") or fields.get("features") or ""
    return model or platform.processor() or platform.machine(), sorted(flags.split())


def cpu_identity(text: str | None = None) -> dict[str, str | None]:
    """The CPU's vendor, family, model number and stepping from /proc/cpuinfo, as written there
    (x86: vendor_id, cpu family, model, stepping; Arm: CPU implementer, architecture, part,
    revision); None where the OS does not say."""
    fields = _cpuinfo_fields(_read(CPUINFO) if text is None else text)
    return {name: next((fields[k] for k in keys if fields.get(k)), None)
            for name, keys in IDENTITY_FIELDS.items()}


def blas_info() -> list[dict]:
    """The BLAS library NumPy uses, as threadpoolctl sees it now (filepath: basename). NumPy
    loads its BLAS when it is imported, so this imports NumPy first. A BLAS another package
    loaded (SciPy's own OpenBLAS once scikit-learn is imported) is not NumPy's and would make
    the fingerprint depend on what the process imported before: the libraries inside NumPy's
    installation (numpy/ or numpy.libs/) are kept, all of them only where none is (a NumPy
    linked against the system's BLAS)."""
    import numpy
    from threadpoolctl import threadpool_info

    libs = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    home = os.path.dirname(os.path.abspath(numpy.__file__))
    own = [lib for lib in libs if os.path.abspath(lib["filepath"]).startswith((home + os.sep, home + ".libs" + os.sep))]
    return [{"internal_api": lib["internal_api"], "version": lib.get("version"),
             "threading_layer": lib.get("threading_layer"), "architecture": lib.get("architecture"),
             "num_threads": lib["num_threads"], "filepath": os.path.basename(lib["filepath"])}
            for lib in own or libs]


def torch_version() -> str | None:
    """The installed torch's version, or None; torch is not imported. Read from the name of its
    ``torch-<version>.dist-info`` folder next to the package (importlib.metadata parses torch's
    whole METADATA file: 12 ms a call, measured), else from importlib.metadata."""
    from importlib.util import find_spec

    try:
        spec = find_spec("torch")  # locates the package without importing it
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for location in spec.submodule_search_locations or ():
        for info in Path(location).parent.glob("torch-*.dist-info"):
            return info.name[len("torch-"):-len(".dist-info")]
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return None


def platform_string() -> str:
    """The OS, its release, the machine and the C library, as platform.platform() spells them
    on Linux ('Linux-6.1.0-x86_64-with-glibc2.36'), read without a subprocess
    (platform.platform() runs `uname -p`: 3.5 ms of a cold `predict`, measured); other systems:
    platform.platform()."""
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):
        libc = ""
    uname = os.uname()
    if uname.sysname != "Linux" or not libc.startswith("glibc "):
        return platform.platform()
    return f"{uname.sysname}-{uname.release}-{uname.machine}-with-glibc{libc.split()[1]}"


def take_fingerprint(threads: int | None = None, blas: list[dict] | None = None) -> dict:
    """What identifies this machine and software; the dict validates as
    costmodel.machine.profile.Fingerprint.

    `threads`: the thread count the run uses (default: the BLAS's current one); `blas`: the
    libraries as blas_info() reads them (default: read now; calib passes them read under a
    thread limit)."""
    import numpy as np

    blas = blas_info() if blas is None else blas
    cpuinfo = _read(CPUINFO) or ""
    model, flags = cpu_info(cpuinfo)
    return {
        "cpu_model": model,
        "cpu_flags": flags,
        **cpu_identity(cpuinfo),
        "caches": cache_sizes(),
        "cores": os.cpu_count() or 1,
        "cores_available": available_cores(),
        "physical_cores": physical_cores(),
        "numpy_version": np.__version__,
        "torch_version": torch_version(),
        "blas": blas,
        "threads": threads or max((lib["num_threads"] for lib in blas), default=1),
        "python": platform.python_version(),
        "platform": platform_string(),
        "machine": platform.machine(),
    }
