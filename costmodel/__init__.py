"""costmodel: predict and explain where the time of a CNN's SG step goes on a CPU.

The analytical half: the architecture schema, simpleNN's symbols, the op contract and the
symbolic cost registry. Pure and fast to import: no clock, no kernels, no heavy imports.
"""

__version__ = "0.1.0"

from costmodel.model.arch import Architecture, load_arch, parse_arch  # noqa: E402
from costmodel.errors import ArchError, CostModelError, UsageError  # noqa: E402
from costmodel.model.ops import OpKey, OpRef, op_list  # noqa: E402

#: the DataFrame API of costmodel.api, imported on first use (it needs pandas)
_API = ("costs_frame", "explain_report", "predict_frame", "sweep_frame")

__all__ = ["Architecture", "ArchError", "CostModelError", "OpKey", "OpRef", "UsageError",
           "__version__", "load_arch", "op_list", "parse_arch", *_API]


def __getattr__(name: str):
    if name in _API:
        from costmodel import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
