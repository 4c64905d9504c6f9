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
    elif sys.stderr is not None:  # a closed stderr (2>&-): print would write to stdout instead
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


# -- a signal that must not be lost ----------------------------------------------------------------

_signalled: list[str] = []  # the signals the CLI's handlers saw during the current command


def note_signal(name: str) -> None:
    """Record that the command got `name` (SIGINT, SIGTERM). Python raises the signal's
    exception wherever the main thread is, and there it can be swallowed: inside a finalizer
    that a garbage collection runs, it is only printed ("Exception ignored in ..."), and the
    command goes on to write its file (seen once in CI: a ^C'd calibration exited 0 and wrote
    its profile). `check_signals` raises it again before anything is written."""
    _signalled.append(name)


def clear_signals() -> None:
    """Forget the signals of a command that has ended."""
    _signalled.clear()


def check_signals() -> None:
    """Raise KeyboardInterrupt if a signal was noted and not acted on (costmodel.files'
    atomic_write calls it before it renames its file into place)."""
    if _signalled:
        raise KeyboardInterrupt(_signalled[-1])

