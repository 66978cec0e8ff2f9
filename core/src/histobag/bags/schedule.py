"""Which slide a process extracts next, when several processes share one bags folder.

:class:`ClaimSchedule` is the :class:`histobag.engine.Schedule` of a bag run. The engine asks
it for the next slide only when it is about to read one, so slides are handed out one at a time
and a fast process takes more of them:

1. it walks the slides in its shard's order (:class:`histobag.cluster.Shard`), skipping those
   whose bag is complete or that another process of this run saw fail, and claims the first
   free one (:mod:`histobag.bags.claims`);
2. right after claiming it looks at the bag again (another process may have just finished it)
   and, if the bag on disk does not match its record, deletes it so that it is redone;
3. slides held by other processes are visited again, every ``poll`` seconds, until each is
   done, failed, or its claim goes stale and is taken over here. A process therefore ends only
   when no slide of the run is left to anyone, and a dead process's slides are not lost.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from histobag.bags import manifest as integrity
from histobag.bags.claims import Claim, ClaimBoard
from histobag.bags.report import BagRunReport
from histobag.cluster import Shard
from histobag.engine import Job
from histobag.io.bag_writers import BagWriter

__all__ = ["ClaimSchedule"]

logger = logging.getLogger(__name__)


class ClaimSchedule:
    """Hands out the slides of a bag run through claims (see the module docstring).

    Args:
        jobs: The slides this process may extract.
        board: This process's claims on the bags folder.
        bag_writer: The run's bag writer (to see which bags are complete).
        num_features: The extractor's feature width, if known.
        report: This process's report: slides found complete go to ``skipped``, slides whose
            bag is redone to ``redone``.
        shard: The order in which to visit the slides (default: name order).
        rehash: Re-hash finished bags against their record (``verify=True``).
        poll: Seconds between visits to slides held by other processes (default: a tenth of
            the claim timeout, at most 5 s).
    """

    def __init__(
        self,
        jobs: Sequence[Job],
        board: ClaimBoard,
        bag_writer: BagWriter,
        num_features: int | None,
        report: BagRunReport,
        *,
        shard: Shard | None = None,
        rehash: bool = False,
        poll: float | None = None,
    ) -> None:
        self.jobs = list(jobs)
        self.board = board
        self.bag_writer = bag_writer
        self.num_features = num_features
        self.report = report
        self.rehash = rehash
        self.poll = poll if poll is not None else min(5.0, board.timeout / 10)
        order = (shard or Shard(0, 1)).order(len(self.jobs))
        self._pending: deque[int] = deque(order)
        self._waiting: list[int] = []
        self.claims: dict[str, Claim] = {}
        self.lock = threading.Lock()
        # Slides whose bag files were already there when the run was planned, and yet to be
        # redone (damaged, unrecorded): their files say nothing of another process's work.
        self._suspect = {
            job.key for job in self.jobs if any(p.exists() for p in bag_writer.files(job.key))
        }

    def next_job(self, stop: threading.Event) -> int | None:
        """The next slide this process has claimed, or None when no slide is left to anyone."""
        while not stop.is_set():
            while self._pending and not stop.is_set():
                j = self._pending.popleft()
                if self._take(j):
                    return j
            if not self._waiting:
                self._sweep()
                return None
            stop.wait(self.poll)  # other processes hold the rest: look again later
            self._pending, self._waiting = deque(self._waiting), []
        return None

    def _sweep(self) -> None:
        """Remove the claims that dead processes left on slides whose bag is complete."""
        keys = {job.key for job in self.jobs}
        for key in self.board.abandoned():
            files = self.bag_writer.files(key)
            if key in keys and all(Path(p).exists() for p in files):
                self.board.remove_abandoned(key)

    def claim_of(self, key: str) -> Claim | None:
        """The claim this process holds for slide ``key``, if any."""
        with self.lock:
            return self.claims.get(key)

    def release(self, key: str) -> None:
        """Give back ``key``'s claim (its bag is complete, or it failed)."""
        with self.lock:
            claim = self.claims.pop(key, None)
        if claim is not None:
            self.board.release(claim)

    def _take(self, j: int) -> bool:
        """Claim slide ``j`` if it still needs extracting; False when it does not or another
        process holds it (then it is visited again later)."""
        key = self.jobs[j].key
        if self._complete(key):
            return False
        failure = self.board.failed_during_run(key)
        if failure is not None:
            self.report.failed[key] = f"{failure.get('reason', 'failed')} (in another process)"
            self.report.note(key, by=_who(failure))
            return False
        claim = self.board.claim(key)
        if claim is None:
            self._waiting.append(j)
            return False
        if self._complete(key, claimed=True):  # finished by another process meanwhile
            self.board.release(claim)
            return False
        with self.lock:
            self.claims[key] = claim
        return True

    def _complete(self, key: str, claimed: bool = False) -> bool:
        """True (and the slide recorded as skipped) when its bag is complete.

        Before claiming, a bag whose files all exist (and did not when the run was planned)
        counts as complete: another process of the run wrote it (whole, renamed into place)
        since, and checking more would read every bag of the cohort in every process. Holding
        the claim, the bag is checked against its record, and one that does not match is
        deleted so that it is redone: no other process is writing it then.
        """
        files = [Path(p) for p in self.bag_writer.files(key)]
        present = [p.exists() for p in files]
        if not claimed:
            if all(present) and key not in self._suspect:
                self.report.skipped_elsewhere.add(key)
                self.report.note(key)
                return True
            return False
        if not any(present):
            return False
        manifest = integrity.read_manifest(self.bag_writer.outdir) or {}
        problem = integrity.bag_problem(
            self.bag_writer.outdir, manifest.get(key), files, rehash=self.rehash
        )
        if problem is None:
            self.report.skipped[key] = int(manifest[key]["tiles"])
            self.report.note(key)
            return True
        self.report.redone[key] = problem
        self.report.note(key)
        logger.warning("Redoing the bag of %s: %s", key, problem)
        for path in files:  # not what was recorded: a bag exists only whole and recorded
            path.unlink(missing_ok=True)
        return False


def _who(record: dict) -> str:
    rank = f" rank {record['rank']}" if record.get("rank") is not None else ""
    return f"{record.get('host', '?')} pid {record.get('pid', '?')}{rank}"
