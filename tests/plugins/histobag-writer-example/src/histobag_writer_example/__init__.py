"""Example third-party histobag pack: an ``npz`` feature-bag writer."""
