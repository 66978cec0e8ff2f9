"""The installed version of histobag."""

__version__ = "0.2.0"
