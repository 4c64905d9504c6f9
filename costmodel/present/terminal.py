"""The command line's terminal. How a command ends: a domain error (CostModelError) becomes one
line on stderr and its exit status, never a traceback; ^C exits 130 and SIGTERM 143, each with
one line; a closed stdout (`| head`) ends quietly; running out of memory or stack is one line.
And the progress line of a long command on stderr."""

from __future__ import annotations

import errno
import functools
import sys

import typer

from costmodel.errors import CostModelError, check_signals, clear_signals, held_warnings, note_signal

#: exit statuses of a run stopped by a signal, as a shell reports a process killed by it
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


def one_line(msg: str) -> str:
    """The message on one line: control characters (a newline in a file name) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(msg))


def err(msg: str) -> None:
    typer.echo(f"costmodel: error: {one_line(msg)}", err=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds as for ^C: temporary files
    removed, nothing half-written; the CLI exits with 143."""


def _raise_terminated(signum, frame):
    note_signal("SIGTERM")
    raise Terminated()


def _raise_interrupted(signum, frame):
    note_signal("SIGINT")
    raise KeyboardInterrupt()


def handle_sigterm():
    """Treat SIGTERM like SIGINT, and note both (costmodel.errors.note_signal: an exception a
    finalizer swallowed is raised again before a file is written). From the main thread only
    (elsewhere signals cannot be set). Returns the handlers it replaced, (SIGTERM's, SIGINT's),
    or None when it set none."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        sys.unraisablehook = _unraisable
        interrupt = signal.getsignal(signal.SIGINT)
        # a SIGINT the parent ignores stays ignored (a background job of a non-interactive shell)
        ours = interrupt if interrupt == signal.SIG_IGN else _raise_interrupted
        return signal.signal(signal.SIGTERM, _raise_terminated), signal.signal(signal.SIGINT, ours)
    return None


def _unraisable(unraisable) -> None:
    """sys.unraisablehook: a ^C or SIGTERM raised inside a finalizer cannot propagate; note it
    (the command stops at its next check) instead of printing a traceback; anything else as
    Python prints it."""
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        note_signal("SIGTERM" if issubclass(unraisable.exc_type, Terminated) else "SIGINT")
        return
    sys.__unraisablehook__(unraisable)


#: errno of a write that cannot succeed (a full disk or quota, a file too large, an I/O error)
_WRITE_FAILURES = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def domain_errors(fn):
    """Turn CostModelError into one line on stderr and its exit status; ^C into status 130 and
    SIGTERM into 143, each with one line; a closed stdout (`| head`) ends quietly; running out
    of memory or stack is one line, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = handle_sigterm()
        clear_signals()
        try:
            with held_warnings():
                result = fn(*args, **kwargs)
                check_signals()  # a ^C or SIGTERM some finalizer swallowed: the command was stopped
                return result
        except CostModelError as exc:
            err(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except Terminated:
            err("terminated (SIGTERM): nothing was written")
            raise typer.Exit(EXIT_SIGTERM) from None
        except KeyboardInterrupt as exc:
            if exc.args == ("SIGTERM",):  # a SIGTERM swallowed on the way, raised again by check_signals
                err("terminated (SIGTERM): nothing was written")
                raise typer.Exit(EXIT_SIGTERM) from None
            err("interrupted: nothing was written")
            raise typer.Exit(EXIT_SIGINT) from None
        except BrokenPipeError:
            _quiet_stdout()
            raise typer.Exit(141) from None
        except OSError as exc:
            if exc.errno not in _WRITE_FAILURES:
                raise
            err(f"cannot write the output: {exc.strerror}")  # stdout on a full disk (> /dev/full)
            _quiet_stdout()
            raise typer.Exit(1) from None
        except MemoryError:
            err("out of memory (the machine or a ulimit/cgroup limit): try a smaller --batch")
            raise typer.Exit(1) from None
        except RecursionError:
            err("input nested too deeply")
            raise typer.Exit(2) from None
        finally:
            clear_signals()
            if previous is not None:  # a command run in process (tests, an API) leaves the handlers as they were
                import signal

                signal.signal(signal.SIGTERM, previous[0])
                signal.signal(signal.SIGINT, previous[1])
                sys.unraisablehook = sys.__unraisablehook__

    return wrapper


def exit_process(status: int) -> None:
    """End the command-line process with `status`: its non-daemon threads are joined, the atexit
    handlers run (weakref.finalize's too), stdout and stderr are flushed, then os._exit skips
    the interpreter's teardown of every module, which a cold `costmodel predict` spent ~28 ms
    on (numpy, pydantic, typer; measured 2026-12-01), an eighth of the command. Nothing of
    costmodel needs that teardown: its files are written and closed by atomic_write before it
    returns. Only for the console script's end (cli.main), never in a process that embeds
    costmodel."""
    import atexit
    import os
    import threading

    # as the interpreter's finalization does first: threading's exit hooks (which tell a
    # ThreadPoolExecutor's idle workers to stop), then the non-daemon threads are joined
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # closed when the process started (>&-)
            continue
        try:
            stream.flush()
        except BrokenPipeError:  # a reader closed stdout (`| head`) after the last write
            _quiet_stdout()
            status = status or 141
        except (OSError, ValueError):
            pass
    os._exit(status)


def _stdout_is_devnull() -> bool:
    """Whether file descriptor 1 is /dev/null."""
    import os

    try:
        return os.path.samestat(os.fstat(1), os.stat(os.devnull))
    except (OSError, ValueError):
        return False


def _quiet_stdout() -> None:
    """After a reader closed stdout: point it at /dev/null, so the interpreter's final flush
    does not report the broken pipe."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def progress_line(label: str):
    """A progress callback writing one updating line to stderr (silent when stderr is not a tty)."""
    interactive = sys.stderr.isatty()

    def report(i: int, n: int) -> None:
        if interactive:
            end = "\n" if i >= n else ""
            sys.stderr.write(f"\r{label}: {i}/{n}{end}")
            sys.stderr.flush()

    return report


def run_app(app) -> int:
    """Run the typer `app` on sys.argv and return its exit status: a usage error (an unknown
    option, `--batch abc`, a value out of range) is one line naming the option, status 2, like
    every other bad input; SIGTERM and ^C are one line and their statuses."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    stdout_was_devnull = _stdout_is_devnull()
    try:
        status = app(standalone_mode=False)
    except SystemExit as exc:
        # rich, writing the help (`--help | head`), meets a closed pipe: it points stdout at
        # /dev/null and exits 1 (rich.console.Console.on_broken_pipe); a closed pipe is 141 here
        if not (exc.code == 1 and not stdout_was_devnull and _stdout_is_devnull()):
            raise
        status = 141
    except NoArgsIsHelpError as exc:
        exc.show()
        status = exc.exit_code
    except ClickException as exc:  # typer checks an option's value with pydantic, whose message starts so
        err(exc.format_message().replace("Value error, ", ""))
        status = exc.exit_code
    except Terminated:
        err("terminated (SIGTERM)")
        status = EXIT_SIGTERM
    except (typer.Abort, KeyboardInterrupt):
        err("interrupted")
        status = EXIT_SIGINT
    return status if isinstance(status, int) else 0
