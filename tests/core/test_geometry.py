"""Tile geometry helpers: coordinate conventions and the one evenly spaced subsample."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from histobag.geometry import centres_to_top_left, evenly_spaced, top_left_to_centres


@given(st.integers(0, 5000), st.integers(0, 600))
def test_evenly_spaced_keeps_at_most_k_distinct_sorted_indices_spanning_the_range(n, k):
    picks = evenly_spaced(n, k)
    assert picks.dtype == np.int64
    assert len(picks) == min(n, k)  # distinct: the spacing is at least one when k <= n
    assert np.all(np.diff(picks) > 0)
    if len(picks):
        assert picks[0] == 0 and 0 <= picks[-1] <= n - 1
        if k >= 2 and n >= 2:
            assert picks[-1] == n - 1  # from the first item to the last


@given(st.integers(1, 5000), st.integers(2, 600))
def test_evenly_spaced_gaps_differ_by_at_most_one(n, k):
    gaps = np.diff(evenly_spaced(n, k))
    if len(gaps):
        assert gaps.max() - gaps.min() <= 1


def test_evenly_spaced_is_everything_when_few_and_the_same_every_call():
    np.testing.assert_array_equal(evenly_spaced(5, 10), np.arange(5))
    np.testing.assert_array_equal(evenly_spaced(1000, 7), evenly_spaced(1000, 7))


def test_centres_and_top_left_corners_round_trip():
    top_left = np.array([[0, 0], [256, 512]])
    centres = top_left_to_centres(top_left, 256)
    np.testing.assert_array_equal(centres, [[128, 128], [384, 640]])
    np.testing.assert_array_equal(centres_to_top_left(centres, 256), top_left)
