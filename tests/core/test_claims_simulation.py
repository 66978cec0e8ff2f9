"""A cohort of 10,000 fake slides, 16 processes, 4 of them killed at random and restarted.

The real claim machinery (:class:`ClaimBoard`, :class:`ClaimSchedule`) hands out the slides;
"extracting" a slide takes 1 ms and creates its done-marker exclusively, so a second extraction
of any slide is caught. Every slide must be done exactly once and none lost.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from histobag.bags.claims import CLAIMS_DIR, ClaimBoard, Owner
from histobag.bags.manifest import compact_manifest, read_manifest, record_bags
from histobag.bags.report import BagRunReport
from histobag.bags.schedule import ClaimSchedule
from histobag.cluster import Shard
from histobag.engine import Job
from histobag.files import TMP_PREFIX, create_exclusive

SLIDES = 10_000
PROCESSES = 16
KILLS = 4


class DoneMarkers:
    """A bag writer's view of the fake cohort: a slide's "bag" is its done-marker."""

    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir

    def files(self, slide: str) -> list[Path]:
        return [self.outdir / f"{slide}.done"]

    def is_complete(self, slide: str, num_features: int | None = None) -> bool:
        return self.files(slide)[0].exists()

    def read(self, slide: str) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((1, 1), np.float32), np.zeros((1, 2), np.int64)


def _work(outdir: str, index: int, timeout: float) -> None:
    """One process: take slides until none is left; log duplicates and the claim overhead."""
    root = Path(outdir)
    writer = DoneMarkers(root)
    # As generate_feature_bags plans a run: the slides whose bag is not there yet.
    keys = [f"s{i:05d}" for i in range(SLIDES)]
    jobs = [Job(k, None) for k in keys if not writer.is_complete(k)]  # type: ignore[arg-type]
    board = ClaimBoard(root, Owner.current(rank=index), timeout=timeout)
    report = BagRunReport(root, owner=asdict(board.owner))
    schedule = ClaimSchedule(
        jobs, board, writer, None, report, shard=Shard(index, PROCESSES), poll=0.1
    )
    stop = threading.Event()
    overhead, done = 0.0, 0
    with board:
        while True:
            t0 = time.process_time()
            j = schedule.next_job(stop)
            overhead += time.process_time() - t0
            if j is None:
                break
            key = jobs[j].key
            time.sleep(0.001)  # the "extraction"
            if not create_exclusive(writer.files(key)[0], str(os.getpid()).encode()):
                with open(root / "duplicates.log", "a") as log:
                    log.write(f"{key}\n")
            record_bags(root, {key: (writer.files(key), 1)})  # as a bag is, before its release
            done += 1
            t0 = time.process_time()
            schedule.release(key)
            overhead += time.process_time() - t0
    compact_manifest(root)
    stats = {"pid": os.getpid(), "done": done, "overhead_s": overhead}
    (root / f"stats-{os.getpid()}.json").write_text(json.dumps(stats))


@pytest.mark.slow
def test_ten_thousand_slides_sixteen_processes_four_killed(tmp_path):
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(16)

    def start(index: int):
        proc = ctx.Process(target=_work, args=(str(tmp_path), index, 2.0))
        proc.start()
        return proc

    procs = {i: start(i) for i in range(PROCESSES)}
    killed = []
    started = time.monotonic()
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.2, 1.5))
        index = rng.choice([i for i, p in procs.items() if p.is_alive()])
        os.kill(procs[index].pid, signal.SIGKILL)
        procs[index].join()
        killed.append(procs[index])
        procs[index] = start(index)  # restarted, as a job scheduler would
    for proc in procs.values():
        proc.join(timeout=900)
        assert proc.exitcode == 0
    seconds = time.monotonic() - started
    assert all(p.exitcode == -signal.SIGKILL for p in killed)

    done = sorted(p.stem for p in tmp_path.glob("*.done") if not p.name.startswith(TMP_PREFIX))
    assert done == [f"s{i:05d}" for i in range(SLIDES)]  # none lost
    assert sorted(read_manifest(tmp_path)) == done  # each recorded, also by the killed ones
    duplicates = tmp_path / "duplicates.log"
    assert not duplicates.exists(), duplicates.read_text()[:500]  # none done twice
    claims = (tmp_path / CLAIMS_DIR).glob("*.claim")
    assert not [p for p in claims if not p.name.startswith(TMP_PREFIX)]  # all released

    stats = [json.loads(p.read_text()) for p in tmp_path.glob("stats-*.json")]
    finished = sum(s["done"] for s in stats)  # the killed processes' slides are not in here
    assert 0 < finished <= SLIDES
    per_slide_ms = 1000 * sum(s["overhead_s"] for s in stats) / max(finished, 1)
    print(
        f"\nclaims: {SLIDES} slides, {PROCESSES} processes ({KILLS} killed and restarted) in "
        f"{seconds:.1f} s; claim overhead {per_slide_ms:.2f} ms of CPU time per slide (taking, "
        f"checking and releasing claims, visiting slides done by others; {os.cpu_count()} cores)"
    )
