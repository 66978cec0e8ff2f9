"""Tests of the documentation: its code blocks run, its pictures are the demo's."""
