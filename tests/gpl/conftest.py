"""Fixtures of the histobag-gpl tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch):
    """No test may reach the Hugging Face Hub: a download fails fast instead of hanging.

    huggingface_hub reads its environment once, at import, into ``constants``; patch both.
    """
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
