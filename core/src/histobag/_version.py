"""The installed version of histobag."""

__version__ = "0.3.0"
"""The installed version of histobag (PEP 440)."""
