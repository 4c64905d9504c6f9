"""User-facing errors: one line, naming the place, turned into an exit status by the CLI."""

from __future__ import annotations


class CostModelError(Exception):
    """An error in the user's input or environment; the CLI prints it as one line, no traceback."""

    exit_code = 1


class ArchError(CostModelError):
    """An architecture file that breaks a rule of ARCH_FORMAT.md."""

    exit_code = 2


class UsageError(CostModelError):
    """A command-line value or input file that cannot be used (wrong shape, missing key, ...)."""

    exit_code = 2
