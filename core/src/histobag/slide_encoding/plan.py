"""What ``histobag extract --slide-encoder NAME`` runs: which tile encoder, at which tile
geometry, into which folders. Read from the slide encoder's spec only (no model is built), so
a wrong option fails before any slide is opened."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from histobag.errors import ArgumentError, ExtractorArgumentError, IncompatibleBagsError
from histobag.extractors.registry import extractor_info
from histobag.naming import safe_name
from histobag.slide_encoding.requirements import mismatches

#: Sub-folders of ``--outdir``: tile bags per tile encoder, embeddings per slide encoder.
BAGS_FOLDER = "bags"
EMBEDDINGS_FOLDER = "slide_embeddings"


@dataclass(frozen=True)
class SlideRunPlan:
    """A slides → tile bags → slide embeddings run.

    Attributes:
        slide_encoder: Registered name of the slide encoder.
        tile_encoder: Registered name of the tile encoder that makes its bags.
        tile_px: Tile side in pixels.
        tile_um: Tile side in µm, or a magnification such as ``"20x"``.
        bags_dir: Where the tile bags go (reused when they match).
        embeddings_dir: Where the slide embeddings go.
        forced: Mismatches with what the slide encoder was trained on, accepted by ``force``.
    """

    slide_encoder: str
    tile_encoder: str
    tile_px: int
    tile_um: float | str
    bags_dir: Path
    embeddings_dir: Path
    forced: tuple[str, ...] = field(default=())


def plan_slide_run(
    slide_encoder: str,
    outdir: str | os.PathLike[str],
    *,
    tile_encoder: str | None = None,
    tile_px: int | None = None,
    tile_um: float | str | None = None,
    force: bool = False,
) -> SlideRunPlan:
    """Plan a run of ``slide_encoder`` on slides into ``outdir``.

    The tile encoder and geometry default to what the slide encoder was trained on; options
    that differ from it are refused unless ``force``.

    Raises:
        ExtractorArgumentError: ``slide_encoder`` is a tile encoder.
        ArgumentError: No tile geometry is given and the model does not fix one.
        IncompatibleBagsError: The options contradict the model's needs (and not ``force``).
    """
    spec = extractor_info(slide_encoder)
    if spec.kind != "tile_features":
        raise ExtractorArgumentError(
            f"{spec.name} is a tile encoder: give it as --extractor (a slide encoder, "
            "kind tile_features, goes to --slide-encoder; see `histobag list --kind "
            "tile_features`)."
        )
    needs = spec.slide_input
    tile_encoder = tile_encoder or (needs.tile_encoders[0] if needs else spec.tile_encoder)
    if tile_encoder is None:
        raise ArgumentError(f"{spec.name} names no tile encoder: give one with --extractor.")
    tile_encoder = extractor_info(tile_encoder).name
    if tile_px is None and needs is not None:
        tile_px = needs.tile_px
    if tile_um is None and needs is not None and needs.magnification is not None:
        tile_um = f"{needs.magnification:g}x"
    if tile_px is None or tile_um is None:
        raise ArgumentError(
            f"{spec.name} takes tiles of any size: give --tile-px and --tile-um (e.g. "
            "--tile-px 256 --tile-um 20x)."
        )
    problems = mismatches(needs, tile_encoder, tile_px, tile_um) if needs is not None else []
    if problems and not force:
        raise IncompatibleBagsError(
            f"{spec.name} cannot use what was asked: {'; '.join(problems)}. Leave out "
            "--extractor, --tile-px and --tile-um to get what it was trained on "
            f"({needs.describe() if needs else ''}), or add --force if you know better."
        )
    outdir = Path(outdir)
    return SlideRunPlan(
        slide_encoder=spec.name,
        tile_encoder=tile_encoder,
        tile_px=int(tile_px),
        tile_um=tile_um,
        bags_dir=outdir / BAGS_FOLDER / safe_name(tile_encoder),
        embeddings_dir=outdir / EMBEDDINGS_FOLDER / safe_name(spec.name),
        forced=tuple(problems),
    )
