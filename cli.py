"""The `costmodel` command line: thin. Each command parses, calls one function, and prints.

The functions are the adapters of costmodel/present/adapters.py (the pure side: costs, predict,
explain, sweep, latex, import, profile show) and calib/commands.py (the machine side: measure,
train, calibrate, compare). Tables, JSON and CSV go to stdout; progress and warnings to stderr.
A domain error (CostModelError) becomes one line on stderr and its exit status, never a
traceback (costmodel/present/terminal.py).

No ``from __future__ import annotations`` here: typer reads every command's annotations when it
builds the app, and string annotations would be evaluated again on every run (~10 ms cold).
"""

import gc
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

# A command-line process is short: the cyclic garbage collector's passes over what the imports
# make (numpy, pydantic, typer, costmodel) took ~9 ms of a cold `predict` (5 %, measured
# 2026-12-01) and free nothing that matters. The machine side's long commands turn it back on
# (_long_command): torch.profiler's event trees, for one, are cycles.
gc.disable()

import typer  # noqa: E402

import costmodel
from costmodel.present.options import (ArchArg, BackendImplOpt, BandwidthOpt, Backend, BatchOpt, By, ExampleOpt,
                                       Format, FormatOpt, Impl, ImplOpt, InitOpt, LatencyOpt, LinkOpt, Loss, OverlapOpt,
                                       OversubscribeOpt, PlotOpt, PredictWorkersOpt, ProfileOpt, RankOpt, StepsOpt,
                                       TextFormat, ThreadsOpt, TimeoutOpt, WarmupOpt, WorkersOpt, WorldSizeOpt,
                                       arch_file as _arch_file, backend_impl)
from costmodel.present.terminal import (domain_errors, exit_process, handle_sigterm,  # noqa: F401  (tests)
                                        one_line as _one_line, progress_line, run_app)
from costmodel.units import INT64_MAX

app = typer.Typer(
    name="costmodel",
    help="Predict and explain where the time of a CNN's SG step goes on a CPU (simpleNN notation).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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


@app.command()
@domain_errors
def measure(
    arch: ArchArg = None,
    example: ExampleOpt = None,
    batch: BatchOpt = None,
    steps: StepsOpt = 10,
    warmup: WarmupOpt = 2,
    threads: ThreadsOpt = None,
    impl: BackendImplOpt = None,
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
    _long_command()
    arch = _arch_file(arch, example)
    from calib.commands import measure_command

    typer.echo(measure_command(arch, batch=batch, steps=steps, warmup=warmup, threads=threads,
                               impl=backend_impl(impl, backend.value), fmt=fmt.value, progress=progress_line("measure"),
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
    _long_command()
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
    from costmodel.present.adapters import costs_command

    typer.echo(costs_command(_arch_file(arch, example), batch=batch, impl=impl.value, fmt=fmt.value,
                             symbolic=symbolic), nl=False)


@app.command()
@domain_errors
def predict(
    arch: ArchArg = None,
    example: ExampleOpt = None,
    profile: ProfileOpt = None,
    batch: BatchOpt = None,
    threads: ThreadsOpt = None,
    impl: BackendImplOpt = None,
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
    from costmodel.present.adapters import predict_command

    typer.echo(predict_command(arch, profile=profile, batch=batch, threads=threads,
                               impl=backend_impl(impl, backend.value), fmt=fmt.value,
                               by=by.value, plot=plot, backend=backend.value, workers=workers, link=link,
                               latency=latency, bandwidth=bandwidth, overlap=overlap, prober=_prober), nl=False)


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
    _long_command()
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
                                             fmt="table", accept_noisy=accept_noisy), nl=False)
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
    impl: BackendImplOpt = None,
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
    _long_command()
    arch = _arch_file(arch, example)
    from calib.compare_commands import compare_command, parse_backends

    impl_name = backend_impl(impl, "torch" if parse_backends(backends) == ("torch",) else "numpy")
    typer.echo(compare_command(arch, profile=profile, batch=batch, threads=threads, impl=impl_name,
                               steps=steps, warmup=warmup, fmt=fmt.value, progress=progress_line("measure"),
                               plot=plot, backends=backends), nl=False)


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
    from costmodel.present.adapters import explain_command

    typer.echo(explain_command(arch, profile=profile, batch=batch, threads=threads, impl=impl.value, fmt=fmt.value,
                               workers=workers, link=link, latency=latency, bandwidth=bandwidth, overlap=overlap,
                               prober=_prober), nl=False)


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
    from costmodel.present.adapters import sweep_command

    typer.echo(sweep_command(arch, vary=vary, profile=profile, batch=batch, threads=threads, impl=impl.value,
                             by=by.value, fmt=fmt.value, plot=plot, workers=workers, link=link, latency=latency,
                             bandwidth=bandwidth, overlap=overlap, prober=_prober), nl=False)


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
    from costmodel.present.adapters import import_command

    typer.echo(import_command(source, output=output, input_shape=input_shape, batch=batch, name=name,
                              loss=loss.value if loss else None), nl=False)


@app.command()
@domain_errors
def examples() -> None:
    """The architecture files shipped with costmodel: use one with --example NAME."""
    from costmodel.present.adapters import examples_text

    typer.echo(examples_text(), nl=False)


profile_app = typer.Typer(help="Machine profiles.", no_args_is_help=True)
app.add_typer(profile_app, name="profile")


@profile_app.command("show")
@domain_errors
def profile_show(
    file: Annotated[Optional[Path], typer.Argument(help="Profile file (default: yours, else the shipped reference).")] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Show a machine profile: fingerprint, ceilings, fitted parameters and their CV errors."""
    from costmodel.present.adapters import profile_show_command

    typer.echo(profile_show_command(file, fmt.value), nl=False)


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
    if output is not None:  # before the work (and a --measured run): a place LaTeX can go
        from costmodel.errors import UsageError
        from costmodel.files import check_writable

        if Path(output).suffix.lower() != ".tex":
            raise UsageError(f"-o {output}: the LaTeX source goes to a .tex file (compile it with pdflatex)")
        check_writable(output, label=f"-o {output}")
    options = dict(output=output, standalone=standalone, profile=profile, impl=impl.value, batch=batch,
                   threads=threads)
    fractions = None
    if measured:
        _long_command()
        from calib.compare_commands import measured_fractions

        fractions = measured_fractions(arch, impl=impl.value, batch=batch, threads=threads,
                                       progress=progress_line("measure"))
    from costmodel.present.adapters import latex_text

    typer.echo(latex_text(arch, **options, measured_fractions=fractions, prober=_prober), nl=False)


def _long_command() -> None:
    """A command that runs real steps (measure, train, calibrate, compare, latex --measure):
    the garbage collector on again (see the top of this file)."""
    gc.enable()


def _prober(**needs):
    """This machine's probe (calib.probe, cached): what transfers the reference profile."""
    from calib.probe import cached_probe

    return cached_probe(**needs)[0]


def main() -> None:
    """Console-script entry point. A usage error (an unknown option, `--batch abc`, a value out
    of range) is one line naming the option, exit status 2, like every other bad input."""
    handle_sigterm()
    # costmodel validates its files with pydantic; looking for pydantic plugins scans every installed
    # package's entry points (importlib.metadata), a cold process's ~20 ms: none is loaded unless asked
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    status = run_app(app)
    group = sys.modules.get("calib.parallel.process_group")
    if group is not None and group.joined_here:  # --init: this process was a rank of a gloo group
        group.exit_now(status)
    exit_process(status)


if __name__ == "__main__":
    main()
