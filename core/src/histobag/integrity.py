"""Deprecated alias of :mod:`histobag.bags.manifest` (renamed in 0.3, removed in 0.4)."""

from histobag._deprecated import warn_moved
from histobag.bags.manifest import VerifyReport, read_manifest, verify_bags

__all__ = ["VerifyReport", "read_manifest", "verify_bags"]

warn_moved("histobag.integrity", "histobag.bags.manifest")
