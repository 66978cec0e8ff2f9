"""Shared fixtures: a synthetic three-level Aperio slide and the real vendor test files."""

from __future__ import annotations

from pathlib import Path

import pytest

from histobag.slide.samples import sample_slide

REPO_ROOT = Path(__file__).resolve().parents[2]
VENDOR_DIR = REPO_ROOT / "tests" / "fixtures" / "openslide-python"


@pytest.fixture(scope="session")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4096 x 3072 sample slide at 0.5 mpp with levels downsampled 1, 4 and 16."""
    return sample_slide(tmp_path_factory.mktemp("slides") / "sample.svs", seed=0)


@pytest.fixture(scope="session")
def vendor_dir() -> Path:
    """The real slide files published with openslide-python (tests/fixtures/openslide-python)."""
    if not (VENDOR_DIR / "small.svs").is_file():
        pytest.fail(
            f"Vendor slide fixtures are missing: expected {VENDOR_DIR}/small.svs, which is "
            "committed in the repository (tests/fixtures/openslide-python/); restore it with "
            "`git checkout -- tests/fixtures`."
        )
    return VENDOR_DIR
