"""The installed version of histobag."""

__version__ = "0.1.0"
