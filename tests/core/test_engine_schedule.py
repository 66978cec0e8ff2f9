"""The engine under a schedule: jobs decided one at a time while the run goes on (slide claims)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import histobag
from histobag.engine import CollectSink, Job, run
from histobag.tile_readers import OpenWSI
from tests.core.bag_helpers import PIXELNET, TILE_PX, TILE_UM, make_slides
from tests.core.toy_models import registered


@pytest.fixture(scope="module")
def extractor():
    with registered(PIXELNET):
        yield histobag.build_feature_extractor("pixelnet", device="cpu", mixed_precision=False)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    slides = make_slides(tmp_path_factory.mktemp("schedule"), n=4)
    return [
        Job(f"slide-{i}", OpenWSI(str(slides / f"slide-{i}.svs"), TILE_PX, TILE_UM, {}))
        for i in range(4)
    ]


class ListSchedule:
    """Hands out ``order``; records how many decided jobs were unfinished at each decision."""

    def __init__(self, order, sink, fail_at=None):
        self.order = list(order)
        self.sink = sink
        self.fail_at = fail_at
        self.decided = 0
        self.unfinished_seen = []

    def next_job(self, stop: threading.Event):
        if self.fail_at is not None and self.decided == self.fail_at:
            raise OSError("the claims folder vanished")
        if not self.order:
            return None
        finished = len(self.sink.results) + len(self.sink.failures)
        self.unfinished_seen.append(self.decided - finished)
        self.decided += 1
        return self.order.pop(0)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_only_the_scheduled_jobs_run_in_the_schedules_order(extractor, jobs, num_workers):
    reference = CollectSink()
    run(extractor, jobs, reference, batch_size=16, num_workers=0)
    sink = CollectSink()
    schedule = ListSchedule([3, 0, 2], sink)
    run(extractor, jobs, sink, batch_size=16, num_workers=num_workers, schedule=schedule)
    assert set(sink.results) == {"slide-3", "slide-0", "slide-2"}
    assert sink.failures == {}  # slide-1 was never scheduled: not a failure
    for key, result in sink.results.items():
        np.testing.assert_array_equal(result.top_left, reference.results[key].top_left)
        if num_workers == 0:  # the same batches: the same bits
            np.testing.assert_array_equal(result.features, reference.results[key].features)
        else:  # workers share a slide's batches round-robin: other batch sizes, float rounding
            np.testing.assert_allclose(result.features, reference.results[key].features, 1e-5)


def test_lookahead_bounds_the_slides_in_flight(extractor, jobs):
    sink = CollectSink()
    schedule = ListSchedule([0, 1, 2, 3], sink)
    run(extractor, jobs, sink, batch_size=16, num_workers=0, schedule=schedule, lookahead=1)
    assert len(sink.results) == 4
    assert max(schedule.unfinished_seen) == 0  # each slide decided after the last finished


def test_a_schedule_error_stops_the_run_and_is_raised(extractor, jobs):
    sink = CollectSink()
    schedule = ListSchedule([0, 1, 2, 3], sink, fail_at=1)
    with pytest.raises(OSError, match="vanished"):
        run(extractor, jobs, sink, batch_size=16, num_workers=0, schedule=schedule)
    assert "slide-0" in sink.results  # decided before the error: finished
    assert set(sink.results) | set(sink.failures) <= {"slide-0"}
