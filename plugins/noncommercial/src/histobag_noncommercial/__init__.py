"""histobag-noncommercial: models whose weights are licensed for non-commercial use only.

The code of this pack is Apache-2.0; each model's weights carry their own terms, shown by
``histobag info NAME``. Using these weights commercially is not permitted.
"""

__version__ = "0.1.0"
