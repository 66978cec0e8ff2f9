"""Fixtures shared by the tests of all four distributions."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import histology_tiles


@pytest.fixture(scope="session")
def tiles224() -> np.ndarray:
    """Four real histology tiles, 224 px."""
    return histology_tiles(4, 224)
