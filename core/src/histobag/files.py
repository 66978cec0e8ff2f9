"""Writing files safely: storage failures as one clear error, free-space checks, file digests.

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
import os
import shutil
from pathlib import Path

from histobag.errors import StorageError

__all__ = [
    "STORAGE_ERRNOS",
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
