"""Hooks of the example pack; imports only histobag's specs."""

from __future__ import annotations

from histobag import ExtractorSpec, Preprocessing, hookimpl


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
