"""The compare command (called by cli.py): measure real steps and predict them, per op the
measured and predicted fractions beside the FLOP and byte shares; or the NumPy step against
PyTorch's per op group; and the measured fractions `costmodel latex --measured` prints."""

from __future__ import annotations

from pathlib import Path

from costmodel.model.arch import load_arch
from costmodel.present.report import fmt_fraction, fmt_seconds, render

from calib.commands import check_threads, warn_if_disturbed

COMPARE_COLUMNS = [
    ("layer", "layer", str), ("op", "op", str), ("phase", "phase", str),
    ("measured", "measured_seconds", fmt_seconds), ("predicted", "predicted_seconds", fmt_seconds),
    ("measured %", "measured_fraction", fmt_fraction), ("predicted %", "predicted_fraction", fmt_fraction),
    ("FLOP share", "flop_share", fmt_fraction), ("byte share", "byte_share", fmt_fraction),
    ("error (pp)", "fraction_error_pp", lambda v: f"{v:+.2f}"),
]
COMPARE_CSV = ["layer", "layer_type", "op", "phase", "kind", "measured_seconds", "predicted_seconds",
               "measured_fraction", "predicted_fraction", "flop_share", "byte_share", "fraction_error_pp",
               "flops", "bytes"]


def compare(arch, profile, *, impl: str, threads, steps: int, warmup: int, progress=None,
            backend: str = "numpy") -> dict:
    """Measure real steps and predict them; per op the measured and predicted fractions beside
    the FLOP and byte shares (the slides' practical time against theoretical complexity).
    With backend "torch", PyTorch's op groups, measured with torch.profiler."""
    from costmodel.machine.predict import predict

    if backend == "torch":
        from calib.backends.torch import measure_torch

        profile.entry(arch.dtype, "torch", threads or _torch_threads(), "torch")  # fail before measuring
        impl = "torch"
        measured = measure_torch(arch, steps=steps, warmup=warmup, threads=threads, progress=progress)
    else:
        from calib.measure import measure

        measured = measure(arch, steps=steps, warmup=warmup, threads=threads, impl=impl, progress=progress)
    predicted = predict(arch, profile, impl=impl, threads=measured["threads"], backend=backend)
    flops = sum(r.flops for r in predicted.rows)
    nbytes = sum(r.bytes for r in predicted.rows)
    rows = []
    for m, p in zip(measured["ops"], predicted.rows, strict=True):
        assert (m["layer"], m["op"], m["phase"]) == p.key
        rows.append({
            "layer": m["layer"], "layer_type": m["layer_type"], "op": m["op"], "phase": m["phase"],
            "kind": p.kind, "flops": p.flops, "bytes": p.bytes, "mathtext": p.mathtext,
            "measured_seconds": m["seconds"], "predicted_seconds": p.seconds,
            "measured_fraction": m["fraction"], "predicted_fraction": p.fraction,
            "flop_share": p.flops / flops if flops else 0.0,
            "byte_share": p.bytes / nbytes if nbytes else 0.0,
            "fraction_error_pp": 100 * (p.fraction - m["fraction"]),
        })
    step_error = predicted.total_seconds / measured["step_seconds"] - 1
    return {
        "arch": arch.name, "batch": arch.batch, "dtype": arch.dtype, "threads": measured["threads"],
        "impl": impl, "backend": backend,
        "measured_step_seconds": measured["step_seconds"], "coverage": measured["coverage"],
        "predicted_seconds": predicted.total_seconds,
        "step_error_percent": 100 * step_error,
        "mean_fraction_error_pp": sum(abs(r["fraction_error_pp"]) for r in rows) / len(rows),
        "max_fraction_error_pp": max(abs(r["fraction_error_pp"]) for r in rows),
        "load": measured.get("load"),
        "ops": rows,
    }


BACKENDS_COLUMNS = [
    ("layer", "layer", str), ("op group", "group", str), ("phase", "phase", str),
    ("NumPy", "numpy_seconds", fmt_seconds), ("NumPy %", "numpy_fraction", fmt_fraction),
    ("PyTorch", "torch_seconds", fmt_seconds), ("PyTorch %", "torch_fraction", fmt_fraction),
    ("NumPy/PyTorch", "ratio", lambda r: "-" if r is None else f"{r:.2f}x"),
]
BACKENDS_CSV = ["layer", "layer_type", "group", "phase", "numpy_seconds", "numpy_fraction", "torch_seconds",
                "torch_fraction", "ratio"]


def _torch_threads() -> int:
    from calib.backends.torch import import_torch

    return import_torch().get_num_threads()


def parse_backends(text: str) -> tuple[str, ...]:
    from costmodel.errors import UsageError

    names = tuple(b.strip() for b in text.split(",") if b.strip())
    if names not in (("numpy",), ("torch",), ("numpy", "torch")):
        raise UsageError(f"--backends: {text!r} is not 'numpy', 'torch' or 'numpy,torch'")
    return names


def compare_backends_command(arch_path: Path, *, batch, threads, impl, steps, warmup, fmt, progress=None) -> str:
    """`compare --backends numpy,torch`: per torch op group, NumPy against PyTorch, explained."""
    from calib.backends.torch import import_torch

    from calib.compare import compare_backends, render_explanation

    import_torch()  # a missing torch fails first, in one line
    arch = load_arch(arch_path).with_batch(batch)
    from calib.memory import check_memory

    check_memory(arch, impl)
    check_memory(arch, "torch")
    from calib.noise import LoadMonitor

    with LoadMonitor() as monitor:  # other processes' CPU time and steal over both measurements
        result = compare_backends(arch, impl=impl, threads=threads, steps=steps, warmup=warmup, progress=progress)
    result["load"] = monitor.load.as_dict()
    warn_if_disturbed(result["load"])
    n, t = result["numpy"], result["torch"]
    ratio = lambda r: "-" if r is None else f"{r:.2f}x"  # noqa: E731
    footer = [
        f"step: NumPy {fmt_seconds(n['step_seconds'])}, PyTorch {fmt_seconds(t['step_seconds'])} (profiler on; "
        f"{fmt_seconds(t['unprofiled_step_seconds'])} without it): NumPy/PyTorch {ratio(result['step_ratio'])}",
        f"sum of rows: NumPy {fmt_seconds(n['total_seconds'])} (coverage {n['coverage']:.3f}), PyTorch "
        f"{fmt_seconds(t['total_seconds'])} (coverage {t['coverage']:.3f}): NumPy/PyTorch {ratio(result['total_ratio'])}",
        f"{arch.name}: batch I={arch.batch}, {arch.dtype}, NumPy impl={impl} with {n['threads']} BLAS thread(s), "
        f"PyTorch {t['torch_version']} with {t['threads']} thread(s); groups as in docs/torch-mapping.md",
    ]
    if fmt != "table":
        return render(result, fmt, BACKENDS_COLUMNS, "", (), BACKENDS_CSV)
    return (render(result, fmt, BACKENDS_COLUMNS, f"NumPy against PyTorch: {arch.name}", footer, BACKENDS_CSV)
            + render_explanation({"sections": result["explanation"]}))


def compare_command(arch_path: Path, *, profile, batch, threads, impl, steps, warmup, fmt, progress=None,
                    plot=None, backends: str = "numpy") -> str:
    check_threads(threads)
    if parse_backends(backends) == ("numpy", "torch"):
        if plot:
            from costmodel.errors import UsageError

            raise UsageError("--plot is for --backends numpy only")
        return compare_backends_command(arch_path, batch=batch, threads=threads, impl=impl, steps=steps,
                                        warmup=warmup, fmt=fmt, progress=progress)

    backend = parse_backends(backends)[0]
    if plot:
        from costmodel.present.plots import plot_format

        plot_format(plot)  # a bad suffix fails before anything is measured
    if backend == "torch":
        import importlib.util

        from calib.backends.torch import import_torch

        if importlib.util.find_spec("torch") is None:
            import_torch()  # a missing torch fails first, in one line
    arch = load_arch(arch_path).with_batch(batch)
    from costmodel.machine.resolve import resolve

    from calib.probe import cached_probe

    prof = resolve(profile, dtype=arch.dtype, impl=impl, backend=backend, threads=threads,
                   prober=lambda **needs: cached_probe(**needs)[0]).profile
    from calib.memory import check_memory

    check_memory(arch, "torch" if backend == "torch" else impl)
    result = compare(arch, prof, impl=impl, threads=threads, steps=steps, warmup=warmup, progress=progress,
                     backend=backend)
    warn_if_disturbed(result.get("load"))
    impl = result["impl"]
    if plot:
        compare_plot(result, prof, plot)
    footer = [
        f"step: measured {fmt_seconds(result['measured_step_seconds'])}, predicted "
        f"{fmt_seconds(result['predicted_seconds'])}: error {result['step_error_percent']:+.1f} %",
        f"fraction error: mean {result['mean_fraction_error_pp']:.2f} pp, largest "
        f"{result['max_fraction_error_pp']:.2f} pp (percentage points of the step)",
        f"{arch.name}: batch I={arch.batch}, {arch.dtype}, impl={impl}, threads={result['threads']}",
    ]
    return render(result, fmt, COMPARE_COLUMNS, f"Predicted against measured: {arch.name}", footer, COMPARE_CSV)


def measured_fractions(arch_path: Path, *, impl, batch, threads, steps=10, warmup=2, progress=None) -> dict:
    """`costmodel latex --measured`: the ops' fractions of real steps on this machine,
    (layer, op, phase) -> fraction."""
    from .measure import measure

    check_threads(threads)
    arch = load_arch(arch_path).with_batch(batch)
    result = measure(arch, steps=steps, warmup=warmup, threads=threads, impl=impl, progress=progress)
    warn_if_disturbed(result["load"])
    return {(op["layer"], op["op"], op["phase"]): op["fraction"] for op in result["ops"]}


def compare_plot(result: dict, profile, path: Path, by: str = "kind") -> None:
    """Draw a comparison (shares, predicted against measured, roofline) into a PNG or PDF."""
    import sys

    from costmodel.present.plots import plot_compare

    plot_compare(result, profile.ceilings, path, by)
    print(f"plot written to {path}", file=sys.stderr)
