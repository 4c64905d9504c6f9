"""costmodel: predict and explain where the time of a CNN's SG step goes on a CPU.

The analytical half: the architecture schema, simpleNN's symbols, the op contract and the
symbolic cost registry. Pure and fast to import: no clock, no kernels, no heavy imports.
"""

__version__ = "0.1.0"

from .arch import Architecture, load_arch, parse_arch  # noqa: E402
from .errors import ArchError, CostModelError, UsageError  # noqa: E402
from .ops import OpKey, OpRef, op_list  # noqa: E402

__all__ = ["Architecture", "ArchError", "CostModelError", "OpKey", "OpRef", "UsageError",
           "__version__", "load_arch", "op_list", "parse_arch"]
