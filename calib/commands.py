"""The machine-side commands (measure, train, calibrate): load, check, run, render. Called by
cli.py; compare is in calib/compare_commands.py, the pure side's in costmodel/present/adapters.py."""

from __future__ import annotations

from pathlib import Path

from costmodel.machine.profile import check_profile_output  # noqa: F401  (calibrate's -o check; tests import it here)
from costmodel.model.arch import load_arch
from costmodel.present.report import fmt_fraction, fmt_seconds, human, render, to_csv, to_json, render_table

MEASURE_COLUMNS = [
    ("layer", "layer", str), ("type", "layer_type", str), ("op", "op", str), ("phase", "phase", str),
    ("time", "seconds", fmt_seconds), ("fraction", "fraction", fmt_fraction),
    ("FLOPs", "flops", human), ("bytes", "bytes", lambda b: human(b, "B")),
]
MEASURE_CSV = ["layer", "layer_type", "op", "phase", "seconds", "fraction", "flops", "bytes"]


def check_threads(threads: int | None) -> None:
    """Refuse a --threads above the cores this process may run on (os.sched_getaffinity): more
    threads than cores time the scheduler, not the kernels (measured: --threads 64 on 2 cores
    made a 3.75 ms step take 176 ms)."""
    from costmodel.errors import UsageError
    from costmodel.machine.fingerprint import available_cores

    cores = available_cores()
    if threads is not None and threads > cores:
        raise UsageError(f"--threads {threads}: this machine has {cores} core{'s' if cores > 1 else ''} "
                         "available to this process (os.sched_getaffinity)")


def warn_if_disturbed(load: dict | None, what: str = "measured") -> None:
    """One line on stderr when the load record of a measurement says it was disturbed."""
    import sys

    if load and load.get("disturbed"):
        print(f"costmodel: warning: {what} on a disturbed machine ({'; '.join(load['reasons'])}): "
              "the times may not hold; measure again on a quiet machine", file=sys.stderr)
    elif load and load.get("notes"):
        print(f"costmodel: warning: {'; '.join(load['notes'])} with no other load seen: this machine's "
              "repeated timings vary that much", file=sys.stderr)


def step_footer(result: dict, steps: int, how: str = "") -> list[str]:
    """The footer lines of `measure`'s table on its step, each figure with what it is, so that
    none reads as another's arithmetic: the median whole step; coverage, per step the sum of its
    op times / its wall clock, the median over the steps (calib.measure.summarize); and the sum
    of the ops' medians, what the fractions are of (over the median step it is not the coverage:
    each op's median leaves out the hiccups of other steps). `how`: more on the steps' timing."""
    return [f"step: {fmt_seconds(result['step_seconds'])} (median of {steps} whole steps{how})",
            f"coverage {result['coverage']:.3f}: the sum of a step's op times / its wall clock, median of "
            f"the {steps} steps",
            f"fraction: an op's median time / the sum of the ops' medians, {fmt_seconds(result['total_seconds'])}"]


def _with_costs(result: dict, arch, impl: str) -> dict:
    """Add the cost model's FLOPs and bytes to each measured op."""
    from costmodel.model.step import step_costs

    costs = step_costs(arch, impl)
    table = {(ref.layer, ref.op, ref.phase): i for i, ref in enumerate(costs.ops)}
    for row in result["ops"]:
        i = table[(row["layer"], row["op"], row["phase"])]
        row["flops"] = int(costs.flops[i])
        row["bytes"] = int(costs.bytes[i])
    return result


def measure_command(arch_path: Path, *, batch, steps, warmup, threads, impl, fmt, progress=None,
                    backend: str = "numpy", workers=None, overlap=False, init=None, rank=None, world_size=None,
                    oversubscribe=False, timeout=None) -> str:
    from calib.parallel.commands import measure_parallel_command

    text = measure_parallel_command(arch_path, batch=batch, steps=steps, warmup=warmup, threads=threads, impl=impl,
                                    fmt=fmt, backend=backend, workers=workers, overlap=overlap, init=init, rank=rank,
                                    world_size=world_size, oversubscribe=oversubscribe, timeout=timeout)
    if text is not None:  # data-parallel SG: --workers, --init or torchrun's environment
        return text
    check_threads(threads)
    if backend == "torch":
        return measure_torch_command(arch_path, batch=batch, steps=steps, warmup=warmup, threads=threads,
                                     fmt=fmt, progress=progress)
    arch = load_arch(arch_path).with_batch(batch)
    from calib.measure import measure
    from calib.memory import check_memory

    check_memory(arch, impl)
    result = _with_costs(measure(arch, steps=steps, warmup=warmup, threads=threads, impl=impl,
                                 progress=progress), arch, impl)
    warn_if_disturbed(result["load"])
    footer = [
        *step_footer(result, steps),
        f"{arch.name}: batch I={arch.batch}, {arch.dtype}, impl={impl}, threads={result['threads']}",
    ]
    return render(result, fmt, MEASURE_COLUMNS, f"Measured SG step: {arch.name}", footer, MEASURE_CSV)


def measure_torch_command(arch_path: Path, *, batch, steps, warmup, threads, fmt, progress=None) -> str:
    """`measure --backend torch`: the same step in PyTorch, per op group from torch.profiler."""
    import importlib.util

    from calib.backends.torch import import_torch, measure_torch, with_costs

    if importlib.util.find_spec("torch") is None:
        import_torch()  # a missing torch fails first, in one line
    from calib.noise import LoadMonitor, handoff_seconds

    arch = load_arch(arch_path).with_batch(batch)  # a bad file is refused before torch's import (~200 MB)
    from calib.memory import check_memory

    check_memory(arch, "torch")
    import_torch()
    # other processes' CPU time, steal and the cores' hand-off (no per-op spreads here)
    with LoadMonitor(handoff=handoff_seconds) as monitor:
        result = with_costs(measure_torch(arch, steps=steps, warmup=warmup, threads=threads, progress=progress),
                            arch)
    result["load"] = monitor.load.as_dict()
    warn_if_disturbed(result["load"])
    footer = [
        *step_footer(result, steps, f", profiler on; {fmt_seconds(result['unprofiled_step_seconds'])} without it"),
        f"{arch.name}: batch I={arch.batch}, {arch.dtype}, PyTorch {result['torch_version']}, "
        f"threads={result['threads']}; op groups and 'other' as in docs/torch-mapping.md",
    ]
    return render(result, fmt, MEASURE_COLUMNS, f"Measured SG step in PyTorch: {arch.name}", footer, MEASURE_CSV)


def train_command(arch_path: Path, *, data, epochs, batch, impl, seed, fmt, progress=None) -> str:
    import sys

    arch = load_arch(arch_path).with_batch(batch)
    from calib.memory import check_memory
    from calib.train import train

    check_memory(arch, impl)

    def report(epoch: int, loss: float, test_acc: float) -> None:
        print(f"epoch {epoch}/{epochs}: loss {loss:.4f}, test accuracy {test_acc:.4f}", file=sys.stderr)

    result = train(arch, data, epochs=epochs, batch=batch, impl=impl, seed=seed, progress=progress or report)
    if fmt == "json":
        return to_json(result)
    rows = [{"epoch": i + 1, "loss": loss} for i, loss in enumerate(result["loss"])]
    if fmt == "csv":
        return to_csv(rows, ["epoch", "loss"])
    return render_table(f"SG training: {arch.name} on {data}",
                        [("epoch", "epoch", str), ("loss", "loss", lambda v: f"{v:.4f}")], rows,
                        [f"train accuracy {result['train_accuracy']:.4f}, "
                         f"test accuracy {result['test_accuracy']:.4f}"])


def calibrate_command(*, quick, threads, dtypes, impls, output, progress=None, backend: str = "numpy",
                      accept_noisy: bool = False) -> str:
    """Calibrate, write the profile atomically, and summarise the fitted parameters. A
    calibration disturbed by other load (calib.noise) is refused, nothing written, unless
    `accept_noisy`: then it is written with its entries marked."""
    import sys

    from costmodel.errors import UsageError
    from costmodel.machine.profile import default_profile_path, load_profile, save_profile
    from costmodel.present.profile_text import render_profile

    from calib.calibrate import DTYPES, Plan, calibrate, to_profile

    check_threads(threads)
    for d in dtypes or ():
        if d not in DTYPES:
            raise UsageError(f"--dtype: {d!r} is not one of {', '.join(DTYPES)}")
    path = Path(output) if output else default_profile_path()
    check_profile_output(path, make_parents=not output)  # before a minute of calibration (and torch's import), not after it
    if backend == "torch":
        if impls:
            raise UsageError("--impl: the torch backend has one implementation, PyTorch's; leave --impl out")
        from calib.backends.torch import import_torch

        import_torch()  # a missing torch fails first, in one line
    plan = Plan.make(quick=quick, dtypes=dtypes, impls=impls, backend=backend)
    from costmodel.files import clean_stale_temps, locked

    clean_stale_temps(path)
    total = plan.points * len(plan.dtypes) * len(plan.impls)
    with _progress_bar(total) as advance:
        result = calibrate(plan, threads=threads, progress=progress or advance,
                           log=lambda line: print(line, file=sys.stderr))
    load = result["load"]
    if load["disturbed"]:
        reasons = "; ".join(load["reasons"])
        if not accept_noisy:
            raise UsageError(f"the machine was disturbed while calibrating ({reasons}): no profile written; "
                             "calibrate again on a quiet machine, or pass --accept-noisy to write it marked noisy")
        print(f"costmodel: warning: the machine was disturbed while calibrating ({reasons}): "
              "the profile is written marked noisy (--accept-noisy)", file=sys.stderr)
    elif load.get("notes"):
        print(f"costmodel: warning: {'; '.join(load['notes'])} with no other load seen: this machine's repeated "
              "timings vary that much; the profile's step interval includes it", file=sys.stderr)
    with locked(path):  # another calibration may write the same file: read, merge and write as one
        previous = None
        if path.exists():
            try:
                previous = load_profile(path)
            except UsageError as exc:  # a damaged profile (checked above) is replaced, not merged
                print(f"costmodel: warning: {exc}: replacing it", file=sys.stderr)
        profile = to_profile(result, merge_into=previous, accept_noisy=accept_noisy)
        if previous is not None and previous.network is not None:  # `calibrate --network` keeps its section
            profile = profile.model_copy(update={"network": previous.network})
        save_profile(profile, path)
    print(f"profile written to {path} ({result['calibration_seconds']:.1f} s)", file=sys.stderr)
    return render_profile(profile, "table")


class _progress_bar:
    """A rich progress bar on stderr, advanced once per sweep network."""

    def __init__(self, total: int):
        self.total = total

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.progress = Progress("calibrating", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=Console(stderr=True), transient=True)
        self.progress.start()
        task = self.progress.add_task("sweep", total=self.total)
        return lambda n=1: self.progress.advance(task, n)

    def __exit__(self, *exc):
        self.progress.stop()
        return False


def calibrate_network_command(**options) -> str:
    """`costmodel calibrate --network` (calib.parallel.commands)."""
    from calib.parallel.commands import calibrate_network_command as command

    return command(**options)
