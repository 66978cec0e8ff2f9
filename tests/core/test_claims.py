"""Slide claims: exclusive, refreshed, taken over when stale (by exactly one process), released."""

import json
import multiprocessing
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from histobag.bags.claims import CLAIMS_DIR, ClaimBoard, Owner, live_claims
from histobag.errors import ArgumentError
from histobag.files import TMP_PREFIX, create_exclusive, remove_stale_temporaries


def _board(outdir: Path, timeout: float = 60.0, **owner: object) -> ClaimBoard:
    return ClaimBoard(outdir, replace(Owner.current(), **owner), timeout=timeout)


def _age(path: Path, seconds: float) -> None:
    """Make a claim look as if its last heartbeat was ``seconds`` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_create_exclusive_creates_once_and_whole(tmp_path):
    target = tmp_path / "x.claim"
    assert create_exclusive(target, b"first")
    assert not create_exclusive(target, b"second")
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["x.claim"]  # no temporary left behind


def test_a_claim_is_exclusive_until_released(tmp_path):
    a, b = _board(tmp_path), _board(tmp_path)
    claim = a.claim("slide-0")
    assert claim is not None and claim.generation == 0
    assert b.claim("slide-0") is None
    record = json.loads(claim.path.read_text())
    assert (record["pid"], record["token"], record["slide"]) == (
        os.getpid(),
        a.owner.token,
        "slide-0",
    )
    assert a.holds(claim)
    a.release(claim)
    assert not list((tmp_path / CLAIMS_DIR).glob("*.claim"))
    again = b.claim("slide-0")
    assert again is not None and again.generation == 0


def test_a_stale_claim_is_taken_over_with_the_next_generation(tmp_path):
    dead = _board(tmp_path, timeout=10, host="node-that-died")
    taker = _board(tmp_path, timeout=10)
    old = dead.claim("slide-0")
    _age(old.path, 5)
    assert taker.claim("slide-0") is None  # 5 s without heartbeat is within the timeout
    _age(old.path, 11)
    new = taker.claim("slide-0")
    assert new is not None and new.generation == 1
    assert not dead.holds(old) and taker.holds(new)
    assert dead.heartbeat() == {"slide-0"}  # the stalled owner learns it lost the claim
    assert "slide-0" in dead.lost and "slide-0" not in dead.held
    taker.release(new)  # removes the stale generation too
    assert not list((tmp_path / CLAIMS_DIR).glob("*.claim"))


def test_heartbeat_keeps_a_claim_fresh(tmp_path):
    owner = _board(tmp_path, timeout=10, host="elsewhere")
    other = _board(tmp_path, timeout=10)
    claim = owner.claim("slide-0")
    _age(claim.path, 60)
    assert owner.heartbeat() == set()
    assert other.claim("slide-0") is None


def test_the_heartbeat_thread_refreshes_and_exit_releases(tmp_path):
    board = _board(tmp_path, timeout=0.6)  # heartbeat every 0.1 s
    with board:
        claim = board.claim("slide-0")
        _age(claim.path, 30)
        deadline = time.time() + 5
        while time.time() - claim.path.stat().st_mtime > 1 and time.time() < deadline:
            time.sleep(0.05)
        assert time.time() - claim.path.stat().st_mtime < 1
    assert not claim.path.exists()  # released on exit


def test_a_claim_of_an_ended_process_on_this_machine_is_taken_at_once(tmp_path):
    proc = multiprocessing.get_context("fork").Process(target=_claim_and_exit, args=(tmp_path,))
    proc.start()
    proc.join()
    assert proc.exitcode == 0
    assert list((tmp_path / CLAIMS_DIR).glob("*.claim"))  # it died holding the claim
    assert live_claims(tmp_path) == {}
    claim = _board(tmp_path, timeout=3600).claim("slide-0")
    assert claim is not None and claim.generation == 1


def _claim_and_exit(outdir: Path) -> None:
    board = ClaimBoard(outdir, Owner.current(), timeout=3600)
    assert board.claim("slide-0") is not None
    os._exit(0)  # no release: as if killed


def test_live_claims_lists_current_holders(tmp_path):
    a = _board(tmp_path, timeout=10, rank=3)
    a.claim("slide-0")
    stale = a.claim("slide-1")
    _age(stale.path, 20)
    live = live_claims(tmp_path, timeout=10)
    assert set(live) == {"slide-0"} and live["slide-0"]["rank"] == 3
    assert _board(tmp_path, timeout=10).others_active()  # a holds a live claim
    assert a.others_active() is False  # its own claims do not count


def test_failures_are_seen_by_the_processes_of_the_same_run_only(tmp_path):
    earlier = _board(tmp_path)
    earlier.record_failure("slide-0", "unreadable")
    later = _board(tmp_path, started=time.time() + 1)
    assert later.failed_during_run("slide-0") is None  # an earlier run's failure is retried
    running = _board(tmp_path, started=time.time() - 100)
    assert running.failed_during_run("slide-0")["reason"] == "unreadable"
    running.clear_failure("slide-0")
    assert running.failed_during_run("slide-0") is None


def test_the_timeout_must_be_positive(tmp_path):
    with pytest.raises(ArgumentError, match="positive"):
        ClaimBoard(tmp_path, timeout=0)


def _race(outdir: str, rounds: int, barrier, results) -> None:
    board = ClaimBoard(Path(outdir), Owner.current(), timeout=5)
    won = []
    for r in range(rounds):
        barrier.wait()
        if board.claim(f"slide-{r}") is not None:
            won.append(r)
    results.put(won)


@pytest.mark.parametrize("racers", [2, 4])
def test_exactly_one_of_several_processes_takes_over_a_stale_claim(tmp_path, racers):
    rounds = 150
    dead = _board(tmp_path, timeout=5, host="node-that-died")
    for r in range(rounds):
        _age(dead.claim(f"slide-{r}").path, 600)
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(racers), ctx.Queue()
    procs = [
        ctx.Process(target=_race, args=(str(tmp_path), rounds, barrier, results))
        for _ in range(racers)
    ]
    for p in procs:
        p.start()
    wins = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    per_round = [sum(r in w for w in wins) for r in range(rounds)]
    assert per_round == [1] * rounds
    generations = sorted(p.name for p in (tmp_path / CLAIMS_DIR).glob("slide-7@*.claim"))
    assert generations == ["slide-7@0.claim", "slide-7@1.claim"]


def test_only_old_temporaries_are_removed_when_others_may_be_writing(tmp_path):
    fresh = tmp_path / f"{TMP_PREFIX}fresh.pt"
    old = tmp_path / f"{TMP_PREFIX}old.pt"
    fresh.write_bytes(b"in use by another process")
    old.write_bytes(b"left by a killed one")
    _age(old, 600)
    assert remove_stale_temporaries(tmp_path, older_than=300) == 1
    assert fresh.exists() and not old.exists()
    assert remove_stale_temporaries(tmp_path) == 1  # alone in the folder: every temporary
    assert not fresh.exists()
