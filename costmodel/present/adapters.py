"""The adapters of the pure side's commands: cli.py parses the options and calls one of these,
which reads the architecture and the profile, computes, and returns the text the command
prints (a table, JSON or CSV); warnings and progress go to stderr. The machine side's
adapters (measure, train, calibrate, compare) are in calib/commands.py.

`prober` is what transfers the reference profile to this machine when there is no profile
of it (costmodel.machine.resolve); the command line passes calib.probe's, so that this
module, like all of costmodel, imports nothing of calib.
"""

from __future__ import annotations

import sys
from pathlib import Path


def resolved(profile, architecture, impl: str = "index", backend: str = "numpy", threads=None, *, prober=None,
             only_impl: bool = False):
    """The profile a prediction uses (costmodel.machine.resolve): given, $COSTMODEL_PROFILE, yours,
    or the reference one transferred to this machine by a probe; its one line on stderr."""
    from costmodel.machine.resolve import resolve

    return resolve(profile, dtype=architecture.dtype, impl=impl, backend=backend, threads=threads, prober=prober,
                   only_impl=only_impl)


def _given(*, workers=None, link=None, latency=None, bandwidth=None, overlap: bool = False):
    """The data-parallel options checked (costmodel.machine.backends.parallel.given_options): the
    given link or None; with none of them given, None without importing the data-parallel model."""
    if workers is None and link is None and latency is None and bandwidth is None and not overlap:
        return None
    from costmodel.machine.backends.parallel import given_options

    return given_options(workers=workers, link=link, latency=latency, bandwidth=bandwidth, overlap=overlap)


def _plot_written(path) -> None:
    print(f"plot written to {path}", file=sys.stderr)


def costs_command(arch_path: Path, *, batch=None, impl: str = "index", fmt: str = "table",
                  symbolic: bool = False) -> str:
    """`costmodel costs`: FLOPs, bytes, intensity and memory kept of every op (or, symbolic,
    the expressions and their leading-order terms)."""
    from costmodel.model.arch import load_arch

    architecture = load_arch(arch_path).with_batch(batch)
    if symbolic:
        from costmodel.model.symbolic import symbolic_report
        from costmodel.present.tables import symbolic_output

        return symbolic_output(symbolic_report(architecture, impl), fmt)
    from costmodel.model.step import step_costs
    from costmodel.present.tables import costs_output

    return costs_output(step_costs(architecture, impl), fmt)


def predict_command(arch_path: Path, *, profile=None, batch=None, threads=None, impl: str = "index",
                    fmt: str = "table", by: str = "op", plot=None, backend: str = "numpy", workers=None,
                    link=None, latency=None, bandwidth=None, overlap: bool = False, prober=None) -> str:
    """`costmodel predict`: the time of every op and its share of the step (with `workers`,
    one worker's step of data-parallel SG); `plot`: also drawn into that file."""
    from costmodel.machine.backends import backend as get_backend
    from costmodel.machine.predict import predict as predict_step
    from costmodel.model.arch import load_arch
    from costmodel.present.tables import prediction_output

    given = _given(workers=workers, link=link, latency=latency, bandwidth=bandwidth, overlap=overlap)
    if plot:
        from costmodel.present.plots import plot_format

        plot_format(plot)  # a bad suffix fails before anything is computed
    architecture = load_arch(arch_path).with_batch(batch)
    if workers is not None:
        from costmodel.machine.backends.parallel import worker_batch

        worker_batch(architecture.batch, workers)
    res = resolved(profile, architecture, impl, backend, threads, prober=prober, only_impl=True)
    if workers is None:
        pred = predict_step(architecture, res.profile, impl=impl, threads=res.threads, backend=backend,
                            provenance=res.provenance)
    else:
        from costmodel.machine.backends.parallel import predict_data_parallel, setting_for

        pred = predict_data_parallel(architecture, res.profile, setting_for(res.profile, workers, given, overlap),
                                     impl=impl, threads=res.threads, backend=backend, provenance=res.provenance)
    if plot:
        from costmodel.present.plots import plot_predict

        plot_predict(pred, res.profile.ceilings, plot, by=by)
        _plot_written(plot)
    return prediction_output(pred, fmt, by, get_backend(backend).setting(pred.impl))


def explain_command(arch_path: Path, *, profile=None, batch=None, threads=None, impl: str = "index",
                    fmt: str = "table", workers=None, link=None, latency=None, bandwidth=None,
                    overlap: bool = False, prober=None) -> str:
    """`costmodel explain`: the report built from a predicted step's numbers (text or JSON)."""
    from costmodel.model.arch import load_arch
    from costmodel.present.explain import explain as explain_step, render_text
    from costmodel.present.report import to_json

    given = _given(workers=workers, link=link, latency=latency, bandwidth=bandwidth, overlap=overlap)
    architecture = load_arch(arch_path).with_batch(batch)
    setting = None
    if workers is not None:
        from costmodel.machine.backends.parallel import setting_for, worker_batch

        worker_batch(architecture.batch, workers)
    res = resolved(profile, architecture, impl, "numpy", threads, prober=prober)
    if workers is not None:
        setting = setting_for(res.profile, workers, given, overlap)
    facts = explain_step(architecture, res.profile, impl=impl, threads=res.threads, provenance=res.provenance,
                         data_parallel=setting)
    return to_json(facts) if fmt == "json" else render_text(facts)


def sweep_command(arch_path: Path, *, vary: str, profile=None, batch=None, threads=None, impl: str = "index",
                  by: str = "kind", fmt: str = "table", plot=None, workers=None, link=None, latency=None,
                  bandwidth=None, overlap: bool = False, prober=None) -> str:
    """`costmodel sweep`: the step predicted for each value of one size (`vary`, NAME=V1,V2,...)."""
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
    architecture = load_arch(arch_path).with_batch(batch)
    if name == WORKERS:
        check_workers_values(architecture.batch, values)
    res = resolved(profile, architecture, impl, "numpy", threads, prober=prober)
    setting = (setting_for(res.profile, workers or 1, given, overlap) if name == WORKERS or workers is not None
               else None)
    points = sweep_steps(architecture, res.profile, name, values, impl=impl, threads=res.threads,
                         data_parallel=setting)
    result = sweep_report(architecture, name, points, by, impl)
    if plot:
        from costmodel.present.plots import plot_sweep

        plot_sweep(result, plot)
        _plot_written(plot)
    return sweep_output(result, fmt)


def import_command(source: str, *, output=None, input_shape=None, batch=None, name=None, loss=None) -> str:
    """`costmodel import`: the arch.yaml of a PyTorch module, an ONNX file or a simpleNN config,
    returned, or (`output`) written atomically, only on success, and "" returned."""
    import contextlib

    from costmodel.errors import UsageError
    from costmodel.files import atomic_write, check_writable
    from costmodel.importers.source import import_source, parse_input

    shape = parse_input(input_shape) if input_shape is not None else None
    if output is not None:
        check_writable(output, label=f"-o {output}")
    with contextlib.redirect_stdout(sys.stderr):  # the model file's prints stay off the YAML
        result = import_source(source, input_shape=shape, batch=batch, name=name, loss=loss)
    if output is None:
        return result.text
    try:
        atomic_write(output, result.text)
    except OSError as exc:
        raise UsageError(f"-o {output}: cannot write: {exc.strerror or exc}") from None
    print(f"{result.summary} -> {output}", file=sys.stderr)
    return ""


def examples_text() -> str:
    """`costmodel examples`: the shipped architecture files, one a line, and their folder."""
    from costmodel.examples import description, example_paths

    paths = example_paths()
    lines = [f"{name:<24} {description(path)}" for name, path in paths.items()]
    return "\n".join(lines + [f"(in {next(iter(paths.values())).parent})"]) + "\n"


def profile_show_command(file=None, fmt: str = "table") -> str:
    """`costmodel profile show`: a machine profile (the given one, yours, else the reference)."""
    from costmodel.machine.resolve import locate
    from costmodel.present.profile_text import render_profile

    profile, path, reference = locate(file)
    if reference:
        print(f"costmodel: warning: no profile of this machine: the reference profile shipped with costmodel "
              f"({path})", file=sys.stderr)
    return render_profile(profile, fmt)


def latex_text(arch_path: Path, *, output=None, standalone=False, profile=None, measured_fractions=None,
               impl="index", batch=None, threads=None, prober=None) -> str:
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
        res = resolved(profile, architecture, impl, "numpy", threads, prober=prober)
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
