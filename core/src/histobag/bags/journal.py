"""Per-process append-only journals: records many processes add to one folder without a lock.

A cohort run records something per slide (a bag's hashes, a slide's status) from many
processes at once. Rewriting one shared JSON file per slide costs time proportional to the
cohort for every slide, under a lock all processes wait for. Instead each process appends one
JSON line per record to its own journal file (:func:`journal_path`: host, pid and a random
token), and readers read every journal. A process killed in the middle of a line leaves a torn
last line, which :func:`read_journal` skips: the record is missing, never wrong, and every
reader of these journals treats a missing record as "not done yet".
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from histobag.files import storage_error

__all__ = ["JOURNAL_SUFFIX", "append_records", "journal_path", "journals", "read_journal"]

#: The file suffix of journals.
JOURNAL_SUFFIX = ".jsonl"
_NAMES: dict[int, str] = {}


def journal_path(folder: str | os.PathLike[str]) -> Path:
    """The journal of the current process in ``folder`` (a new name in each process, forked
    ones too)."""
    pid = os.getpid()
    if pid not in _NAMES:
        _NAMES[pid] = f"{socket.gethostname()}-{pid}-{uuid.uuid4().hex[:12]}{JOURNAL_SUFFIX}"
    return Path(folder) / _NAMES[pid]


def append_records(
    path: str | os.PathLike[str], records: list[dict[str, Any]], sync: bool = True
) -> None:
    """Append ``records`` as JSON lines to ``path`` (created with its folder if needed).

    One ``write`` of whole lines, then ``fsync`` with ``sync``: once this returns, the records
    survive a crash of the process or the machine.

    Raises:
        StorageError: The folder cannot be written (full, read-only, no permission).
    """
    if not records:
        return
    lines = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
    data = lines.encode("utf-8")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)  # less the umask
        try:
            pwrite_all_appending(fd, data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        error = storage_error(exc, path.parent, len(data))
        if error is None:
            raise
        raise error from exc


def pwrite_all_appending(fd: int, data: bytes) -> None:
    """Write all of ``data`` to an ``O_APPEND`` descriptor (``write`` may write less)."""
    view = memoryview(data)
    while len(view):
        view = view[os.write(fd, view) :]


def read_journal(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The records of one journal, in the order written; torn or foreign lines are skipped."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a crash
            continue
        if isinstance(record, dict):
            yield record


def journals(folder: str | os.PathLike[str]) -> list[Path]:
    """Every journal in ``folder``, oldest change first."""
    try:
        paths = [p for p in Path(folder).iterdir() if p.name.endswith(JOURNAL_SUFFIX)]
    except FileNotFoundError:
        return []
    stamped = []
    for path in paths:
        try:
            stamped.append((path.stat().st_mtime, path.name, path))
        except FileNotFoundError:  # compacted meanwhile
            continue
    return [path for _, _, path in sorted(stamped)]
