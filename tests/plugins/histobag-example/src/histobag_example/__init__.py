"""Example third-party histobag pack: a tiny extractor of colour statistics and two tile
transforms."""
