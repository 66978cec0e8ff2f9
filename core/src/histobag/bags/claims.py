"""Slide claims: many processes on many hosts share one bags folder, and no slide is done twice.

The bags folder is the only shared state of a cluster run (``torchrun``, SLURM arrays, or any
number of independent ``histobag extract`` processes pointed at one ``--outdir``). Before a
process extracts a slide it takes the slide's **claim**, a small file in ``.histobag-claims/``:

- **Taking** a claim creates ``<slide>@0.claim`` with :func:`histobag.files.create_exclusive`
  (a hard link, atomic also over NFS), so of several processes exactly one gets it. The file
  records the host, pid, rank, the process's start and the claim's time.
- **Heartbeat**: while a process works, a thread refreshes the modification time of each claim
  it holds, every ``timeout / 6`` seconds.
- **Takeover**: a claim whose modification time is older than ``timeout`` is stale (its
  process died, or its node was lost); so is, at once, a claim whose process ran on this same
  machine and has ended (a rerun after a crash does not wait). Another process takes it over
  by creating the next *generation*, ``<slide>@1.claim``, again exclusively: of several
  processes taking over the same stale claim exactly one succeeds. Generations are only ever
  created, never renamed, so no process can take a claim from under a live owner; a process
  whose claim was taken over (it was stalled for longer than the timeout) sees a higher
  generation at its next heartbeat and before it writes the bag, and drops the slide.
- **Release**: when the slide's bag is complete, or the slide failed, its owner deletes every
  generation of the claim. A failure is also noted in ``.histobag-claims/failed/``, so that the
  other processes of the same run do not try the slide again (a later run does).

Done bags are never claimed: a process checks for the bag before claiming, and again right after
(another process may have finished it in between).

The timeout trades the delay before a dead process's slide is taken over against false
takeovers: a process that stalls for longer than the timeout (swapping, a frozen NFS mount)
loses its claim; its work is then redone and the bag written once, by the new owner. Clocks of
the hosts sharing the folder must agree to well within the timeout (NTP).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from histobag.errors import ArgumentError
from histobag.files import create_exclusive, write_json_atomic

__all__ = [
    "CLAIMS_DIR",
    "DEFAULT_CLAIM_TIMEOUT",
    "Claim",
    "ClaimBoard",
    "Owner",
    "ended_on_this_machine",
    "live_claims",
]

#: The folder of claims, inside the bags folder.
CLAIMS_DIR = ".histobag-claims"
#: Seconds without a heartbeat after which a claim is stale and taken over.
DEFAULT_CLAIM_TIMEOUT = 300.0
_SUFFIX = ".claim"
_SEPARATOR = "@"  # never in a slide's file name (see histobag.naming.safe_name)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Owner:
    """The process that holds claims.

    Attributes:
        host: Host name.
        pid: Process id on that host.
        rank: Rank in a ``torchrun`` launch or index of a SLURM array task (None otherwise).
        token: Unique to this process (pids are reused).
        started: When the process started its run (seconds since the epoch).
        boot: This boot of the host (Linux ``boot_id``; empty elsewhere): with ``host``, tells
            that a claim's process ran on this very machine, whose process table then says
            whether it still runs.
        run: An id shared by the processes of one launch (torchrun, a SLURM array), if known
            (:func:`histobag.cluster.run_id`).
    """

    host: str
    pid: int
    rank: int | None
    token: str
    started: float
    boot: str = ""
    run: str | None = None

    @classmethod
    def current(cls, rank: int | None = None, run: str | None = None) -> Owner:
        """The current process."""
        return cls(
            socket.gethostname(),
            os.getpid(),
            rank,
            uuid.uuid4().hex,
            time.time(),
            _boot_id(),
            run,
        )

    def describe(self) -> str:
        """``host pid N (rank R)``, for messages and reports."""
        rank = f" rank {self.rank}" if self.rank is not None else ""
        return f"{self.host} pid {self.pid}{rank}"


@dataclass(frozen=True)
class Claim:
    """A claim held by this process on one slide.

    Attributes:
        slide: The slide's bag name.
        generation: 0 for a first claim, n after n takeovers.
        path: The claim file.
        taken: When it was taken (seconds since the epoch).
    """

    slide: str
    generation: int
    path: Path
    taken: float


@dataclass
class ClaimBoard:
    """The claims of one bags folder, seen from one process.

    Use as a context manager: it refreshes the held claims in a heartbeat thread and, on exit
    (also on an exception or interrupt), releases every claim still held so that no other
    process waits for the timeout.

    Attributes:
        outdir: The bags folder.
        owner: This process.
        timeout: Seconds without a heartbeat after which a claim is stale.
        interval: Seconds between heartbeats (default ``timeout / 6``).
        held: Slide -> claim, for the claims this process holds.
        lost: Slides whose claim another process took over (this process stalled).
        touch: Other files the heartbeat refreshes (this process's run report, which tells
            ``histobag report`` the process is alive).
    """

    outdir: Path
    owner: Owner = field(default_factory=Owner.current)
    timeout: float = DEFAULT_CLAIM_TIMEOUT
    interval: float | None = None
    held: dict[str, Claim] = field(default_factory=dict)
    lost: set[str] = field(default_factory=set)
    touch: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.timeout, (int, float)) or not self.timeout > 0:
            raise ArgumentError(
                f"The claim timeout must be a positive number of seconds, not {self.timeout!r}."
            )
        self.outdir = Path(self.outdir)
        self.folder = self.outdir / CLAIMS_DIR
        self.failed_folder = self.folder / "failed"
        if self.interval is None:
            self.interval = self.timeout / 6
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- taking and giving back ---------------------------------------------------------

    def claim(self, slide: str) -> Claim | None:
        """Take ``slide``'s claim, or take over a stale one; None when another process holds
        it (or won the race for it)."""
        for _ in range(3):  # a claim released while looked at: look again
            generations = self._generations(slide)
            target = 0
            if generations:
                top = max(generations)
                try:
                    age = time.time() - generations[top].stat().st_mtime
                except FileNotFoundError:
                    continue
                record = _read_json(generations[top])
                dead = record is not None and self._died_here(record)
                if age <= self.timeout and not dead:
                    return None
                target = top + 1
                why = (
                    "its process has ended"
                    if dead
                    else f"no heartbeat for {age:.0f} s (timeout {self.timeout:.0f} s)"
                )
                logger.warning(
                    "Taking over the claim on %s: %s; %s",
                    slide,
                    why,
                    _describe_file(generations[top]),
                )
            path = self._path(slide, target)
            now = time.time()
            record = {
                "slide": slide,
                "generation": target,
                "claimed": now,
                **asdict(self.owner),
            }
            if not create_exclusive(path, json.dumps(record).encode("utf-8")):
                return None  # another process took it (or took it over) first
            claim = Claim(slide, target, path, now)
            with self._lock:
                self.held[slide] = claim
            return claim
        return None

    def _died_here(self, record: dict[str, Any]) -> bool:
        """True when the claim's process ran on this machine and is gone: its claim need not
        wait for the timeout (a rerun after a crash starts at once)."""
        return record.get("token") != self.owner.token and ended_on_this_machine(record)

    def release(self, claim: Claim) -> None:
        """Give the claim back: delete its generation and the older ones it replaced."""
        with self._lock:
            if self.held.get(claim.slide) == claim:
                del self.held[claim.slide]
        for generation, path in sorted(self._generations(claim.slide).items()):
            if generation <= claim.generation:
                path.unlink(missing_ok=True)

    def abandoned(self) -> list[str]:
        """Slides whose claim is stale or whose process ended here: left by a process that
        died (after writing the bag, or before; the caller checks which)."""
        return self.abandoned_among(self._all_generations())

    def remove_abandoned(self, slide: str) -> None:
        """Delete an abandoned claim of a slide whose bag is complete (nobody will release it).

        Only generations still abandoned when looked at are removed, so a claim taken since
        (a new generation) is left alone."""
        generations = self._generations(slide)
        if not generations or slide not in self.abandoned_among({slide: generations}):
            return
        for _, path in sorted(generations.items()):
            path.unlink(missing_ok=True)

    def abandoned_among(self, claims: dict[str, dict[int, Path]]) -> list[str]:
        """The slides of ``claims`` (slide -> generation -> file) whose top claim is abandoned."""
        return [
            slide
            for slide, age, record in _top_claims(claims)
            if age > self.timeout or (record is not None and self._died_here(record))
        ]

    def release_all(self) -> None:
        """Release every claim this process holds."""
        with self._lock:
            claims = list(self.held.values())
        for claim in claims:
            self.release(claim)

    def holds(self, claim: Claim) -> bool:
        """True while ``claim`` is still this process's: its file is there and no process has
        taken it over (checked before a bag is written)."""
        generations = self._generations(claim.slide)
        return claim.generation in generations and max(generations) == claim.generation

    # -- failures ----------------------------------------------------------------------

    def record_failure(self, slide: str, reason: str) -> None:
        """Note that ``slide`` failed, for the other processes of this run."""
        record = {"slide": slide, "reason": reason, "at": time.time(), **asdict(self.owner)}
        self.failed_folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.failed_folder / f"{slide}.json", record)

    def clear_failure(self, slide: str) -> None:
        """Forget an earlier failure of ``slide`` (its bag is now complete)."""
        (self.failed_folder / f"{slide}.json").unlink(missing_ok=True)

    def failed_during_run(self, slide: str) -> dict[str, Any] | None:
        """The failure another process recorded for ``slide`` since this process started, if
        any: a failure recorded before (an earlier run) is tried again."""
        record = _read_json(self.failed_folder / f"{slide}.json")
        if record is None or float(record.get("at", 0)) < self.owner.started:
            return None
        return record

    # -- what other processes hold -------------------------------------------------------

    def live_claims(self) -> dict[str, dict[str, Any]]:
        """Slide -> the record of its current claim, for claims with a recent heartbeat whose
        process is not known to have ended (this process's included)."""
        out: dict[str, dict[str, Any]] = {}
        for slide, age, record in _top_claims(self._all_generations()):
            if age <= self.timeout and record is not None and not self._died_here(record):
                out[slide] = {**record, "heartbeat_age": round(age, 1)}
        return out

    def others_active(self) -> bool:
        """True when another process holds a live claim in this folder."""
        return any(r.get("token") != self.owner.token for r in self.live_claims().values())

    # -- heartbeat ---------------------------------------------------------------------

    def heartbeat(self) -> set[str]:
        """Refresh every held claim; returns the slides whose claim was lost (taken over, or
        deleted), which are no longer held."""
        with self._lock:
            claims = list(self.held.values())
        for path in self.touch:
            with contextlib.suppress(FileNotFoundError):
                os.utime(path)
        lost = set()
        for claim in claims:
            try:
                os.utime(claim.path)
            except FileNotFoundError:
                lost.add(claim.slide)
                continue
            if not self.holds(claim):
                lost.add(claim.slide)
        if lost:
            with self._lock:
                for slide in lost:
                    self.held.pop(slide, None)
                self.lost |= lost
            logger.warning(
                "Lost the claim on %s: another process took it over (this one stalled for "
                "more than the %.0f s timeout); its bag is left to that process.",
                ", ".join(sorted(lost)),
                self.timeout,
            )
        return lost

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.heartbeat()
            except OSError as exc:  # a transient file-system error: try again next beat
                logger.warning("Claim heartbeat failed: %s", exc)

    def __enter__(self) -> ClaimBoard:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="histobag-claims", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.release_all()

    # -- files -------------------------------------------------------------------------

    def _path(self, slide: str, generation: int) -> Path:
        return self.folder / f"{slide}{_SEPARATOR}{generation}{_SUFFIX}"

    def _generations(self, slide: str) -> dict[int, Path]:
        prefix = f"{slide}{_SEPARATOR}"
        return {
            generation: path
            for name, generation, path in self._claim_files()
            if name.startswith(prefix) and name[: -len(_SUFFIX)].rpartition(_SEPARATOR)[0] == slide
        }

    def _all_generations(self) -> dict[str, dict[int, Path]]:
        out: dict[str, dict[int, Path]] = {}
        for name, generation, path in self._claim_files():
            slide = name[: -len(_SUFFIX)].rpartition(_SEPARATOR)[0]
            out.setdefault(slide, {})[generation] = path
        return out

    def _claim_files(self) -> Iterator[tuple[str, int, Path]]:
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return
        for entry in entries:
            name = entry.name
            if not name.endswith(_SUFFIX) or _SEPARATOR not in name:
                continue
            generation = name[: -len(_SUFFIX)].rpartition(_SEPARATOR)[2]
            if generation.isdigit():
                yield name, int(generation), Path(entry.path)


def ended_on_this_machine(record: dict[str, Any]) -> bool:
    """True when the process of ``record`` (a claim's or a run report's owner) ran on this
    machine (same host name and boot) and no longer runs. False when unknown: another host, or
    a pid that is in use (perhaps reused)."""
    if not record.get("boot") or record.get("host") != socket.gethostname():
        return False
    if record.get("boot") != _boot_id():
        return False
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, KeyError, ValueError, TypeError):
        return False
    return False


def live_claims(
    outdir: str | os.PathLike[str], timeout: float = DEFAULT_CLAIM_TIMEOUT
) -> dict[str, dict[str, Any]]:
    """Slide -> claim record, for the claims in ``outdir`` held now (a recent heartbeat, and
    not by a process known to have ended)."""
    return ClaimBoard(Path(outdir), timeout=timeout).live_claims()


def _top_claims(
    claims: dict[str, dict[int, Path]],
) -> Iterator[tuple[str, float, dict[str, Any] | None]]:
    """(slide, seconds since its heartbeat, record) of each slide's current generation."""
    now = time.time()
    for slide, generations in claims.items():
        path = generations[max(generations)]
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:  # released meanwhile
            continue
        yield slide, age, _read_json(path)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describe_file(path: Path) -> str:
    record = _read_json(path) or {}
    rank = f" rank {record['rank']}" if record.get("rank") is not None else ""
    return f"it was held by {record.get('host', '?')} pid {record.get('pid', '?')}{rank}"
