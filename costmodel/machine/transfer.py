"""Transfer a profile to another machine by the ratios of a short probe (docs/transfer.md).

Rule "probe-ratios-1". The profile carries the probe of the machine it was made on
(calib.probe, run by `calibrate`); this machine runs the same probe. Every term of every op
model, t = sum_f c_f x_f, is a time per unit of its feature; it is multiplied by the ratio of
the matching kernel's time per unit here to there (the profile machine's rate over this
machine's), measured on the same shape:

| term | ratio of |
| --- | --- |
| `flops` of a matrix product (conv_*) | product rate, shape class ``conv`` (tall-skinny), same dtype and threads |
| `flops` of a matrix product (full_*) | product rate, shape class ``square`` |
| `calls` of a matrix product, `gemm_calls` (torch) | product rate, shape class ``small`` (a small product is mostly its call) |
| `flops` of any other op, of the outer products (``outer_product``: NumPy's own loop, not BLAS), `elements` (the strided poolings' window kernels) | bandwidth in L1 (np.add in L1 is an elementwise kernel's throughput) |
| `calls` of any other op, `inner_loops` (the strided poolings' window kernels) | time of one call of a tiny op (np.add; torch.add for the torch backend): an inner loop's start is a ufunc's per-row overhead |
| `bytes`, `bytes_beyond_L2`, `bytes_beyond_L3` | bandwidth of each level, applied to the effective cost per byte of the level (below) |
| `bytes_fresh` (torch) | bandwidth of memory (fresh pages are zeroed at memory speed) |
| every term of PyTorch's "other" | torch's call time (framework overhead) |

The byte terms are not rescaled one by one: the effective cost per byte of a level is the sum
of the terms that apply there (in cache e_L2 = c_byte, beyond L2 e_L3 = c_byte + c_L2, beyond
L3 e_mem = e_L3 + c_L3). Each e is multiplied by its level's ratio, then the terms are taken
back as differences (a negative difference, a level that got relatively faster than the one
below, is 0: the model's terms stay non-negative). The features beyond L2 and L3 are computed
with this machine's cache sizes: the transferred profile carries this machine's fingerprint.

The torch backend's products use torch's probe (torch.mm, and conv2d for ``conv``) when both
probes have it, else NumPy's; :serial models (single-threaded BLAS in a threaded step) use the
products at one thread. The ceilings (peaks, bandwidth, each model's ceiling) are rescaled by
the same ratios and the bandwidth points replaced by this machine's probe. A ratio the probes
cannot give is an error naming it, never a silent 1.
"""

from __future__ import annotations

from typing import Mapping

from costmodel.errors import CostModelError
from costmodel.machine.profile import Ceilings, Entry, Fingerprint, OpModel, Probe, Profile, Transfer
from costmodel.model.ops import MATMUL, records

__all__ = ["RULE", "THREADS_RULE", "TransferError", "fewer_threads", "probe_needs", "transfer", "time_factor"]

RULE = "probe-ratios-1"
#: a NumPy entry at T threads used at t < T threads (fewer_threads)
THREADS_RULE = "blas-threads-1"
BYTE_LEVELS = (("bytes", "L2"), ("bytes_beyond_L2", "L3"), ("bytes_beyond_L3", "memory"))


class TransferError(CostModelError):
    """A profile that cannot be transferred with the probes at hand."""

    exit_code = 1


def probe_needs(profile: Profile) -> dict:
    """What this machine's probe must measure to transfer `profile`: ``threads`` (every entry's,
    and 1 for a threaded strided entry's :serial products), ``dtypes``, and ``torch`` (whether
    the profile has torch entries); pass them to calib.probe.cached_probe."""
    threads = {e.threads for e in profile.entries}
    if any(e.impl == "strided" and e.threads > 1 for e in profile.entries):
        threads.add(1)
    return {"threads": sorted(threads), "dtypes": sorted({e.dtype for e in profile.entries}),
            "torch": any(e.backend == "torch" for e in profile.entries)}


#: a time factor beyond this (either way) is not another CPU but a disturbed probe: under load,
#: a 64^3 torch.mm measured 3,000-10,000x slower than quiet (2026-12-01), which took a per-call
#: coefficient past the profile's bounds. Real CPUs seen here differ by 1.3-3.5x per kernel.
MAX_FACTOR = 50.0


class _Ratios:
    """Time factors (made machine's rate / this machine's rate) read from two probes; a factor
    beyond MAX_FACTOR either way is a TransferError naming the kernel."""

    def __init__(self, made: Probe, here: Probe):
        self.made, self.here = made, here

    @staticmethod
    def _checked(name: str, factor: float) -> tuple[str, float]:
        if not (1 / MAX_FACTOR <= factor <= MAX_FACTOR):
            raise TransferError(f"this machine's probe of {name} is {factor:.3g}x the profile machine's time "
                                f"(beyond {MAX_FACTOR:g}x either way): the probe was disturbed; predict again on a "
                                "quiet machine, or run `costmodel calibrate`")
        return name, factor

    def product(self, backend: str, dtype: str, threads: int, shape: str) -> tuple[str, float]:
        def find(probe: Probe, b: str):
            return next((p for p in probe.products
                         if (p.backend, p.dtype, p.threads, p.shape) == (b, dtype, threads, shape)), None)

        for b in dict.fromkeys((backend, "numpy")):
            made, here = find(self.made, b), find(self.here, b)
            if made is not None and here is not None:
                if (made.m, made.k, made.n) != (here.m, here.k, here.n):
                    raise TransferError(f"the probes measured different {shape} products "
                                        f"({made.m}x{made.k}x{made.n} and {here.m}x{here.k}x{here.n}): "
                                        "probe this machine again with this costmodel")
                return self._checked(f"product:{shape}:{b}:{dtype}:{threads}",
                                     made.flops_per_second / here.flops_per_second)
        raise TransferError(f"no probe of {backend} {shape} products in {dtype} with {threads} thread(s) on both "
                            "machines: probe this machine with costmodel.machine.transfer.probe_needs(profile)")

    def level(self, level: str) -> tuple[str, float]:
        made = next((p for p in self.made.bandwidth if p.level == level), None)
        here = next((p for p in self.here.bandwidth if p.level == level), None)
        if made is None or here is None:
            raise TransferError(f"no probe of the bandwidth in {level} on both machines")
        return self._checked(f"bytes:{level}", made.bytes_per_second / here.bytes_per_second)

    def call(self, backend: str) -> tuple[str, float]:
        for b in dict.fromkeys((backend, "numpy")):
            if b in self.made.call_seconds and b in self.here.call_seconds:
                return self._checked(f"calls:{b}", self.here.call_seconds[b] / self.made.call_seconds[b])
        raise TransferError(f"no probe of the call time of {backend} on both machines")


def _ops_of(key: str) -> list[str]:
    return key.partition(":")[0].split("+")


def product_ops() -> frozenset[str]:
    """The ops that are matrix products (their record's kind), run by a BLAS."""
    return frozenset(r.name for r in records().values() if r.kind == MATMUL)


def _serial(key: str) -> bool:
    """Whether the model `key` is a :serial one (single-threaded BLAS inside a threaded step)."""
    return "serial" in key.partition(":")[2].split("+")


def product_shape(key: str, feature: str) -> str | None:
    """The probe's product class that rescales the term `feature` of the model `key`: "conv" or
    "square" for a product's FLOPs, "small" for its calls; None for a term of no product (the
    outer products' model, costmodel.machine.backends.numpy.OUTER_PRODUCT, included: NumPy's own
    single-threaded loop, not BLAS)."""
    products = [op for op in _ops_of(key) if op in product_ops()]
    if not products:
        return None
    if feature in ("flops", "flops_lane_waste"):
        return "conv" if any(op.startswith("conv_") for op in products) else "square"
    return "small" if feature in ("calls", "gemm_calls") else None


def time_factor(ratios: _Ratios, entry: Entry, key: str, feature: str) -> tuple[str, float]:
    """(name, factor) of one term of the model `key` of `entry` under the rule (module docstring);
    the byte terms of the levels are handled together by _transfer_model."""
    backend = entry.backend
    if _ops_of(key) == ["other"]:
        return ratios.call("torch")
    shape = product_shape(key, feature)
    if shape is not None:
        return ratios.product(backend, entry.dtype, 1 if _serial(key) else entry.threads, shape)
    if feature in ("flops", "flops_lane_waste", "elements"):
        return ratios.level("L1")
    if feature in ("calls", "inner_loops"):
        return ratios.call(backend)
    if feature == "bytes_fresh":
        return ratios.level("memory")
    for name, level in BYTE_LEVELS:
        if feature == name:
            return ratios.level(level)
    raise TransferError(f"the {entry.describe()} model of {key!r} has the feature {feature!r}, which the "
                        f"transfer rule {RULE} does not know")


def _transfer_model(ratios: _Ratios, entry: Entry, key: str, model: OpModel,
                    used: dict[str, float]) -> OpModel:
    coef = dict(zip(model.features, model.coef))
    new = dict(coef)
    for feature in model.features:
        if feature not in dict(BYTE_LEVELS) or key.startswith("other"):
            name, factor = time_factor(ratios, entry, key, feature)
            new[feature] = coef[feature] * factor
            used[name] = factor
    if not key.startswith("other"):
        # the byte terms through the effective cost per byte of each level
        effective, total = [], 0.0
        for name, level in BYTE_LEVELS:
            if name in coef:
                total += coef[name]
                label, factor = ratios.level(level)
                used[label] = factor
                effective.append((name, total * factor))
        below = 0.0
        for name, e in effective:
            new[name] = max(e - below, 0.0)
            below = max(below, e)
    ceiling = model.ceiling
    if ceiling is not None:
        flops = None
        if ceiling.flops_per_second is not None and "flops" in coef:
            flops = ceiling.flops_per_second / time_factor(ratios, entry, key, "flops")[1]
        levels = {lv: bw / ratios.level(lv)[1] for lv, bw in ceiling.bytes_per_second.items()}
        ceiling = ceiling.model_copy(update={"flops_per_second": flops, "bytes_per_second": levels})
    return model.model_copy(update={"coef": [new[f] for f in model.features], "ceiling": ceiling})


def _transfer_ceilings(profile: Profile, ratios: _Ratios, here_probe: Probe) -> dict:
    ceil = profile.ceilings

    def peak(backend: str, dtype: str, threads: int, value: float) -> float | None:
        try:
            return value / ratios.product(backend, dtype, threads, "square")[1]
        except TransferError:
            return None

    flops = {dt: peak("numpy", dt, ceil.threads, v) for dt, v in ceil.matmul_flops_per_second.items()}
    flops = {dt: v for dt, v in flops.items() if v is not None}
    if not flops:
        raise TransferError(f"no probe of square products with {ceil.threads} thread(s) to rescale the ceilings")
    peaks = [p.model_copy(update={"flops_per_second": v}) for p in ceil.peaks
             if (v := peak(p.backend, p.dtype, p.threads, p.flops_per_second)) is not None]
    bandwidth = [{"working_set_bytes": p.working_set_bytes, "bytes_per_second": p.bytes_per_second}
                 for p in sorted(here_probe.bandwidth, key=lambda p: p.working_set_bytes)]
    memory = bandwidth[-1]["bytes_per_second"]
    return {"threads": ceil.threads, "matmul_flops_per_second": flops, "bandwidth": bandwidth,
            "machine_balance": {dt: f / memory for dt, f in flops.items()},
            "peaks": [p.model_dump() for p in peaks]}


def check_transferable(profile: Profile) -> None:
    """Raise TransferError when `profile` cannot be transferred whatever this machine's probe
    (checked before probing: a probe costs a cold process its import, or seconds)."""
    if profile.probe is None:
        raise TransferError("the profile has no probe of the machine it was made on (made before profiles "
                            "stored one): it cannot be transferred; run `costmodel calibrate` here instead")
    if profile.transfer is not None:
        raise TransferError("the profile is itself a transfer: transfer its source profile instead")


def transfer(profile: Profile, probe_here: Probe, here: Fingerprint | Mapping | None = None) -> Profile:
    """`profile`, made on another machine, transferred to this one by rule RULE (module docstring).

    `probe_here`: this machine's probe (calib.probe.cached_probe with probe_needs(profile));
    `here`: this machine's fingerprint (default: taken now). Returns a new Profile with this
    machine's fingerprint, probe and rescaled ceilings, every entry's coefficients rescaled and
    the factors used in its ``transfer_factors``, and ``transfer`` naming the rule, the source
    machine and its probe. Raises TransferError when the profile has no probe or a ratio is
    missing."""
    check_transferable(profile)
    if here is None:
        from costmodel.machine.fingerprint import take_fingerprint

        here = take_fingerprint()
    here = Fingerprint.model_validate(here)
    ratios = _Ratios(profile.probe, probe_here)
    entries = []
    for entry in profile.entries:
        used: dict[str, float] = {}
        ops = {key: _transfer_model(ratios, entry, key, model, used) for key, model in entry.ops.items()}
        # the intervals by size split at a step time of the profile's machine: here, one interval of all
        entries.append(entry.model_copy(update={"ops": ops, "transfer_factors": {**entry.transfer_factors, **used},
                                                "step_intervals_by_size": []}))
    moved = profile.model_copy(update={
        "fingerprint": here,
        "ceilings": Ceilings.model_validate(_transfer_ceilings(profile, ratios, probe_here)),
        "entries": entries,
        "probe": probe_here,
        "transfer": Transfer(rule=RULE, source_fingerprint=profile.fingerprint, source_probe=profile.probe),
    })
    from pydantic import ValidationError

    try:
        return Profile.model_validate(moved.model_dump())
    except ValidationError as exc:  # a rescaled coefficient past the profile's bounds
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise TransferError(f"the transferred profile is not valid ({where}: {error['msg']}): the probe was "
                            "probably disturbed; predict again on a quiet machine, or run `costmodel calibrate`") from None


def fewer_threads(profile: Profile, threads: int) -> Profile:
    """`profile` with a NumPy entry at `threads` for every (dtype, impl) it has only at more
    threads: rule THREADS_RULE, on the machine the profile was made on. Only the BLAS runs on
    several threads in the NumPy step (its index and elementwise kernels are NumPy's, single-
    threaded; a strided entry's ``:serial`` products already run on one), so the `flops` and
    `calls` terms of the matrix products are multiplied by the profile's own probe's product
    rate at the entry's threads over its rate at `threads`, per shape class (product_shape, as
    `transfer` picks them), and every other term is kept; the ceilings follow the square class.
    The entry used is the one with the fewest threads above `threads`; its ``transfer_factors``
    name each factor ("threads:2->1:..."). Errors: TransferError when the profile has no probe,
    or its probe no products at one of the two thread counts. Apply before `transfer` (which
    then rescales to this machine)."""
    if profile.probe is None:
        raise TransferError("the profile has no probe of the machine it was made on: it cannot be rescaled to "
                            f"{threads} thread(s); run `costmodel calibrate --threads {threads}` here")

    def factor(dtype: str, shape: str, more: int) -> float:  # rate at `more` threads / rate at `threads`
        rate = {p.threads: p.flops_per_second for p in profile.probe.products
                if (p.backend, p.dtype, p.shape) == ("numpy", dtype, shape)}
        if more not in rate or threads not in rate:
            raise TransferError(f"the profile's probe has no numpy {shape} products in {dtype} at {more} and "
                                f"{threads} thread(s): run `costmodel calibrate --threads {threads}` here")
        return rate[more] / rate[threads]

    have = {(e.dtype, e.impl, e.backend, e.threads) for e in profile.entries}
    added = []
    for entry in sorted(profile.entries, key=lambda e: e.threads):
        key = (entry.dtype, entry.impl, entry.backend, threads)
        if entry.backend != "numpy" or entry.threads <= threads or key in have:
            continue
        have.add(key)
        used: dict[str, float] = {}
        ops = {}
        for name, model in entry.ops.items():
            if _serial(name) or product_shape(name, "flops") is None:
                ops[name] = model
                continue
            coef = dict(zip(model.features, model.coef))
            for feature in ("flops", "calls"):
                if feature in coef:
                    shape = product_shape(name, feature)
                    f = used[f"threads:{entry.threads}->{threads}:{shape}:{entry.dtype}"] = \
                        factor(entry.dtype, shape, entry.threads)
                    coef[feature] *= f
            ceiling = model.ceiling
            if ceiling is not None:
                flops = ceiling.flops_per_second
                if flops is not None:
                    flops /= factor(entry.dtype, product_shape(name, "flops"), entry.threads)
                ceiling = ceiling.model_copy(update={"flops_per_second": flops, "threads": threads})
            ops[name] = model.model_copy(update={"coef": [coef[f] for f in model.features], "ceiling": ceiling})
        added.append(entry.model_copy(update={"threads": threads, "ops": ops, "step_intervals_by_size": [],
                                              "transfer_factors": {**entry.transfer_factors, **used}}))
    ceil = profile.ceilings
    if ceil.threads > threads:  # the ceilings at the thread count predicted: peaks by the square class
        flops = {}
        for dt, v in ceil.matmul_flops_per_second.items():
            try:
                flops[dt] = v / factor(dt, "square", ceil.threads)
            except TransferError:
                continue
        if flops:
            memory = max(ceil.bandwidth, key=lambda b: b.working_set_bytes).bytes_per_second if ceil.bandwidth else None
            ceil = ceil.model_copy(update={
                "threads": threads, "matmul_flops_per_second": flops,
                "machine_balance": {dt: f / memory for dt, f in flops.items()} if memory else ceil.machine_balance})
    return profile.model_copy(update={"entries": [*profile.entries, *added], "ceilings": ceil})
