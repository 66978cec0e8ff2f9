"""Merging the processes' reports into one run report: which processes make a run, and each
slide listed once with its status in that run."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, replace

import torch.distributed as dist

from histobag.bags.claims import Owner
from histobag.bags.report import REPORT_NAME, BagRunReport, merge_run_report, write_run_report
from histobag.cluster import Launch, run_id


def _part(outdir, start, end, *, run=None, finished=True, **slides):
    """A process's report that worked from ``start`` to ``end`` (seconds from now)."""
    now = time.time()
    owner = replace(Owner.current(run=run), started=now + start, pid=int(1e6 + start * 10))
    report = BagRunReport(outdir, owner=asdict(owner))
    for name, status in slides.items():
        getattr(report, status)[name] = "why" if status == "failed" else 3
        report.note(name)
        report.details[name]["at"] = now + end
    path = report.save_part(finished=finished)
    os.utime(path, (now + end, now + end))  # as last written
    return owner


def test_overlapping_processes_are_one_run_and_each_slide_is_listed_once(tmp_path):
    _part(tmp_path, -30, -10, a="done", b="skipped", c="failed")
    _part(tmp_path, -20, -5, a="skipped", b="done", c="done", d="failed")
    merged = merge_run_report(tmp_path)
    statuses = {name: s["status"] for name, s in merged["slides"].items()}
    assert statuses == {"a": "done", "b": "done", "c": "done", "d": "failed"}
    assert (merged["processes"], merged["done"], merged["failed"]) == (2, 3, 1)


def test_a_later_run_is_reported_on_its_own(tmp_path):
    _part(tmp_path, -100, -90, a="done", b="done")
    later = _part(tmp_path, -10, -5, a="skipped", b="skipped")
    merged = merge_run_report(tmp_path)
    assert merged["processes"] == 1 and merged["skipped"] == 2 and merged["done"] == 0
    first = merge_run_report(tmp_path, token="no-such-process")
    assert first["skipped"] == 2  # an unknown token: the latest run
    assert merge_run_report(tmp_path, token=later.token)["skipped"] == 2


def test_a_rerun_started_as_the_previous_run_exits_is_a_run_of_its_own(tmp_path):
    # The previous run's last write and the rerun's measured start may touch or cross by a
    # few clock ticks; that is not two processes working side by side.
    _part(tmp_path, -20, -5.0, a="done", b="done", c="failed")
    _part(tmp_path, -5.1, -1, a="skipped", b="skipped", c="done")
    merged = merge_run_report(tmp_path)
    assert merged["processes"] == 1
    assert (merged["done"], merged["skipped"], merged["failed"]) == (1, 2, 0)


def test_a_late_rank_of_the_same_launch_joins_its_run(tmp_path):
    _part(tmp_path, -100, -90, run="torchrun-x", a="done", b="done")
    _part(tmp_path, -10, -5, run="torchrun-x", a="skipped", b="skipped")
    merged = merge_run_report(tmp_path)
    assert merged["processes"] == 2 and merged["done"] == 2


def test_live_claims_show_as_claimed_until_done(tmp_path):
    _part(tmp_path, -10, -1, finished=False, a="done")
    claim = {"host": "n1", "pid": 7, "rank": 2, "claimed": time.time()}
    merged = write_run_report(tmp_path, live_claims={"a": claim, "b": claim})
    assert merged["slides"]["a"]["status"] == "done"
    assert merged["slides"]["b"] == {
        "status": "claimed",
        "host": "n1",
        "pid": 7,
        "rank": 2,
        "since": claim["claimed"],
    }
    assert merged["claimed"] == 1
    assert json.loads((tmp_path / REPORT_NAME).read_text()) == merged


def test_no_reports_no_merge(tmp_path):
    assert merge_run_report(tmp_path) is None
    assert write_run_report(tmp_path) is None
    assert not (tmp_path / REPORT_NAME).exists()


def test_a_slurm_array_shares_its_job_id():
    assert run_id(None, {"SLURM_ARRAY_JOB_ID": "4242"}) == "slurm-array-4242"
    assert run_id(None, {}) is None


def test_torchrun_ranks_agree_on_a_run_id_through_the_launchers_store():
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port)}
    ids = {run_id(Launch(r, 3, r, 3), env) for r in range(3)}
    assert len(ids) == 1 and next(iter(ids)).startswith("torchrun-")
    other = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    env_other = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(other.port)}
    assert run_id(Launch(0, 1, 0, 1), env_other) not in ids  # another launch, another id
    del store, other


def test_no_store_no_run_id():
    assert run_id(Launch(0, 2, 0, 2), {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}, 0.5) is None
