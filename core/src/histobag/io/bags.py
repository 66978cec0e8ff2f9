"""Deprecated alias (renamed in 0.3, removed in 0.4): bag writers are in
:mod:`histobag.io.bag_writers`, :func:`read_bag` and :func:`rebuild_extractor` in
:mod:`histobag.bags.read`."""

from histobag._deprecated import warn_moved
from histobag.bags.read import read_bag, rebuild_extractor
from histobag.io.bag_writers import (
    BagWriter,
    H5BagWriter,
    PtBagWriter,
    SafetensorsBagWriter,
    get_writer,
)

__all__ = [
    "BagWriter",
    "H5BagWriter",
    "PtBagWriter",
    "SafetensorsBagWriter",
    "get_writer",
    "read_bag",
    "rebuild_extractor",
]

warn_moved("histobag.io.bags", "histobag.io.bag_writers and histobag.bags.read")
