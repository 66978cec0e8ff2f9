"""Example third-party histobag pack: a reader for ``.npyslide`` files."""
