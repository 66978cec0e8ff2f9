"""Writing files safely: atomic writes, storage failures as one clear error, free space, digests.

Every file histobag writes (bags, configurations, TFRecords and their indexes, ``project.json``,
sample slides, saved models, caches, figures) is written under a temporary name starting with
:data:`TMP_PREFIX` in the destination folder and renamed into place when complete, through
:func:`atomic_files` and the helpers built on it (DESIGN principle 5). A file therefore exists
only when it is whole, and :func:`remove_stale_temporaries` cleans what an interrupted run left.

A full disk, a read-only mount or a folder without write permission shows up in many shapes:
``OSError(ENOSPC)`` from ``write``, ``EROFS`` from ``open``, a ``RuntimeError`` from a library
that wraps the failed write. :func:`storage_error` turns any of them into one
:class:`~histobag.errors.StorageError` that names the folder, the space needed and what to do,
so a run stops with a message a person can act on instead of a traceback (or, with a
memory-mapped file, a SIGBUS that kills the process with no message at all; nothing in
histobag writes through a memory map for that reason).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from histobag.errors import StorageError

__all__ = [
    "STORAGE_ERRNOS",
    "TMP_PREFIX",
    "AtomicFile",
    "atomic_files",
    "atomic_path",
    "create_exclusive",
    "remove_stale_temporaries",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
    "format_bytes",
    "free_bytes",
    "pwrite_all",
    "sha256_file",
    "storage_error",
]

#: errno values that mean "this folder cannot take the write", not "this input is bad".
STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
)

#: Prefix of every temporary file; never a finished file, removed by
#: :func:`remove_stale_temporaries`.
TMP_PREFIX = ".histobag-tmp-"


def format_bytes(n: int | float) -> str:
    """``1536`` → ``"1.5 KB"`` (powers of 1024, as ``df -h``)."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def free_bytes(folder: str | os.PathLike[str]) -> int | None:
    """Bytes available to this user in ``folder`` (or its nearest existing parent)."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def storage_error(
    exc: BaseException, folder: str | os.PathLike[str], needed_bytes: int | None = None
) -> StorageError | None:
    """The :class:`StorageError` that ``exc`` amounts to when writing into ``folder``, or None.

    ``exc`` counts as a storage failure when it is an ``OSError`` with an errno in
    :data:`STORAGE_ERRNOS`, or any other exception raised while ``folder`` has less free space
    than ``needed_bytes`` (libraries such as PyTorch's zip writer report a full disk as a
    ``RuntimeError``).

    Args:
        exc: The exception raised by the write.
        folder: The folder written to.
        needed_bytes: About how many bytes the write needed, if known.

    Returns:
        A ``StorageError`` to raise ``from exc``, or ``None`` when ``exc`` is something else.
    """
    if isinstance(exc, StorageError):
        return exc
    folder = str(Path(folder).absolute())
    free = free_bytes(folder)
    code = exc.errno if isinstance(exc, OSError) else None
    if code not in STORAGE_ERRNOS:
        low_space = free is not None and needed_bytes is not None and free < needed_bytes
        if not (low_space or free == 0):
            return None
        code = errno.ENOSPC
    need = f" (about {format_bytes(needed_bytes)} needed" if needed_bytes else ""
    have = f", {format_bytes(free)} free)" if need and free is not None else (")" if need else "")
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        what = "No space left" if code != errno.EDQUOT else "Disk quota exceeded"
        message = (
            f"{what} in {folder}{need}{have}. Free some space or choose another output "
            "folder, then run again: finished bags are kept and skipped, nothing partial "
            "was left behind."
        )
    elif code == errno.EROFS:
        message = f"{folder} is on a read-only file system; choose a writable output folder."
    else:
        message = (
            f"Permission denied writing in {folder}; choose a folder you can write to "
            "(or fix its permissions)."
        )
    return StorageError(
        message, errno_=code, folder=folder, needed_bytes=needed_bytes, free_bytes=free
    )


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (``os.pwrite`` may write less than asked)."""
    view = memoryview(data).cast("B")
    while len(view):
        written = os.pwrite(fd, view, offset)
        if written <= 0:  # pragma: no cover - the kernel raises ENOSPC rather than return 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view, offset = view[written:], offset + written


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks so large files need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _read_umask() -> int:
    """The process's umask, without changing it (Linux reports it in /proc); elsewhere the
    umask at import (reading it means setting it, which would race other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return _UMASK_AT_IMPORT


_UMASK_AT_IMPORT = os.umask(0o022)
os.umask(_UMASK_AT_IMPORT)


def temporary_beside(final: Path) -> Path:
    """Create and return an empty temporary file in ``final``'s folder (created if needed).

    Its mode is what ``open()`` would give a new file (0666 less the umask), not mkstemp's
    private 0600: renamed into place, it is the file others on a shared folder read.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=final.suffix, dir=final.parent)
    try:
        os.fchmod(fd, 0o666 & ~_read_umask())
    finally:
        os.close(fd)
    return Path(tmp)


@contextmanager
def atomic_files(finals: list[Path], needed_bytes: int | None = None) -> Iterator[list[Path]]:
    """Temporary paths for several files, renamed in order when the block succeeds.

    The last file is renamed last, so it can mark the set as complete (a bag's main file).
    Any failure removes the temporaries; one that amounts to a full disk, a read-only folder
    or a permission problem is raised as :class:`~histobag.errors.StorageError`.

    Args:
        finals: The files to create or replace.
        needed_bytes: About how large the files will be, for the message of a
            ``StorageError`` if the folder cannot take them.
    """
    tmps: list[Path] = []
    try:
        try:
            for final in finals:
                tmps.append(temporary_beside(Path(final)))
            yield tmps
            for tmp, final in zip(tmps, finals):
                os.replace(tmp, final)
        finally:
            for tmp in tmps:
                tmp.unlink(missing_ok=True)
    except Exception as exc:
        # Checked after the temporaries are gone, so the free space is what it was before.
        error = storage_error(exc, Path(finals[0]).parent, needed_bytes)
        if error is None or error is exc:
            raise
        raise error from exc


@contextmanager
def atomic_path(final: str | os.PathLike[str], needed_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` if the block succeeds."""
    with atomic_files([Path(final)], needed_bytes) as (tmp_path,):
        yield tmp_path


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path, len(data)) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns ``path``."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically; returns ``path``."""
    return write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


class AtomicFile:
    """A file written as a stream and renamed into place by :meth:`commit`.

    For writers that cannot hold the whole file in memory (TFRecords). Until :meth:`commit`
    the data lives under a temporary name; :meth:`abort` (or a failed commit) removes it.
    """

    def __init__(self, final: str | os.PathLike[str]) -> None:
        self.final = Path(final)
        self.tmp = temporary_beside(self.final)
        self.handle: IO[bytes] | None = self.tmp.open("wb")

    def commit(self) -> Path:
        """Flush to disk and rename into place; returns the final path."""
        handle, self.handle = self.handle, None
        if handle is None:
            return self.final
        try:
            try:
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
                os.replace(self.tmp, self.final)
            except BaseException:  # interrupted too: never leave the temporary behind
                handle.close()
                self.tmp.unlink(missing_ok=True)
                raise
        except Exception as exc:
            error = storage_error(exc, self.final.parent)
            if error is None or error is exc:
                raise
            raise error from exc
        return self.final

    def abort(self) -> None:
        """Discard everything written; the final path is left as it was."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        self.tmp.unlink(missing_ok=True)


def create_exclusive(path: str | os.PathLike[str], data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists; True when this call created it.

    The file appears whole or not at all, and of several processes (on several hosts) creating
    the same path at once exactly one gets True. The data is written under a temporary name and
    hard-linked to ``path``: ``link`` fails when the target exists, also over NFS, where
    ``O_CREAT|O_EXCL`` is not reliable on old clients. A ``link`` whose reply was lost (NFS
    retransmission) is recognised by the temporary's link count. On a file system without hard
    links, ``O_CREAT|O_EXCL`` is used instead.

    Raises:
        StorageError: The folder cannot be written (full, read-only, no permission).
    """
    final = Path(path)
    tmp = temporary_beside(final)
    try:
        try:
            tmp.write_bytes(data)
            try:
                os.link(tmp, final)
                return True
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    return _create_with_o_excl(final, data)
                if os.stat(tmp).st_nlink == 2:  # the link was made; only its reply was lost
                    return True
                raise
        finally:
            tmp.unlink(missing_ok=True)
    except Exception as exc:
        error = storage_error(exc, final.parent)
        if error is None or error is exc:
            raise
        raise error from exc


def _create_with_o_excl(final: Path, data: bytes) -> bool:
    """:func:`create_exclusive` without hard links: the file is briefly visible while written."""
    try:
        fd = os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # less the umask
    except FileExistsError:
        return False
    try:
        pwrite_all(fd, data, 0)
    finally:
        os.close(fd)
    return True


def remove_stale_temporaries(
    folder: str | os.PathLike[str], older_than: float | None = None
) -> int:
    """Delete temporary files left in ``folder`` by an interrupted run; returns how many.

    Args:
        folder: The folder to clean.
        older_than: Only temporaries not modified for this many seconds. Other processes may
            be writing into the same folder (a cluster run): their temporaries are in use.
            ``None`` removes every temporary.
    """
    removed = 0
    now = time.time()
    for stale in Path(folder).glob(TMP_PREFIX + "*"):
        if older_than is not None:
            try:
                if now - stale.stat().st_mtime <= older_than:
                    continue
            except FileNotFoundError:
                continue
        stale.unlink(missing_ok=True)
        removed += 1
    return removed
