"""Files a user names: bounded reads of regular files, atomic writes, stale temporaries, locks.

- ``read_regular`` reads only a regular file, and at most ``limit`` bytes of it: a path that is
  (or links to) /dev/zero, a FIFO, a socket or a directory is refused before anything is read,
  and a FIFO is opened without blocking.
- ``atomic_write`` writes through a temporary file beside the target and a rename, so a reader
  sees the old file or the new one, and an interrupted write leaves no temporary behind.
- ``clean_stale_temps`` removes the temporaries (``.NAME.<random>.tmp``) that a killed writer
  (SIGKILL, power loss) left, once they are older than ``STALE_SECONDS``.
- ``locked`` holds an exclusive lock (fcntl.flock) for a read-merge-write of one file; the lock
  file (``.NAME.lock``) is removed when the lock is released.

Every user-facing failure is an error of the class the caller names (one line naming the path).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Iterator

from costmodel.errors import CostModelError, UsageError, check_signals

__all__ = ["KiB", "MiB", "STALE_SECONDS", "atomic_write", "check_writable", "clean_stale_temps", "file_kind",
           "locked", "read_regular", "temp_pattern"]

KiB, MiB = 1 << 10, 1 << 20
#: a temporary file of atomic_write older than this was left by a writer that was killed
STALE_SECONDS = 15 * 60

_KINDS = [(stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")]


def file_kind(mode: int) -> str:
    """'a directory', 'a FIFO', ... for a st_mode that is not a regular file's; 'a regular file'."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def _size(n: int) -> str:
    for factor, unit in ((1 << 30, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n >= factor:
            return f"{n / factor:.3g} {unit}"
    return f"{n} bytes"


def read_regular(path: str | Path, *, limit: int, what: str = "file",
                 error: type[CostModelError] = UsageError, missing: str = "no such file") -> bytes:
    """The bytes of the regular file at `path`, at most `limit` of them.

    Refused with `error` (one line naming the path): no such file, not a regular file (a
    directory, a device such as /dev/zero, a FIFO, a socket; links are followed), larger than
    `limit` bytes (by its size, or by what it yields, for files such as those of /proc), or
    unreadable (permission, I/O error). `missing`: what to say when there is no such file.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket, or a FIFO with no writer
            raise error(f"{path}: not a regular file, cannot read {_a(what)} from it") from None
        raise error(f"{path}: cannot read: {exc.strerror or exc.__class__.__name__}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: {file_kind(info.st_mode)}, not a regular file: cannot read {_a(what)} from it")
        if info.st_size > limit:
            raise error(f"{path}: {_size(info.st_size)}, more than the {_size(limit)} {_a(what)} may have")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise error(f"{path}: more than the {_size(limit)} {_a(what)} may have")
        return b"".join(chunks)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc.__class__.__name__}") from None
    finally:
        os.close(fd)


def temp_pattern(path: str | Path) -> str:
    """The glob of atomic_write's temporary files for `path`: '.NAME.*.tmp'."""
    return f".{Path(path).name}.*.tmp"


def atomic_write(path: str | Path, data: str | bytes, *, make_parents: bool = False) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename, so a
    reader never sees a half-written file and an interrupted write (an exception, ^C, SIGTERM
    turned into an exception) leaves nothing behind. A symbolic link is followed (its target
    is replaced, the link kept); an existing file keeps its permissions; a new one gets those
    open() would give it. The folder must exist unless `make_parents` (costmodel's own cache).
    Raises OSError (FileNotFoundError for a missing folder)."""
    path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    try:
        keep = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        keep = None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if keep is None:
            umask = os.umask(0)
            os.umask(umask)
            keep = 0o666 & ~umask  # as open() would create it, not mkstemp's 0600
        os.chmod(tmp, keep)
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        check_signals()  # a ^C swallowed on the way (costmodel.errors.note_signal): write nothing
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def check_writable(path: str | Path, *, label: str | None = None,
                   error: type[CostModelError] = UsageError, make_parents: bool = False) -> None:
    """Refuse, before any work, a place atomic_write could not write `path` to: an existing
    directory, device, FIFO or socket; a path under a regular file; a folder in which no file
    can be created (read-only, /proc, /sys, no permission). `label` starts the message (default:
    the path). Nothing is left on disk: the test is a temporary file, created and removed, in
    the nearest folder that exists (atomic_write creates the missing ones)."""
    path = Path(path)
    label = label or str(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        info = None
    except OSError as exc:  # ENOTDIR: a path under a regular file; ELOOP, EACCES, ENAMETOOLONG
        raise error(f"{label}: cannot write there ({exc.strerror or exc.__class__.__name__})") from None
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise error(f"{label}: {file_kind(info.st_mode)}, not a file that can be replaced: choose a file name")
    ancestor = path.parent
    if not make_parents and not ancestor.exists():
        raise error(f"{label}: no folder {ancestor} (a typo? costmodel does not create it)")
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise error(f"{label}: {ancestor} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".probe", dir=ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise error(f"{label}: cannot write in {ancestor} ({exc.strerror or exc.__class__.__name__})") from None


def clean_stale_temps(path: str | Path, older_than: float = STALE_SECONDS, now: float | None = None) -> list[Path]:
    """Remove atomic_write's temporaries for `path` (``.NAME.*.tmp`` beside it, regular files
    only) not modified for `older_than` seconds; returns those removed. A temporary that a
    running writer is filling is seconds old and stays."""
    path = Path(path)
    now = time.time() if now is None else now
    removed = []
    try:
        candidates = list(path.parent.glob(temp_pattern(path)))
    except OSError:
        return removed
    for tmp in candidates:
        try:
            info = tmp.lstat()
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime > older_than:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue
    return removed


@contextlib.contextmanager
def locked(path: str | Path, *, error: type[CostModelError] = UsageError) -> Iterator[None]:
    """An exclusive lock on `path`'s read-merge-write, held for the ``with`` block.

    The lock is fcntl.flock on ``.NAME.lock`` beside `path`, removed on release. Removing a lock
    file is safe with the usual check: after the lock is granted, the file locked must still be
    the one at that name (another holder may have removed it meanwhile); if not, lock again.
    """
    path = Path(path)
    lock = path.parent / f".{path.name}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"{path}: cannot create its folder ({exc.strerror or exc.__class__.__name__})") from None
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise error(f"{path}: cannot lock it for writing ({lock.name}: "
                        f"{exc.strerror or exc.__class__.__name__})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(lock, follow_symlinks=False))
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)  # the holder before us removed the file we waited on: lock the new one
    try:
        yield
    finally:
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)  # closing releases the flock


def _a(noun: str) -> str:
    """'a profile', 'an architecture file': the article a noun takes (by its first letter)."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"

