"""Run reports: what each process did, and one ``run_report.json`` for the whole run.

Every process of a run (one ``histobag extract``, the ranks of a ``torchrun`` launch, the tasks
of a SLURM array, any processes sharing one ``--outdir``) keeps its own report in
``.histobag-run/<process>.jsonl``, a journal (:mod:`histobag.bags.journal`) it appends to as
each slide is settled: a line when it starts, one per slide, one when it ends.
``run_report.json`` merges the reports of one run; it is written by each process when it ends
(so the last one to end leaves the whole run's) and by ``histobag report OUTDIR`` at any time.

**Which reports make up a run**: those of processes whose working times overlap, directly or
through others (the processes of a cluster run work at the same time; a rerun of the command
after the run ended is a new run), and those of one launch (the ranks of a torchrun launch, the
tasks of a SLURM array: they share a run id, see :func:`histobag.cluster.run_id`), however
late one of them starts. A process's working time runs from its start to its last
report update, or to now while its heartbeat (refreshed with its slide claims) is recent and
it is not known to have ended.

**Each slide is listed once**, with its status in the run: ``done`` (by which host and rank, how
many tiles, how many seconds) if a process wrote its bag; else ``failed`` (the latest reason);
else ``claimed`` while a process holds its claim; else ``skipped`` (its bag was already
complete).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histobag.bags.claims import ended_on_this_machine
from histobag.bags.journal import JOURNAL_SUFFIX, append_records, journals, read_journal
from histobag.files import write_json_atomic

__all__ = [
    "PARTS_DIR",
    "REPORT_NAME",
    "BagRunReport",
    "format_summary",
    "merge_run_report",
    "read_process_reports",
    "write_run_report",
]

#: The merged report, in the bags folder.
REPORT_NAME = "run_report.json"
#: The per-process reports, inside the bags folder.
PARTS_DIR = ".histobag-run"
#: A running process's report counts as current while refreshed within this many seconds.
_LIVE_SECONDS = 300.0
#: How long processes must have worked side by side to be one run. Processes launched together
#: overlap by their start-up (importing torch, building a model: seconds); a rerun started as
#: the previous run exits does not, though clocks and file times blur the boundary by a little.
_MIN_OVERLAP_SECONDS = 0.25


@dataclass
class BagRunReport:
    """What a bag run did, per slide (one process's view; see :func:`merge_run_report`).

    Attributes:
        outdir: The bags folder.
        done: Slides extracted in this run → number of tiles.
        skipped: Slides whose bag already existed with this configuration → number of tiles.
        failed: Slides that could not be extracted → reason.
        redone: Slides whose existing bag did not match its record and was extracted again →
            what differed (they are also in ``done``, or ``failed``).
        warnings: Messages about the run as a whole (an empty dataset, no bag written).
        seconds: Wall time of the run.
        details: Slide → who did it and when (``host``, ``pid``, ``rank``, ``seconds``,
            ``at``), for the merged report.
        owner: This process (``host``, ``pid``, ``rank``, ``token``, ``started``), if known.
        skipped_elsewhere: Slides another process of the run wrote while this one ran.
    """

    outdir: Path
    done: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    redone: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    owner: dict[str, Any] = field(default_factory=dict)
    skipped_elsewhere: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._unsaved: set[str] = set()
        self._part: Path | None = None

    @property
    def ok(self) -> bool:
        """True when no slide failed."""
        return not self.failed

    def note(self, slide: str, **info: Any) -> None:
        """Record who handled ``slide`` and when (merged into :meth:`to_dict`); call after
        each change of a slide's status, so that :meth:`save_part` writes it."""
        who = {k: self.owner[k] for k in ("host", "pid", "rank") if k in self.owner}
        self.details[slide] = {**who, **info, "at": round(time.time(), 3)}
        self._unsaved.add(slide)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``run_report.json`` of a single process)."""
        slides: dict[str, Any] = {}
        for name, n in self.done.items():
            slides[name] = {"status": "done", "tiles": n}
        for name, n in self.skipped.items():
            slides[name] = {"status": "skipped", "tiles": n, "reason": "bag already complete"}
        for name in self.skipped_elsewhere - set(slides):
            slides[name] = {"status": "skipped", "reason": "written by another process"}
        for name, reason in self.failed.items():
            slides[name] = {"status": "failed", "reason": reason}
        for name, why in self.redone.items():
            if name in slides:
                slides[name]["redone"] = why
        for name, info in self.details.items():
            if name in slides:
                slides[name].update(info)
        return {
            "outdir": str(self.outdir),
            "seconds": round(self.seconds, 3),
            "done": len(self.done),
            "skipped": len(self.skipped) + len(self.skipped_elsewhere - set(self.skipped)),
            "failed": len(self.failed),
            "warnings": list(self.warnings),
            "slides": dict(sorted(slides.items())),
        }

    def summary(self) -> str:
        """A table of slides and their status."""
        return format_summary(self.to_dict())

    # -- this process's part ----------------------------------------------------------

    def part_path(self) -> Path:
        """The file of this process's report, in ``.histobag-run/``."""
        if self._part is None:  # one per run of a process (a notebook may run several)
            token = self.owner.get("token") or uuid.uuid4().hex
            name = f"{self.owner.get('host', 'host')}-{self.owner.get('pid', os.getpid())}"
            self._part = self.outdir / PARTS_DIR / f"{name}-{token[:12]}{JOURNAL_SUFFIX}"
        return self._part

    def save_part(self, finished: bool = False) -> Path:
        """Append what changed since the last call to this process's report (the first call
        writes who the process is; ``finished`` marks its end)."""
        path = self.part_path()
        records: list[dict[str, Any]] = []
        if not path.exists():
            # A process's first run counts from the process's start (see generate_feature_bags).
            started = self.owner.get("launched") or self.owner.get("started")
            started = started or time.time() - self.seconds
            records.append({"kind": "start", "owner": self.owner, "started": started})
        slides = self.to_dict()["slides"]
        for name in sorted(self._unsaved):
            if name in slides:
                records.append({"kind": "slide", "slide": name, **slides[name]})
        self._unsaved.clear()
        if finished:
            end = {"seconds": round(self.seconds, 3), "warnings": list(self.warnings)}
            records.append({"kind": "end", **end})
        append_records(path, records, sync=False)
        return path


def format_summary(report: dict[str, Any]) -> str:
    """The table ``histobag extract`` and ``histobag report`` print, from a report dict."""
    rows = []
    for name, s in report["slides"].items():
        status = s["status"]
        tiles = str(s["tiles"]) if "tiles" in s else "-"
        note = ""
        if status == "done" and "redone" in s:
            note = f"redone: {s['redone']}"
        elif status == "skipped":
            note = "already complete"
        elif status == "failed":
            note = s.get("reason", "")
        elif status == "claimed":
            note = f"in progress: {_who(s)}"
        if status == "done" and report.get("processes", 1) > 1:
            note = f"{_who(s)} {note}".strip()
        rows.append((name, "FAILED" if status == "failed" else status, tiles, note))
    rows.sort()
    headers = ("slide", "status", "tiles", "note")
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    claimed = report.get("claimed", 0)
    processes = report.get("processes", 1)
    lines.append(
        f"{report['done']} done, {report['skipped']} skipped, {report['failed']} failed"
        + (f", {claimed} still claimed" if claimed else "")
        + f" in {report['seconds']:.1f} s"
        + (f" by {processes} processes" if processes > 1 else "")
        + f" -> {report['outdir']}"
    )
    return "\n".join(lines)


def _who(slide: dict[str, Any]) -> str:
    rank = f" rank {slide['rank']}" if slide.get("rank") is not None else ""
    return f"{slide.get('host', '?')} pid {slide.get('pid', '?')}{rank}"


# -- merging ------------------------------------------------------------------------------


def read_process_reports(outdir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every process's own report in ``outdir`` (all runs), each folded from its journal:
    ``owner``, ``started``, ``updated``, ``finished`` and ``report`` (``slides``, counts,
    ``warnings``)."""
    return _read_parts(Path(outdir))


def _read_parts(outdir: Path) -> list[dict[str, Any]]:
    """Each process's report, folded from its journal."""
    parts = []
    for path in journals(outdir / PARTS_DIR):
        part: dict[str, Any] = {"report": {"slides": {}, "warnings": []}}
        for record in read_journal(path):
            kind = record.pop("kind", None)
            if kind == "start":
                part["owner"] = record.get("owner", {})
                part["started"] = record.get("started", 0)
            elif kind == "slide" and isinstance(record.get("slide"), str):
                part["report"]["slides"][record.pop("slide")] = record
            elif kind == "end":
                part["finished"] = True
                part["report"]["warnings"] = list(record.get("warnings", []))
        if "owner" not in part:
            continue  # not a run report, or cut before its first line
        try:
            part["updated"] = path.stat().st_mtime
        except FileNotFoundError:
            continue
        statuses = [s.get("status") for s in part["report"]["slides"].values()]
        part["report"].update({k: statuses.count(k) for k in ("done", "skipped", "failed")})
        parts.append(part)
    return parts


def _interval(part: dict[str, Any], now: float) -> tuple[float, float]:
    """A process's working time: start to last update, or to now while it is alive."""
    start = float(part.get("started", 0))
    end = float(part.get("updated", start))
    alive = not part.get("finished") and now - end < _LIVE_SECONDS
    if alive and not ended_on_this_machine(part.get("owner", {})):
        end = now
    return start, end


def _run_of(parts: list[dict[str, Any]], token: str | None, now: float) -> list[dict[str, Any]]:
    """The parts of the run that ``token``'s process belongs to (the latest run without one):
    processes whose working times overlap, directly or through others, or that share a launch
    (the same run id: the ranks of one torchrun launch, the tasks of one SLURM array)."""
    if not parts:
        return []
    group = list(range(len(parts)))

    def find(i: int) -> int:
        while group[i] != i:
            group[i] = group[group[i]]
            i = group[i]
        return i

    spans = sorted((*_interval(p, now), i) for i, p in enumerate(parts))
    run_end, previous = float("-inf"), None
    for start, end, i in spans:
        joins = previous is not None and start < run_end - _MIN_OVERLAP_SECONDS
        if joins:
            group[find(i)] = find(previous)
        run_end = max(run_end, end) if joins else end
        previous = i
    by_launch: dict[str, int] = {}
    for i, part in enumerate(parts):
        launch = part.get("owner", {}).get("run")
        if launch:
            group[find(i)] = find(by_launch.setdefault(launch, i))
    latest = max(range(len(parts)), key=lambda i: _interval(parts[i], now)[1])
    chosen = find(latest)
    if token is not None:
        mine = [i for i, p in enumerate(parts) if p.get("owner", {}).get("token") == token]
        chosen = find(mine[0]) if mine else chosen
    return [p for i, p in enumerate(parts) if find(i) == chosen]


def merge_run_report(
    outdir: str | os.PathLike[str],
    token: str | None = None,
    live_claims: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """The whole run's report, merged from the per-process reports (see the module docstring).

    Args:
        outdir: The bags folder.
        token: The run of this process (its :class:`~histobag.bags.claims.Owner` token);
            ``None``: the latest run.
        live_claims: Slide → claim record of claims held now, listed as ``claimed`` when no
            process has finished the slide.

    Returns:
        The merged report (the keys of :meth:`BagRunReport.to_dict`, plus ``claimed``,
        ``processes`` and per-process lines), or None when the folder has no process reports.
    """
    outdir = Path(outdir)
    now = time.time()
    parts = _run_of(_read_parts(outdir), token, now)
    if not parts:
        return None
    events: dict[str, list[dict[str, Any]]] = {}
    warnings: list[str] = []
    for part in parts:
        for name, info in part["report"].get("slides", {}).items():
            events.setdefault(name, []).append(info)
        for message in part["report"].get("warnings", []):
            if message not in warnings:
                warnings.append(message)
    slides: dict[str, dict[str, Any]] = {}
    for name, infos in events.items():
        infos = sorted(infos, key=lambda s: s.get("at", 0))
        for status in ("done", "failed"):
            matching = [s for s in infos if s["status"] == status]
            if matching:
                slides[name] = dict(matching[-1])
                break
        else:
            if live_claims and name in live_claims:
                slides[name] = _claimed(live_claims[name])
            else:
                slides[name] = dict(infos[-1])
    for name, claim in (live_claims or {}).items():
        slides.setdefault(name, _claimed(claim))
    counts = {s: sum(1 for v in slides.values() if v["status"] == s) for s in _STATUSES}
    starts = [float(p.get("started", now)) for p in parts]
    ends = [_interval(p, now)[1] for p in parts]
    if counts["done"] + counts["skipped"]:  # some process wrote or found bags
        warnings = [w for w in warnings if not w.startswith(_EMPTY_RUN_PREFIXES)]
    return {
        "outdir": str(outdir),
        "seconds": round(max(ends) - min(starts), 3),
        **counts,
        "processes": len(parts),
        "warnings": warnings,
        "process_reports": [
            {
                **{k: p.get("owner", {}).get(k) for k in ("host", "pid", "rank")},
                "done": p["report"].get("done", 0),
                "skipped": p["report"].get("skipped", 0),
                "failed": p["report"].get("failed", 0),
                "finished": bool(p.get("finished")),
            }
            for p in parts
        ],
        "slides": dict(sorted(slides.items())),
    }


_STATUSES = ("done", "skipped", "failed", "claimed")
#: Warnings of a process that found nothing to do, which do not hold for the whole run.
_EMPTY_RUN_PREFIXES = ("The dataset has no slides", "No bag was written")


def _claimed(claim: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": "claimed",
        **{k: claim.get(k) for k in ("host", "pid", "rank")},
        "since": claim.get("claimed"),
    }


def write_run_report(
    outdir: str | os.PathLike[str],
    token: str | None = None,
    live_claims: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """Merge the run's reports (:func:`merge_run_report`) into ``run_report.json``, atomically;
    returns the merged report (None, writing nothing, when there are no process reports)."""
    merged = merge_run_report(outdir, token, live_claims)
    if merged is not None:
        write_json_atomic(Path(outdir) / REPORT_NAME, merged)
    return merged
