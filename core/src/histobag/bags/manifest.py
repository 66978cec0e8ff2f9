"""Bag integrity: a sha256 record of every bag as written, and a check against it.

Each finished bag's files are hashed right after they are renamed into place, and recorded in
``bags_manifest.json`` beside the bags::

    {
      "format": "histobag-bags-manifest",
      "version": 1,
      "algorithm": "sha256",
      "bags": {
        "slide-0": {
          "tiles": 412,
          "recorded": "2026-05-09T07:35:25+00:00",
          "files": {
            "slide-0.index.npz": {"bytes": 6840, "sha256": "9f86d0..."},
            "slide-0.pt": {"bytes": 19072, "sha256": "60303a..."}
          }
        }
      }
    }

An entry with ``"adopted": true`` was recorded after the fact, for a bag written by a histobag
that kept no manifest: its hash attests the file as it was found, not as it was written.

:func:`verify_bags` (``histobag verify OUTDIR``) re-hashes every recorded bag and lists the
damaged, missing and unrecorded ones. A resumed run (:func:`histobag.bags.generate_feature_bags`)
compares each finished bag's file sizes with the record (a ``stat``, no reading) and redoes those
that differ or have no record; with ``verify=True`` it re-hashes them as well.

Several processes may share one bags folder (a cluster run). Each process appends its records
to its own journal in ``.histobag-manifest.d/`` (one JSON line per bag, synced to disk; see
:mod:`histobag.bags.journal`): recording a bag costs the same for the 30,000th slide as for the
first, and no process waits for another. Readers see ``bags_manifest.json`` plus every journal.
When a process ends it folds its journal (and journals left for over an hour by processes that
died) into ``bags_manifest.json``, rewritten atomically under a lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from histobag.bags.config import CONFIG_NAME, read_config
from histobag.bags.journal import append_records, journal_path, journals, read_journal
from histobag.errors import ConfigError
from histobag.files import atomic_path, sha256_file
from histobag.io.bag_writers import get_writer

try:  # POSIX: a lock between processes sharing the folder
    import fcntl
except ImportError:  # pragma: no cover - Windows: the lock is per process only
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "JOURNAL_DIR",
    "MANIFEST_NAME",
    "VerifyReport",
    "bag_problem",
    "compact_manifest",
    "file_record",
    "read_manifest",
    "record_bags",
    "remove_manifest",
    "verify_bags",
]

#: The record of finished bags, in the bags folder.
MANIFEST_NAME = "bags_manifest.json"
#: Lock file taken while the manifest is read, merged and rewritten.
LOCK_NAME = ".histobag-manifest.lock"
#: The processes' journals of bags recorded since the manifest was last rewritten.
JOURNAL_DIR = ".histobag-manifest.d"
#: A journal unchanged for this long belongs to a process that is gone: fold it in.
_ABANDONED_JOURNAL_SECONDS = 3600.0
_FORMAT = "histobag-bags-manifest"
_VERSION = 1
_THREAD_LOCK = threading.Lock()


def file_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex digest}`` of a file."""
    return {"bytes": os.stat(path).st_size, "sha256": sha256_file(path)}


def read_manifest(outdir: str | os.PathLike[str]) -> dict[str, dict[str, Any]] | None:
    """The recorded bags of ``outdir`` (slide -> entry), or None when it has no manifest.

    ``bags_manifest.json`` and the journals of the processes recording into the folder now (or
    that died before folding theirs in); a journal's entry replaces the file's.

    Raises:
        ConfigError: The manifest exists but is not a histobag bags manifest.
    """
    outdir = Path(outdir)
    bags = _read_manifest_file(outdir / MANIFEST_NAME)
    for path in journals(outdir / JOURNAL_DIR):
        for record in read_journal(path):
            entry = record.get("entry")
            if isinstance(record.get("slide"), str) and _valid_entry(entry):
                bags = {} if bags is None else bags
                bags[record["slide"]] = entry
    return bags


def _read_manifest_file(path: Path) -> dict[str, dict[str, Any]] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad_manifest(path, f"it is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise _bad_manifest(path, f'it has no "format": "{_FORMAT}"')
    if data.get("version") != _VERSION:
        raise _bad_manifest(
            path, f"it has version {data.get('version')!r}; this histobag reads {_VERSION}"
        )
    bags = data.get("bags")
    if not isinstance(bags, dict) or not all(_valid_entry(e) for e in bags.values()):
        raise _bad_manifest(path, 'its "bags" are not slide -> {"tiles", "files"} entries')
    return bags


def _bad_manifest(path: Path, why: str) -> ConfigError:
    return ConfigError(
        f"{path} is not a bags manifest: {why}. Restore it from a backup, or delete it: the "
        "next run then records the bags as they are now (without checking them)."
    )


def _valid_entry(entry: Any) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
        return False
    return all(
        isinstance(name, str)
        and isinstance(rec, dict)
        and isinstance(rec.get("bytes"), int)
        and isinstance(rec.get("sha256"), str)
        for name, rec in entry["files"].items()
    )


@contextlib.contextmanager
def _locked(outdir: Path) -> Iterator[None]:
    """Serialise manifest updates between threads and (on POSIX) between processes."""
    with _THREAD_LOCK:
        handle = None
        if fcntl is not None:
            try:
                handle = open(outdir / LOCK_NAME, "a")  # noqa: SIM115 - closed below
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            except OSError:  # a file system without locks: per-process lock only
                if handle is not None:
                    handle.close()
                handle = None
        try:
            yield
        finally:
            if handle is not None:
                handle.close()  # releases the flock


def record_bags(
    outdir: str | os.PathLike[str],
    bags: Mapping[str, tuple[Sequence[Path], int]],
    *,
    adopted: bool = False,
) -> None:
    """Hash each bag's files and record them in ``outdir``'s manifest (this process's journal;
    :func:`compact_manifest` folds it into ``bags_manifest.json``).

    Args:
        outdir: The bags folder.
        bags: Slide -> (its bag's files, number of tiles).
        adopted: The bags were found, not written, by this run (see the module docstring).
    """
    if not bags:
        return
    outdir = Path(outdir)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    entries: dict[str, dict[str, Any]] = {}
    for slide, (files, tiles) in bags.items():
        entry: dict[str, Any] = {
            "tiles": int(tiles),
            "recorded": now,
            "files": {Path(p).name: file_record(p) for p in files},
        }
        if adopted:
            entry["adopted"] = True
        entries[slide] = entry
    records = [{"slide": slide, "entry": entry} for slide, entry in entries.items()]
    append_records(journal_path(outdir / JOURNAL_DIR), records)


def compact_manifest(outdir: str | os.PathLike[str]) -> None:
    """Fold this process's journal, and journals abandoned by dead processes, into
    ``bags_manifest.json`` (rewritten atomically, under a lock), then delete them."""
    outdir = Path(outdir)
    folder = outdir / JOURNAL_DIR
    own = journal_path(folder)
    now = time.time()
    with _locked(outdir):
        folded = []
        for path in journals(folder):
            try:
                idle = now - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if path == own or idle > _ABANDONED_JOURNAL_SECONDS:
                folded.append(path)
        if not folded:
            return
        current = _read_manifest_file(outdir / MANIFEST_NAME) or {}
        for path in folded:
            for record in read_journal(path):
                if isinstance(record.get("slide"), str) and _valid_entry(record.get("entry")):
                    current[record["slide"]] = record["entry"]
        text = _dump(current)
        with atomic_path(outdir / MANIFEST_NAME) as tmp:
            tmp.write_text(text, encoding="utf-8")
        for path in folded:
            path.unlink(missing_ok=True)


def _dump(bags: Mapping[str, Any]) -> str:
    """The manifest as JSON with one bag per line: readable and diffable, and written by the
    C encoder (``indent=`` would use the pure-Python one, ~10x slower on large folders)."""
    head = json.dumps({"format": _FORMAT, "version": _VERSION, "algorithm": "sha256"})
    lines = [f"  {json.dumps(slide)}: {json.dumps(bags[slide])}" for slide in sorted(bags)]
    return head[:-1] + ', "bags": {\n' + ",\n".join(lines) + "\n}}\n"


def remove_manifest(outdir: str | os.PathLike[str]) -> None:
    """Delete ``outdir``'s manifest and journals (its bags are being replaced)."""
    (Path(outdir) / MANIFEST_NAME).unlink(missing_ok=True)
    shutil.rmtree(Path(outdir) / JOURNAL_DIR, ignore_errors=True)


def _safe_file(outdir: Path, name: str) -> Path | None:
    """``outdir / name`` when ``name`` is a plain file name (a tampered manifest cannot point
    elsewhere), else None."""
    if not name or Path(name).name != name or name in (".", ".."):
        return None
    return outdir / name


@dataclass
class _FileCheck:
    damaged: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    bytes_hashed: int = 0


def _check_files(outdir: Path, entry: Mapping[str, Any], rehash: bool) -> _FileCheck:
    """Compare a recorded bag's files with the disk: sizes always, sha256 with ``rehash``."""
    check = _FileCheck()
    for name, rec in sorted(entry["files"].items()):
        path = _safe_file(outdir, name)
        if path is None:
            check.damaged.append(f"{name!r} is not a file name in this folder")
            continue
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            check.missing.append(name)
            continue
        if size != rec["bytes"]:
            check.damaged.append(f"{name} is {size} bytes, recorded {rec['bytes']}")
        elif rehash:
            check.bytes_hashed += size
            if sha256_file(path) != rec["sha256"]:
                check.damaged.append(f"{name} has changed since it was written (sha256 differs)")
    return check


def bag_problem(
    outdir: str | os.PathLike[str],
    entry: Mapping[str, Any] | None,
    files: Sequence[Path],
    *,
    rehash: bool = False,
) -> str | None:
    """Why a bag on disk does not match its record, or None when it does.

    Args:
        outdir: The bags folder.
        entry: The bag's manifest entry (None: not recorded).
        files: The files the bag writer says make up the bag.
        rehash: Also compare sha256 digests (reads every byte), not only sizes.

    Returns:
        A one-line reason, or None.
    """
    if entry is None:
        return f"not recorded in {MANIFEST_NAME} (written but not recorded, or copied in)"
    names = sorted(Path(p).name for p in files)
    if sorted(entry["files"]) != names:
        recorded = ", ".join(sorted(entry["files"]))
        return f"its recorded files ({recorded}) are not {', '.join(names)}"
    check = _check_files(Path(outdir), entry, rehash)
    problems = check.damaged + [f"{name} is missing" for name in check.missing]
    return "; ".join(problems) or None


@dataclass
class VerifyReport:
    """What :func:`verify_bags` found.

    Attributes:
        outdir: The bags folder.
        verified: Slides whose files all match their record.
        damaged: Slide -> what differs (size or sha256), for bags with files present.
        missing: Slide -> which files are gone, for recorded bags no longer (all) there.
        unrecorded: Slides with a bag on disk but no record (a resumed run redoes them).
        bytes_checked: Bytes hashed.
        seconds: Wall time.
    """

    outdir: Path
    verified: list[str] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    unrecorded: list[str] = field(default_factory=list)
    bytes_checked: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every bag matches its record and every bag has one."""
        return not (self.damaged or self.missing or self.unrecorded)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``histobag verify --json``)."""
        return {
            "outdir": str(self.outdir),
            "ok": self.ok,
            "verified": len(self.verified),
            "damaged": dict(sorted(self.damaged.items())),
            "missing": dict(sorted(self.missing.items())),
            "unrecorded": sorted(self.unrecorded),
            "bytes_checked": self.bytes_checked,
            "seconds": round(self.seconds, 3),
        }

    def summary(self) -> str:
        """One line per problem, then a count."""
        lines = [f"DAMAGED  {s}: {r}" for s, r in sorted(self.damaged.items())]
        lines += [f"MISSING  {s}: {r}" for s, r in sorted(self.missing.items())]
        lines += [
            f"UNRECORDED  {s}: a bag with no record in {MANIFEST_NAME}"
            for s in sorted(self.unrecorded)
        ]
        lines.append(
            f"{len(self.verified)} verified, {len(self.damaged)} damaged, "
            f"{len(self.missing)} missing, {len(self.unrecorded)} unrecorded "
            f"({self.bytes_checked / 2**20:.1f} MiB hashed in {self.seconds:.1f} s) "
            f"-> {self.outdir}"
        )
        if not self.ok:
            lines.append(
                "Run the same extraction again to redo them: a resumed run redoes bags whose "
                "size differs or that have no record; pass verify=True (--verify) to redo "
                "bags whose contents changed at the same size."
            )
        return "\n".join(lines)


def verify_bags(outdir: str | os.PathLike[str]) -> VerifyReport:
    """Re-hash every recorded bag of ``outdir`` and list the damaged, missing and unrecorded.

    Args:
        outdir: A bags folder written by :func:`histobag.bags.generate_feature_bags`.

    Returns:
        A :class:`VerifyReport`; :attr:`VerifyReport.ok` is True when all is well.

    Raises:
        ConfigError: ``outdir`` is not a folder, or has no (valid) manifest.
    """
    start = time.perf_counter()
    outdir = Path(outdir)
    if not outdir.is_dir():
        what = "is a file" if outdir.exists() else "does not exist"
        raise ConfigError(f"{outdir} {what}; give a bags folder.")
    manifest = read_manifest(outdir)
    if manifest is None:
        raise ConfigError(
            f"{outdir} has no {MANIFEST_NAME}, so there is nothing to verify against. Bags "
            "written by histobag before it kept a manifest are recorded (as they are now) when "
            "the same extraction is run again on this folder."
        )
    report = VerifyReport(outdir)
    for slide, entry in sorted(manifest.items()):
        check = _check_files(outdir, entry, rehash=True)
        report.bytes_checked += check.bytes_hashed
        if check.missing and len(check.missing) == len(entry["files"]):
            report.missing[slide] = ", ".join(check.missing) + " gone"
        elif check.damaged or check.missing:
            report.damaged[slide] = "; ".join(
                check.damaged + [f"{name} is missing" for name in check.missing]
            )
        else:
            report.verified.append(slide)
    if (outdir / CONFIG_NAME).is_file():
        writer = get_writer(read_config(outdir)["writer"], outdir)
        report.unrecorded = [s for s in writer.slides() if s not in manifest]
    report.seconds = time.perf_counter() - start
    return report
