"""Whether a folder of bags is what a slide encoder was trained on.

A slide encoder given features of another tile encoder, or of tiles of another size or
magnification, still returns an embedding of the right shape; it is just meaningless. So bags
are checked against the encoder's :class:`histobag.specs.SlideInput` before any slide is
embedded, and refused with a message naming what was found and what is needed. ``force``
lets an expert go on; the mismatches are then recorded with the embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from histobag.errors import HistobagError, IncompatibleBagsError
from histobag.extractors.registry import extractor_info
from histobag.slide.magnification import tile_microns
from histobag.specs import SlideInput

#: Relative difference of tile side in µm still taken as the same magnification (slides
#: scanned at 0.2520 µm/px are "40x" as much as those at 0.25 µm/px).
MAGNIFICATION_TOLERANCE = 0.10


@dataclass(frozen=True)
class BagCheck:
    """The outcome of checking bags against a slide encoder's needs.

    Attributes:
        mismatches: One sentence per requirement the bags miss (empty: they fit).
        forced: Whether the caller chose to go on despite ``mismatches``.
        found: What the bags are (tile encoder, tile size, magnification), for the record.
    """

    mismatches: tuple[str, ...] = ()
    forced: bool = False
    found: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, recorded in ``slide_embeddings_config.json``."""
        return {"mismatches": list(self.mismatches), "forced": self.forced, "found": self.found}


def canonical_name(name: str) -> str:
    """The registered name of an extractor given by name or alias (unknown names unchanged)."""
    try:
        return extractor_info(name).name
    except HistobagError:
        return name


def magnification_of(tile_px: int, tile_um: float | str) -> float:
    """Objective magnification of tiles of ``tile_px`` pixels covering ``tile_um`` (µm, or a
    magnification string such as ``"20x"``): 10x is 1 µm/px."""
    return 10.0 * tile_px / tile_microns(tile_px, tile_um)


def mismatches(
    needs: SlideInput, tile_encoder: str, tile_px: int, tile_um: float | str
) -> list[str]:
    """Sentences naming each requirement of ``needs`` that bags of ``tile_encoder`` features,
    ``tile_px`` pixel tiles over ``tile_um``, miss."""
    out = []
    accepted = {canonical_name(name) for name in needs.tile_encoders}
    if canonical_name(tile_encoder) not in accepted:
        out.append(
            f"the bags hold {tile_encoder} features, but it needs "
            f"{' or '.join(needs.tile_encoders)} features"
        )
    if needs.tile_px is not None and tile_px != needs.tile_px:
        out.append(f"the bags' tiles are {tile_px} px, but it needs {needs.tile_px} px")
    if needs.magnification is not None:
        found = magnification_of(tile_px, tile_um)
        if abs(found / needs.magnification - 1.0) > MAGNIFICATION_TOLERANCE:
            microns = tile_microns(tile_px, tile_um)
            need = f"{needs.magnification:g}x"
            if needs.tile_um is not None:
                need += f" ({needs.tile_um:g} µm for {needs.tile_px} px)"
            out.append(
                f"the bags' tiles are at {found:.3g}x ({microns:g} µm for {tile_px} px), but "
                f"it needs {need}"
            )
    return out


def check_bags(
    encoder_name: str, needs: SlideInput | None, bags_config: dict[str, Any], *, force: bool = False
) -> BagCheck:
    """Check a bags folder's configuration against a slide encoder's needs.

    Args:
        encoder_name: The slide encoder, for messages.
        needs: What it needs (None: anything goes).
        bags_config: The folder's ``bags_config.json``.
        force: Go on despite mismatches (they are returned, to be recorded).

    Raises:
        IncompatibleBagsError: The bags do not fit and ``force`` is false; the message names
            each mismatch and how to get fitting bags.
    """
    extractor = bags_config.get("extractor") or {}
    tile_encoder = str(extractor.get("extractor", "?"))
    tile_px, tile_um = bags_config.get("tile_px"), bags_config.get("tile_um")
    found = {"tile_encoder": tile_encoder, "tile_px": tile_px, "tile_um": tile_um}
    if needs is None:
        return BagCheck(found=found)
    problems = mismatches(needs, tile_encoder, int(tile_px), tile_um)
    if problems and not force:
        raise IncompatibleBagsError(
            f"{encoder_name} cannot use these bags: {'; '.join(problems)}. {encoder_name} was "
            f"trained on {needs.describe()}. Make fitting bags with `histobag extract "
            f"--slide-encoder {encoder_name} --slides DIR --outdir OUT` (it makes the tile "
            "bags it needs), or pass force=True (--force) if you know better; forcing is "
            "recorded with the embeddings."
        )
    return BagCheck(tuple(problems), bool(problems) and force, found)
