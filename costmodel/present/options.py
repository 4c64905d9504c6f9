"""The options and arguments the commands of the command line (cli.py) share, as typer
annotations, and the choices they take."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from costmodel.units import INT64_MAX


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


class TextFormat(str, Enum):
    table = "table"
    json = "json"


class By(str, Enum):
    op = "op"
    layer = "layer"
    phase = "phase"
    kind = "kind"


class Loss(str, Enum):
    mse = "mse"
    softmax_ce = "softmax_ce"


ArchArg = Annotated[Optional[Path], typer.Argument(help="Architecture file (arch.yaml, a simpleNN .config or an .onnx "
                                                   "file); or give --example NAME.",
                                                   show_default=False)]
ExampleOpt = Annotated[Optional[str], typer.Option("--example", help="A shipped architecture instead of a file "
                                                   "(`costmodel examples` lists them).", show_default=False)]
BatchOpt = Annotated[Optional[int], typer.Option("--batch", min=1, max=INT64_MAX,
                                                 help="Mini-batch size I (overrides the file).")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1, max=1024, help="BLAS threads (default: all).")]
StepsOpt = Annotated[int, typer.Option(min=1, max=1_000_000, help="Timed SG steps.")]
WarmupOpt = Annotated[int, typer.Option(min=0, max=1_000_000, help="Untimed steps first.")]
ImplOpt = Annotated[Impl, typer.Option("--impl", help="Implementation of the index-heavy ops.")]
#: --impl of a command that also takes a backend: None when it is not given, so that giving it
#: with --backend torch (which has one implementation, PyTorch's) can be refused, not ignored
BackendImplOpt = Annotated[Optional[Impl], typer.Option("--impl", help="Implementation of the NumPy backend's "
                                                        "index-heavy ops (default: index).", show_default=False)]


def backend_impl(impl: Impl | None, backend: str) -> str:
    """The implementation a command with a backend runs: --impl's, index when it is not given.
    --impl given with backend "torch" is a UsageError (exit 2): PyTorch has no index or strided
    variant, and the option would otherwise be silently ignored."""
    if impl is not None and backend == "torch":
        from costmodel.errors import UsageError

        raise UsageError("--impl: the torch backend has one implementation, PyTorch's; leave --impl out")
    return (impl or Impl.index).value
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


def arch_file(arch: Optional[Path], example: Optional[str]) -> Path:
    """The architecture file a command reads: ARCH, or the shipped example --example names;
    UsageError unless exactly one is given."""
    from costmodel.errors import UsageError

    if (arch is None) == (example is None):
        raise UsageError("give an architecture file ARCH or --example NAME (one of them)")
    if example is None:
        return arch
    from costmodel.examples import example_path

    return example_path(example)
