"""histobag-gpl: CTransPath and RetCCL, whose official weights are released under GPL-3.0."""

__version__ = "0.1.0"
