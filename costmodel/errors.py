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


# -- warnings of a command -------------------------------------------------------------------------

_held: list[str] | None = None


def warn(line: str) -> None:
    """One ``costmodel: warning: LINE`` on stderr; inside `held_warnings` it waits for the
    command's end (printed if it succeeds, dropped if it fails, so that a refusal is one line)."""
    import sys

    if _held is not None:
        _held.append(line)
    else:
        print(f"costmodel: warning: {line}", file=sys.stderr)


class held_warnings:
    """Context manager of a CLI command: the warnings `warn` gets are printed when the block
    ends without an exception, dropped when it raises (the error's one line says what matters)."""

    def __enter__(self) -> "held_warnings":
        global _held
        self._outer = _held
        if _held is None:
            _held = []
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        global _held
        if self._outer is None:
            lines, _held = _held or [], None
            if exc_type is None:
                for line in lines:
                    warn(line)
        return False
