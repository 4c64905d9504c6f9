"""costmodel: predict and explain where the time of a CNN's SG step goes on a CPU.

The analytical half, in three layers: costmodel.model (the architecture schema, simpleNN's
symbols, the op records with their cost functions, the costs of a step), costmodel.machine
(machine profiles, the time model, the backends' rows, prediction and sweeps) and
costmodel.present (tables, JSON, explanations, LaTeX, plots). Pure and fast to import: no
clock, no kernels; every name below is imported on first use.
"""

__version__ = "0.1.0"

#: public names -> the module that defines them (imported on first use, PEP 562)
_LAZY = {
    "Architecture": "costmodel.model.arch", "load_arch": "costmodel.model.arch", "parse_arch": "costmodel.model.arch",
    "ArchError": "costmodel.errors", "CostModelError": "costmodel.errors", "UsageError": "costmodel.errors",
    "OpKey": "costmodel.model.ops", "OpRef": "costmodel.model.ops", "op_list": "costmodel.model.ops",
    "StepCosts": "costmodel.model.step", "step_costs": "costmodel.model.step",
    "Prediction": "costmodel.machine.predict", "predict": "costmodel.machine.predict",
    "costs_frame": "costmodel.api", "explain_report": "costmodel.api", "predict_frame": "costmodel.api",
    "sweep_frame": "costmodel.api",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
