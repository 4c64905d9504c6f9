"""The `costmodel` command line: thin. Each command parses, calls one function, and prints.

Tables, JSON and CSV go to stdout; progress and warnings to stderr. A domain error
(CostModelError) becomes one line on stderr and its exit status, never a traceback.
"""

from __future__ import annotations

import functools
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

import costmodel
from costmodel.units import INT64_MAX
from costmodel.errors import CostModelError

app = typer.Typer(
    name="costmodel",
    help="Predict and explain where the time of a CNN's SG step goes on a CPU (simpleNN notation).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


class Backend(str, Enum):
    numpy = "numpy"
    torch = "torch"


class Impl(str, Enum):
    index = "index"
    strided = "strided"


#: the largest integer an option takes (sizes are counted in int64)
#: exit statuses of a run stopped by a signal, as a shell reports a process killed by it
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


def _one_line(msg: str) -> str:
    """The message on one line: control characters (a newline in a file name) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(msg))


def _err(msg: str) -> None:
    typer.echo(f"costmodel: error: {_one_line(msg)}", err=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds as for ^C: temporary files
    removed, nothing half-written; the CLI exits with 143."""


def _raise_terminated(signum, frame):
    raise Terminated()


def handle_sigterm():
    """Treat SIGTERM like SIGINT (from the main thread; elsewhere signals cannot be set).
    Returns the handler it replaced (None when it set none)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        return signal.signal(signal.SIGTERM, _raise_terminated)
    return None


def domain_errors(fn):
    """Turn CostModelError into one line on stderr and its exit status; ^C into status 130 and
    SIGTERM into 143, each with one line; a closed stdout (`| head`) ends quietly; running out
    of memory or stack is one line, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = handle_sigterm()
        try:
            return fn(*args, **kwargs)
        except CostModelError as exc:
            _err(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except Terminated:
            _err("terminated (SIGTERM): nothing was written")
            raise typer.Exit(EXIT_SIGTERM) from None
        except KeyboardInterrupt:
            _err("interrupted: nothing was written")
            raise typer.Exit(EXIT_SIGINT) from None
        except BrokenPipeError:
            _quiet_stdout()
            raise typer.Exit(141) from None
        except MemoryError:
            _err("out of memory (the machine or a ulimit/cgroup limit): try a smaller --batch")
            raise typer.Exit(1) from None
        except RecursionError:
            _err("input nested too deeply")
            raise typer.Exit(2) from None
        finally:
            if previous is not None:  # a command run in process (tests, an API) leaves SIGTERM as it was
                import signal

                signal.signal(signal.SIGTERM, previous)

    return wrapper


def _quiet_stdout() -> None:
    """After a reader closed stdout: point it at /dev/null, so the interpreter's final flush
    does not report the broken pipe."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _version(value: bool) -> None:
    if value:
        typer.echo(f"costmodel {costmodel.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """Predict and explain where the time of a CNN's SG step goes on a CPU."""


ArchArg = Annotated[Optional[Path], typer.Argument(help="Architecture file (arch.yaml, a simpleNN .config or an .onnx "
                                                   "file); or give --example NAME.",
                                                   show_default=False)]
ExampleOpt = Annotated[Optional[str], typer.Option("--example", help="A shipped architecture instead of a file "
                                                   "(`costmodel examples` lists them).", show_default=False)]


def _arch_file(arch: Optional[Path], example: Optional[str]) -> Path:
    """The architecture file a command reads: ARCH, or the shipped example --example names."""
    from costmodel.errors import UsageError

    if (arch is None) == (example is None):
        raise UsageError("give an architecture file ARCH or --example NAME (one of them)")
    if example is None:
        return arch
    from costmodel.examples import example_path

    return example_path(example)


BatchOpt = Annotated[Optional[int], typer.Option("--batch", min=1, max=INT64_MAX,
                                                 help="Mini-batch size I (overrides the file).")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1, max=1024, help="BLAS threads (default: all).")]
StepsOpt = Annotated[int, typer.Option(min=1, max=1_000_000, help="Timed SG steps.")]
WarmupOpt = Annotated[int, typer.Option(min=0, max=1_000_000, help="Untimed steps first.")]
ImplOpt = Annotated[Impl, typer.Option("--impl", help="Implementation of the index-heavy ops.")]
FormatOpt = Annotated[Format, typer.Option("--format", help="Output format.")]


WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="Data-parallel SG: P worker processes on this "
                                                   "machine (gloo), each on its share of the cores.")]
InitOpt = Annotated[Optional[str], typer.Option("--init", help="Join a data-parallel group across machines: "
                                                "tcp://HOST:PORT of rank 0 (or env:// for torchrun's variables).")]
RankOpt = Annotated[Optional[int], typer.Option("--rank", help="With --init: this process's rank R.")]
WorldSizeOpt = Annotated[Optional[int], typer.Option("--world-size", help="With --init: the number of workers P.")]
OversubscribeOpt = Annotated[bool, typer.Option("--oversubscribe", help="Allow more worker threads than cores.")]
TimeoutOpt = Annotated[Optional[float], typer.Option("--timeout", help="Seconds the rendezvous and every "
                                                     "collective may take (default 60).")]


def _progress(label: str):
    """A progress callback writing one updating line to stderr (silent when stderr is not a tty)."""
    interactive = sys.stderr.isatty()

    def report(i: int, n: int) -> None:
        if interactive:
            end = "\n" if i >= n else ""
            sys.stderr.write(f"\r{label}: {i}/{n}{end}")
            sys.stderr.flush()

    return report


@app.command()
@domain_errors
def measure(
    arch: ArchArg = None,
    example: ExampleOpt = None,
    batch: BatchOpt = None,
    steps: StepsOpt = 10,
    warmup: WarmupOpt = 2,
    threads: ThreadsOpt = None,
    impl: ImplOpt = Impl.index,
    fmt: FormatOpt = Format.table,
    backend: Annotated[Backend, typer.Option("--backend", help="numpy: the reference CNN; torch: the same "
                                             "step in PyTorch, per op from torch.profiler.")] = Backend.numpy,
    workers: WorkersOpt = None,
    overlap: Annotated[bool, typer.Option("--overlap", help="Data-parallel: allreduce asynchronously while the "
                                          "backward goes on (waited for before the update).")] = False,
    init: InitOpt = None,
    rank: RankOpt = None,
    world_size: WorldSizeOpt = None,
    oversubscribe: OversubscribeOpt = False,
    timeout: TimeoutOpt = None,
) -> None:
    """Run real SG steps of the reference NumPy CNN (or PyTorch) and report the time of every op;
    with --workers P (or --init), data-parallel SG on torch.distributed (docs/data-parallel.md)."""
    arch = _arch_file(arch, example)
    from calib.commands import measure_command

    typer.echo(measure_command(arch, batch=batch, steps=steps, warmup=warmup, threads=threads,
                               impl=impl.value, fmt=fmt.value, progress=_progress("measure"),
                               backend=backend.value, workers=workers, overlap=overlap, init=init, rank=rank,
                               world_size=world_size, oversubscribe=oversubscribe, timeout=timeout), nl=False)


@app.command()
@domain_errors
def train(
    data: Annotated[str, typer.Option(help="'digits' (scikit-learn's 8x8 digits) or an .npz with X (N,H,W,C) "
                                      "and y.")],
    arch: ArchArg = None,
    example: ExampleOpt = None,
    epochs: Annotated[int, typer.Option(min=1, max=1_000_000)] = 10,
    batch: BatchOpt = None,
    impl: ImplOpt = Impl.index,
    seed: Annotated[int, typer.Option(min=0, max=INT64_MAX, help="Seed of the weights and the shuffling.")] = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Train the reference CNN with simpleNN's SG with momentum; report loss and test accuracy."""
    arch = _arch_file(arch, example)
    from calib.commands import train_command

    typer.echo(train_command(arch, data=data, epochs=epochs, batch=batch, impl=impl.value, seed=seed,
                             fmt=fmt.value), nl=False)


@app.command()
@domain_errors
def costs(
    arch: ArchArg = None,
    example: ExampleOpt = None,
    batch: BatchOpt = None,
    impl: ImplOpt = Impl.index,
    fmt: FormatOpt = Format.table,
    symbolic: Annotated[bool, typer.Option("--symbolic", help="Print the expressions and their leading-order terms.")] = False,
) -> None:
    """FLOPs, bytes, arithmetic intensity and memory kept of every op (symbolic cost model)."""
    arch = _arch_file(arch, example)
    from costmodel.model.arch import load_arch

    architecture = load_arch(arch).with_batch(batch)
    if symbolic:
        from costmodel.model.symbolic import symbolic_report
        from costmodel.present.tables import symbolic_output

        text = symbolic_output(symbolic_report(architecture, impl.value), fmt.value)
    else:
        from costmodel.model.step import step_costs
        from costmodel.present.tables import costs_output

        text = costs_output(step_costs(architecture, impl.value), fmt.value)
    typer.echo(text, nl=False)


class By(str, Enum):
    op = "op"
    layer = "layer"
    phase = "phase"
    kind = "kind"


PredictWorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="Data-parallel SG: predict one worker's "
                                                          "step of P, each on I/P instances, with the allreduces "
                                                          "(docs/data-parallel.md).", show_default=False)]
LinkOpt = Annotated[Optional[str], typer.Option("--link", help="With --workers: the link, 1GbE, 10GbE, 25GbE or 100GbE "
                                                "(default: the profile's network section).", show_default=False)]
LatencyOpt = Annotated[Optional[str], typer.Option("--latency", help="With --workers and --bandwidth: a link's "
                                                   "latency, e.g. 50us.", show_default=False)]
BandwidthOpt = Annotated[Optional[str], typer.Option("--bandwidth", help="With --workers and --latency: a link's "
                                                     "bandwidth, e.g. 1.25GB/s.", show_default=False)]
OverlapOpt = Annotated[bool, typer.Option("--overlap", help="With --workers: the allreduces overlap the backward "
                                          "(composition overlap; default: sum).")]
ProfileOpt = Annotated[Optional[Path], typer.Option("--profile", help="Machine profile (default: yours, else the shipped reference).")]
PlotOpt = Annotated[Optional[Path], typer.Option("--plot", help="Also draw the result into FILE.png or FILE.pdf.")]


@app.command()
@domain_errors
def predict(
    arch: ArchArg = None,
    example: ExampleOpt = None,
    profile: ProfileOpt = None,
    batch: BatchOpt = None,
    threads: ThreadsOpt = None,
    impl: ImplOpt = Impl.index,
    fmt: FormatOpt = Format.table,
    by: Annotated[By, typer.Option("--by", help="Group the ops.")] = By.op,
    plot: PlotOpt = None,
    backend: Annotated[Backend, typer.Option("--backend", help="numpy: the reference CNN's ops; torch: the "
                                             "same step in PyTorch, per op group (needs a torch calibration, "
                                             "not torch itself).")] = Backend.numpy,
    workers: PredictWorkersOpt = None,
    link: LinkOpt = None,
    latency: LatencyOpt = None,
    bandwidth: BandwidthOpt = None,
    overlap: OverlapOpt = False,
) -> None:
    """Predict the time of every op of an SG step, and its share of the step, from a machine profile;
    with --workers P, one worker's step of data-parallel SG."""
    arch = _arch_file(arch, example)
    from costmodel.machine.backends import backend as get_backend
    from costmodel.machine.backends.parallel import given_options, predict_data_parallel, setting_for, worker_batch
    from costmodel.machine.predict import predict as predict_step
    from costmodel.model.arch import load_arch
    from costmodel.present.tables import prediction_output

    given = given_options(workers=workers, link=link, latency=latency, bandwidth=bandwidth, overlap=overlap)
    if plot:
        from costmodel.present.plots import plot_format

        plot_format(plot)  # a bad suffix fails before anything is computed
    architecture = load_arch(arch).with_batch(batch)
    if workers is not None:
        worker_batch(architecture.batch, workers)
    res = _resolved(profile, architecture, impl.value, backend.value, threads)
    if workers is None:
        pred = predict_step(architecture, res.profile, impl=impl.value, threads=res.threads, backend=backend.value,
                            provenance=res.provenance)
    else:
        pred = predict_data_parallel(architecture, res.profile, setting_for(res.profile, workers, given, overlap),
                                     impl=impl.value, threads=res.threads, backend=backend.value,
                                     provenance=res.provenance)
    if plot:
        from costmodel.present.plots import plot_predict

        plot_predict(pred, res.profile.ceilings, plot, by=by.value)
        _plot_written(plot)
    typer.echo(prediction_output(pred, fmt.value, by.value, get_backend(backend.value).setting(pred.impl)), nl=False)


@app.command()
@domain_errors
def calibrate(
    quick: Annotated[bool, typer.Option("--quick", help="float32 and the default implementation, a smaller sweep.")] = False,
    threads: ThreadsOpt = None,
    dtype: Annotated[Optional[list[str]], typer.Option("--dtype", help="float32 and/or float64 (default: both).")] = None,
    impl: Annotated[Optional[list[Impl]], typer.Option("--impl", help="index and/or strided (default: both).")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Profile file (default: your cache directory).")] = None,
    backend: Annotated[Backend, typer.Option("--backend", help="numpy: the reference CNN's op kernels; torch: "
                                             "PyTorch's op groups (needs the torch extra).")] = Backend.numpy,
    accept_noisy: Annotated[bool, typer.Option("--accept-noisy", help="Write the profile even if other load "
                                               "disturbed the calibration, marked noisy.")] = False,
    network: Annotated[bool, typer.Option("--network", help="Calibrate the network instead: a gloo allreduce "
                                          "microbenchmark, fitted to the ring model (alpha, beta).")] = False,
    workers: WorkersOpt = None,
    link: Annotated[Optional[str], typer.Option("--link", help="With --network: a link you do not have: 1GbE, "
                                                "10GbE, 25GbE or 100GbE (docs/data-parallel.md).")] = None,
    latency: Annotated[Optional[str], typer.Option("--latency", help="With --network: a given link's latency, "
                                                   "e.g. 50us.")] = None,
    bandwidth: Annotated[Optional[str], typer.Option("--bandwidth", help="With --network: a given link's "
                                                     "bandwidth, e.g. 1.25GB/s or 10Gbit/s.")] = None,
    init: InitOpt = None,
    rank: RankOpt = None,
    world_size: WorldSizeOpt = None,
    oversubscribe: OversubscribeOpt = False,
    timeout: TimeoutOpt = None,
) -> None:
    """Time the reference CNN's op kernels (or PyTorch's) on this CPU, fit the cost model, write a machine profile;
    with --network, the allreduce between data-parallel workers."""
    network_options = {"--workers": workers, "--link": link, "--latency": latency, "--bandwidth": bandwidth,
                       "--init": init, "--rank": rank, "--world-size": world_size,
                       "--oversubscribe": oversubscribe or None, "--timeout": timeout}
    if network:
        from costmodel.errors import UsageError

        for name, value in {"--dtype": dtype, "--impl": impl,
                            "--backend": backend if backend != Backend.numpy else None}.items():
            if value:
                raise UsageError(f"{name} is for the op models; leave it out with --network")
        from calib.commands import calibrate_network_command

        typer.echo(calibrate_network_command(workers=workers, init=init, rank=rank, world_size=world_size,
                                             threads=threads, timeout=timeout, oversubscribe=oversubscribe, link=link,
                                             latency=latency, bandwidth=bandwidth, quick=quick, output=output,
                                             fmt="table"), nl=False)
        return
    given = [name for name, value in network_options.items() if value is not None]
    if given:
        from costmodel.errors import UsageError

        raise UsageError(f"{given[0]} goes with --network")
    from calib.commands import calibrate_command

    typer.echo(calibrate_command(quick=quick, threads=threads, dtypes=dtype,
                                 impls=[i.value for i in impl] if impl else None, output=output,
                                 backend=backend.value, accept_noisy=accept_noisy), nl=False)


@app.command()
@domain_errors
def compare(
    arch: ArchArg = None,
    example: ExampleOpt = None,
    profile: ProfileOpt = None,
    batch: BatchOpt = None,
    threads: ThreadsOpt = None,
    impl: ImplOpt = Impl.index,
    steps: StepsOpt = 10,
    warmup: WarmupOpt = 2,
    fmt: FormatOpt = Format.table,
    plot: PlotOpt = None,
    backends: Annotated[str, typer.Option("--backends", help="numpy (or torch): that backend predicted against "
                                          "measured; numpy,torch: the NumPy step against PyTorch's per op "
                                          "group, explained.")] = "numpy",
) -> None:
    """Measure real steps and predict them: per op, measured and predicted fractions beside FLOP and byte shares
    (or, with --backends numpy,torch, the NumPy step against PyTorch's per op group)."""
    arch = _arch_file(arch, example)
    from calib.commands import compare_command

    typer.echo(compare_command(arch, profile=profile, batch=batch, threads=threads, impl=impl.value,
                               steps=steps, warmup=warmup, fmt=fmt.value, progress=_progress("measure"),
                               plot=plot, backends=backends), nl=False)


class TextFormat(str, Enum):
    table = "table"
    json = "json"


@app.command()
@domain_errors
def explain(
    arch: ArchArg = None,
    example: ExampleOpt = None,
    profile: ProfileOpt = None,
    batch: BatchOpt = None,
    threads: ThreadsOpt = None,
    impl: ImplOpt = Impl.index,
    fmt: Annotated[TextFormat, typer.Option("--format", help="Output format.")] = TextFormat.table,
    workers: PredictWorkersOpt = None,
    link: LinkOpt = None,
    latency: LatencyOpt = None,
    bandwidth: BandwidthOpt = None,
    overlap: OverlapOpt = False,
) -> None:
    """Explain a predicted step from its numbers: major ops, compute- or memory-bound, FLOP share
    against time share, the slides' ratios, the other implementation, the mini-batch size; with
    --workers P, data-parallel SG: when the network becomes communication-bound."""
    arch = _arch_file(arch, example)
    from costmodel.machine.backends.parallel import given_options, setting_for, worker_batch
    from costmodel.model.arch import load_arch
    from costmodel.present.explain import explain as explain_step, render_text
    from costmodel.present.report import to_json

    given = given_options(workers=workers, link=link, latency=latency, bandwidth=bandwidth, overlap=overlap)
    architecture = load_arch(arch).with_batch(batch)
    if workers is not None:
        worker_batch(architecture.batch, workers)
    res = _resolved(profile, architecture, impl.value, "numpy", threads)
    setting = setting_for(res.profile, workers, given, overlap) if workers is not None else None
    facts = explain_step(architecture, res.profile, impl=impl.value, threads=res.threads, provenance=res.provenance,
                         data_parallel=setting)
    typer.echo(to_json(facts) if fmt.value == "json" else render_text(facts), nl=False)


@app.command()
@domain_errors
def sweep(
    vary: Annotated[str, typer.Option("--vary", help="NAME=V1,V2,...: batch=1,8,64,512, or a field of the "
                                      "architecture file such as layers[1].filters=16,32,64.")],
    arch: ArchArg = None,
    example: ExampleOpt = None,
    profile: ProfileOpt = None,
    batch: BatchOpt = None,
    threads: ThreadsOpt = None,
    impl: ImplOpt = Impl.index,
    by: Annotated[By, typer.Option("--by", help="Group the ops.")] = By.kind,
    fmt: FormatOpt = Format.table,
    plot: PlotOpt = None,
    workers: PredictWorkersOpt = None,
    link: LinkOpt = None,
    latency: LatencyOpt = None,
    bandwidth: BandwidthOpt = None,
    overlap: OverlapOpt = False,
) -> None:
    """Predict the step for each value of one size: its time and the fractions of its ops
    (--vary workers=1,2,4,...: data-parallel SG on P workers, its speedup and efficiency)."""
    arch = _arch_file(arch, example)
    from costmodel.errors import UsageError
    from costmodel.machine.backends.parallel import given_options, setting_for
    from costmodel.machine.sweep import WORKERS, check_workers_values, parse_vary, sweep as sweep_steps
    from costmodel.model.arch import load_arch
    from costmodel.present.data import sweep_report
    from costmodel.present.tables import sweep_output

    name, values = parse_vary(vary)
    if name == WORKERS and workers is not None:
        raise UsageError("--workers with --vary workers=...: the sweep gives P; leave out --workers")
    given = given_options(workers=workers, link=link, latency=latency, bandwidth=bandwidth, overlap=overlap,
                          sweep_workers=name == WORKERS)
    if plot:
        from costmodel.present.plots import plot_format

        plot_format(plot)  # a bad suffix fails before any prediction
    architecture = load_arch(arch).with_batch(batch)
    if name == WORKERS:
        check_workers_values(architecture.batch, values)
    res = _resolved(profile, architecture, impl.value, "numpy", threads)
    setting = (setting_for(res.profile, workers or 1, given, overlap) if name == WORKERS or workers is not None
               else None)
    points = sweep_steps(architecture, res.profile, name, values, impl=impl.value, threads=res.threads,
                         data_parallel=setting)
    result = sweep_report(architecture, name, points, by.value, impl.value)
    if plot:
        from costmodel.present.plots import plot_sweep

        plot_sweep(result, plot)
        _plot_written(plot)
    typer.echo(sweep_output(result, fmt.value), nl=False)


class Loss(str, Enum):
    mse = "mse"
    softmax_ce = "softmax_ce"


@app.command("import")
@domain_errors
def import_network(
    source: Annotated[str, typer.Argument(help="FILE.py:NAME (a function or class making a torch.nn.Module with no "
                                          "arguments), FILE.onnx, or a simpleNN FILE.config.", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write the arch.yaml to this file "
                                                   "(atomically, only on success); default: stdout.")] = None,
    input_shape: Annotated[Optional[str], typer.Option("--input", help="One instance's input: CxHxW (3x32x32) or n "
                                                       "(a vector). Required for a PyTorch module.")] = None,
    batch: BatchOpt = None,
    name: Annotated[Optional[str], typer.Option("--name", help="The network's name (default: NAME or the file's "
                                                "stem).")] = None,
    loss: Annotated[Optional[Loss], typer.Option("--loss", help="The loss after the output layer (default: "
                                                 "softmax_ce, or the network's own softmax).")] = None,
) -> None:
    """Import a network as an arch.yaml: a PyTorch module, an ONNX file or a simpleNN config.

    FILE.py:NAME runs FILE.py, your model file, and calls NAME() to make the module; it runs nothing else but PyTorch's tracing (torch.fx, else torch.export). An ONNX file is only parsed, never run.

    An op the format cannot describe is refused in one line naming it; nothing is written then. Needs the torch extra for a module (pip install 'costmodel[torch]'), the onnx extra for an ONNX file (pip install 'costmodel[onnx]').
    """
    import contextlib

    from costmodel.files import atomic_write, check_writable
    from costmodel.errors import UsageError
    from costmodel.importers.source import import_source, parse_input

    shape = parse_input(input_shape) if input_shape is not None else None
    if output is not None:
        check_writable(output, label=f"-o {output}")
    with contextlib.redirect_stdout(sys.stderr):  # the model file's prints stay off the YAML
        result = import_source(source, input_shape=shape, batch=batch, name=name,
                               loss=loss.value if loss else None)
    if output is None:
        typer.echo(result.text, nl=False)
        return
    try:
        atomic_write(output, result.text)
    except OSError as exc:
        raise UsageError(f"-o {output}: cannot write: {exc.strerror or exc}") from None
    print(f"{result.summary} -> {output}", file=sys.stderr)


@app.command()
@domain_errors
def examples() -> None:
    """The architecture files shipped with costmodel: use one with --example NAME."""
    from costmodel.examples import description, example_paths

    for name, path in example_paths().items():
        typer.echo(f"{name:<24} {description(path)}")
    typer.echo(f"(in {next(iter(example_paths().values())).parent})")


profile_app = typer.Typer(help="Machine profiles.", no_args_is_help=True)
app.add_typer(profile_app, name="profile")


@profile_app.command("show")
@domain_errors
def profile_show(
    file: Annotated[Optional[Path], typer.Argument(help="Profile file (default: yours, else the shipped reference).")] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Show a machine profile: fingerprint, ceilings, fitted parameters and their CV errors."""
    from costmodel.present.profile_text import render_profile
    from costmodel.machine.resolve import locate

    profile, path, reference = locate(file)
    if reference:
        typer.echo(f"costmodel: warning: no profile of this machine: the reference profile shipped with costmodel "
                   f"({path})", err=True)
    typer.echo(render_profile(profile, fmt.value), nl=False)


@app.command()
@domain_errors
def latex(
    arch: ArchArg = None,
    example: ExampleOpt = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write the LaTeX to this file (atomically).")] = None,
    standalone: Annotated[bool, typer.Option("--standalone", help="A complete document, not a fragment to \\input.")] = False,
    profile: ProfileOpt = None,
    measured: Annotated[bool, typer.Option("--measured", help="Also measure the ops' fractions on this machine.")] = False,
    batch: BatchOpt = None,
    threads: ThreadsOpt = None,
    impl: ImplOpt = Impl.index,
) -> None:
    """LaTeX tables in the course's notation: each op's complexity, the step's predicted times, the profile."""
    arch = _arch_file(arch, example)
    options = dict(output=output, standalone=standalone, profile=profile, impl=impl.value, batch=batch,
                   threads=threads)
    fractions = None
    if measured:
        from calib.commands import measured_fractions

        fractions = measured_fractions(arch, impl=impl.value, batch=batch, threads=threads,
                                       progress=_progress("measure"))
    text = latex_text(arch, **options, measured_fractions=fractions)
    typer.echo(text, nl=False)


def latex_text(arch_path: Path, *, output=None, standalone=False, profile=None, measured_fractions=None,
               impl="index", batch=None, threads=None) -> str:
    """The LaTeX tables of the arch's step (costmodel.present.latex): written atomically to
    `output` (then "" is returned), else returned. Without `profile`, the user's or the shipped
    one is used; if neither exists, the tables have no time columns and say so.
    `measured_fractions`: (layer, op, phase) -> measured fraction of the step."""
    from costmodel.errors import UsageError
    from costmodel.machine.profile import default_profile_path, embedded_profile_path
    from costmodel.model.arch import load_arch
    from costmodel.present.latex import latex_document
    from costmodel.present.report import atomic_write

    architecture = load_arch(arch_path).with_batch(batch)
    found = None
    if profile is not None or default_profile_path().exists() or embedded_profile_path().exists():
        res = _resolved(profile, architecture, impl, "numpy", threads)
        found, threads = res.profile, res.threads
    text = latex_document(architecture, impl=impl, profile=found, threads=threads, measured=measured_fractions,
                          standalone=standalone)
    if output is None:
        return text
    try:
        atomic_write(output, text)
    except OSError as exc:
        raise UsageError(f"{output}: cannot write: {exc.strerror or exc}") from None
    return ""


def _prober(**needs):
    """This machine's probe (calib.probe, cached): what transfers the reference profile."""
    from calib.probe import cached_probe

    return cached_probe(**needs)[0]


def _resolved(profile, architecture, impl: str = "index", backend: str = "numpy", threads=None):
    """The profile a prediction uses (costmodel.machine.resolve): given, $COSTMODEL_PROFILE, yours,
    or the reference one transferred to this machine by a probe; its one line on stderr."""
    from costmodel.machine.resolve import resolve

    return resolve(profile, dtype=architecture.dtype, impl=impl, backend=backend, threads=threads, prober=_prober)


def _plot_written(path) -> None:
    print(f"plot written to {path}", file=sys.stderr)


def main() -> None:
    """Console-script entry point. A usage error (an unknown option, `--batch abc`, a value out
    of range) is one line naming the option, exit status 2, like every other bad input."""
    handle_sigterm()
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    try:
        status = app(standalone_mode=False)
    except NoArgsIsHelpError as exc:
        exc.show()
        status = exc.exit_code
    except ClickException as exc:
        _err(exc.format_message())
        status = exc.exit_code
    except Terminated:
        _err("terminated (SIGTERM)")
        status = EXIT_SIGTERM
    except (typer.Abort, KeyboardInterrupt):
        _err("interrupted")
        status = EXIT_SIGINT
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    main()
