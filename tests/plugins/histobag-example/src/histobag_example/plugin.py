"""Hooks of the example pack; imports only histobag's specs."""

from __future__ import annotations

from histobag import ExtractorSpec, Preprocessing, TransformSpec, hookimpl


@hookimpl
def histobag_extractors() -> list[ExtractorSpec]:
    """One extractor, without weights."""
    return [
        ExtractorSpec(
            name="example-colorstats",
            factory="histobag_example.model:build_colorstats",
            license="MIT",
            license_url="https://opensource.org/license/mit",
            citation="@misc{example, title={Example pack}}",
            num_features=6,
            input_size=64,
            preprocessing=Preprocessing(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
            description="Per-channel mean and standard deviation of the tile",
            tags=("example",),
            weights_required=False,
        )
    ]


@hookimpl
def histobag_transforms() -> list[TransformSpec]:
    """Three tile transforms (their factories take JSON-able keyword arguments)."""
    return [
        TransformSpec(
            name="example-invert",
            factory="histobag_example.transforms:build_invert",
            kind="tile_transform",
            description="Invert channels (channels=[0, 1, 2] by default)",
        ),
        TransformSpec(
            name="example-rot90",
            factory="histobag_example.transforms:build_rot90",
            kind="tile_transform",
            description="Rotate each tile by k quarter turns (k=1 by default)",
        ),
        TransformSpec(
            name="example-crop",
            factory="histobag_example.transforms:build_crop",
            kind="tile_transform",
            description="Keep a height x width window at (top, left) of each tile",
        ),
    ]
