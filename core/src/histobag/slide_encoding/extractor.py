""":class:`SlideEncoderExtractor`: a slide's tile features (and coordinates) in, one embedding out.

Every slide encoder (kind ``"tile_features"``) is one of these, or a subclass. Its model is
called as ``model(features (1, N, D), coords (1, N, 2), extent_px) -> (1, E)``: float32
features, int64 level-0 top-left ``(x, y)`` corners of the tiles and the level-0 side of one
tile (what TRIDENT calls ``patch_size_level0``). A model that needs something else overrides
:meth:`SlideEncoderExtractor.encode`.

It takes tile features in any of four ways: ``extractor(features, coords)``,
:meth:`~SlideEncoderExtractor.embed_bag` (one bag's arrays, either coordinate convention),
:meth:`~SlideEncoderExtractor.generate_and_save` (a bags folder, checked against what the
model was trained on) and ``extractor(wsi)`` (runs the tile encoder it needs first).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from histobag.engine import CollectSink, Job, run
from histobag.errors import ExtractorArgumentError, HistobagError, IncompatibleBagsError
from histobag.extraction import is_wsi
from histobag.extractors.base import FeatureExtractor
from histobag.extractors.registry import build_feature_extractor
from histobag.geometry import centres_to_top_left, grid_pitch
from histobag.slide_encoding.pipeline import SlideEmbeddingsReport, generate_slide_embeddings
from histobag.slide_encoding.requirements import mismatches
from histobag.specs import SlideInput
from histobag.tile_readers import ExistingWSI

__all__ = ["SlideEncoderExtractor"]


def as_tensor(values: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A tensor stays where it is (a tile encoder's output may be on the GPU); anything else
    becomes a CPU tensor."""
    if isinstance(values, torch.Tensor):
        return values.detach() if dtype is None else values.detach().to(dtype)
    return torch.as_tensor(np.asarray(values), dtype=dtype)


def tensor_grid_pitch(coords: torch.Tensor) -> int | None:
    """:func:`histobag.geometry.grid_pitch` of a coordinate tensor, computed where it lives
    (a tile encoder's coordinates may be on the GPU)."""
    xy = coords.reshape(-1, 2)
    if not len(xy):
        return None
    values = (xy.round() if xy.is_floating_point() else xy).long()
    offsets = (values - values.min(dim=0).values).flatten()
    while offsets.numel() > 1:  # pairwise gcd: log2(N) steps
        if offsets.numel() % 2:
            offsets = torch.cat([offsets, offsets.new_zeros(1)])
        offsets = torch.gcd(offsets[0::2], offsets[1::2])
    return int(offsets[0]) or None


class SlideEncoderExtractor(FeatureExtractor):
    """A slide encoder: ``extractor(features (N, D), coords (N, 2)) -> (E,)`` float32.

    Coordinates are level-0 top-left ``(x, y)`` corners of the tiles, as bags store them
    (``pt`` bags store centres: use :meth:`embed_bag`, which converts). ``extent_px`` is the
    level-0 side of one tile; by default the grid pitch of the coordinates.
    """

    _tile_extractor: FeatureExtractor | None = None

    @property
    def slide_input(self) -> SlideInput | None:
        """The tile encoder(s) and tile geometry this model was trained on (None: any)."""
        spec = self.spec
        if spec.slide_input is not None:
            return spec.slide_input
        return SlideInput((spec.tile_encoder,)) if spec.tile_encoder else None

    @property
    def in_features(self) -> int | None:
        """Width of the tile features it takes (None: any)."""
        value = self.extra.get("in_features")
        return int(value) if value is not None else None

    def forward_batch(self, batch: Any) -> torch.Tensor:
        """Refuses images: a slide encoder takes tile features."""
        needs = self.slide_input
        made_by = f" ({needs.describe()})" if needs else ""
        raise ExtractorArgumentError(
            f"{self.tag} encodes a slide from its tile FEATURES{made_by}, not from images: call "
            "it as extractor(features (N, D), coords (N, 2)), on a histobag.WSI, or use "
            "extractor.generate_and_save(bags_dir, outdir) on a bags folder."
        )

    # -- tile features in ----------------------------------------------------------------------
    def encode(self, features: torch.Tensor, coords: torch.Tensor, extent_px: int) -> torch.Tensor:
        """The embedding (E,) of one slide: ``features`` (N, D) float32 and ``coords`` (N, 2)
        int64 on the model's device. Runs inside inference mode and :meth:`autocast`;
        override for a model that is not called as ``model(features, coords, extent_px)``."""
        return self.model(features[None], coords[None], extent_px)[0]

    def __call__(self, obj: Any, coords: Any = None, **kwargs: Any) -> Any:
        """The embedding (E,) float32 on the CPU of one slide.

        Args:
            obj: Tile features (N, D) (a tensor on any device, or an array), or a
                :class:`histobag.WSI` (see :meth:`embed_wsi`, which takes the keywords).
            coords: Level-0 top-left ``(x, y)`` corners (N, 2) of the tiles.
            **kwargs: ``extent_px``, the level-0 tile side (default: the coordinates' grid
                pitch); for a WSI, :meth:`embed_wsi`'s keywords.
        """
        if is_wsi(obj):
            if coords is not None:
                raise ExtractorArgumentError("A WSI brings its own coordinates: pass no coords.")
            return self.embed_wsi(obj, **kwargs)
        extent_px = kwargs.pop("extent_px", None)
        if coords is None or kwargs:
            self.forward_batch(obj)  # raises: images or a TFRecord were given
        return self._embed(obj, coords, extent_px)

    def _embed(self, features: Any, coords: Any, extent_px: int | None) -> torch.Tensor:
        feats = as_tensor(features, torch.float32)
        xy = as_tensor(coords)
        expected = self.in_features
        if feats.ndim != 2 or (expected is not None and feats.shape[1] != expected):
            width = expected if expected is not None else "D"
            raise ExtractorArgumentError(
                f"{self.tag} needs tile features of shape (N, {width}), got "
                f"{tuple(feats.shape)}"
                + (f" ({self.slide_input.describe()})" if self.slide_input else "")
            )
        if not len(feats):
            raise ExtractorArgumentError(f"{self.tag}: no tiles to encode (0 feature rows)")
        if tuple(xy.shape) != (feats.shape[0], 2):
            raise ExtractorArgumentError(
                f"coords must be (N, 2) = ({feats.shape[0]}, 2), got {tuple(xy.shape)}"
            )
        if extent_px is None:
            extent_px = tensor_grid_pitch(xy) or 1
        if xy.is_floating_point():
            xy = xy.round()
        xy = xy.long()
        with torch.inference_mode(), self.autocast():
            out = self.encode(feats.to(self.device), xy.to(self.device), int(extent_px))
        return out.float().cpu()

    def embed_bag(
        self,
        features: Any,
        coords: Any,
        convention: str = "top_left",
        extent_px: int | None = None,
    ) -> torch.Tensor:
        """The embedding of one bag, whose coordinates are level-0 ``"top_left"`` corners or
        ``"centre"`` points (``pt`` bags) of its tiles; ``extent_px`` (the level-0 tile side)
        defaults to the coordinates' grid pitch."""
        xy = np.asarray(coords)
        extent = extent_px or grid_pitch(xy) or 1
        if convention == "centre":
            xy = centres_to_top_left(xy, extent)
        elif convention != "top_left":
            raise ExtractorArgumentError(f"Unknown coordinate convention {convention!r}")
        return self._embed(features, xy, extent)

    # -- a bags folder in -----------------------------------------------------------------------
    def generate_and_save(
        self,
        bags_dir: str | os.PathLike[str],
        outdir: str | os.PathLike[str],
        **kwargs: Any,
    ) -> SlideEmbeddingsReport:
        """Embed every bag of ``bags_dir`` into ``outdir``: see
        :func:`histobag.slide_encoding.generate_slide_embeddings` (its keywords too)."""
        return generate_slide_embeddings(self, bags_dir, outdir, **kwargs)

    # -- a slide in -----------------------------------------------------------------------------
    @property
    def tile_extractor(self) -> FeatureExtractor:
        """The tile encoder run by :meth:`embed_wsi`: the first of :attr:`slide_input`'s,
        built with its official weights on first use (replace it with
        :meth:`use_tile_extractor`)."""
        if self._tile_extractor is None:
            needs = self.slide_input
            if needs is None:
                raise ExtractorArgumentError(
                    f"{self.tag} names no tile encoder: give one with use_tile_extractor()."
                )
            self._tile_extractor = build_feature_extractor(
                needs.tile_encoders[0],
                device=self.device,
                mixed_precision=self.mixed_precision,
                precision=self.requested_precision,
            )
        return self._tile_extractor

    def use_tile_extractor(self, extractor: FeatureExtractor, *, force: bool = False) -> None:
        """Run ``extractor`` (e.g. built with local weights) as the tile encoder of
        :meth:`embed_wsi`; one this model was not trained on is refused unless ``force``."""
        needs = self.slide_input
        if needs is not None and not force:
            names = {needs.tile_encoders[0], *needs.tile_encoders}
            if extractor.tag not in names:
                raise IncompatibleBagsError(
                    f"{self.tag} was trained on {needs.describe()}, not on {extractor.tag} "
                    "features; pass force=True if you know better."
                )
        self._tile_extractor = extractor

    def embed_wsi(self, wsi: Any, *, force: bool = False, **engine_kwargs: Any) -> torch.Tensor:
        """The embedding of a :class:`histobag.WSI`: its tiles through :attr:`tile_extractor`
        (``batch_size``, ``num_workers``, ``normalizer``, ``tile_transforms`` go to the
        engine), then this model.

        Raises:
            IncompatibleBagsError: The slide's tiles are not the size or magnification this
                model was trained on (unless ``force``).
            HistobagError: The slide has no tissue tiles.
        """
        tiles = self.tile_extractor
        needs = self.slide_input
        if needs is not None and not force:
            problems = mismatches(needs, tiles.tag, int(wsi.tile_px), wsi.tile_um)
            if problems:
                hint = " Pass force=True if you know better."
                if needs.tile_px and needs.magnification:
                    hint = (
                        f" Open it as WSI(path, tile_px={needs.tile_px}, "
                        f"tile_um='{needs.magnification:g}x'), or pass force=True."
                    )
                found = "; ".join(p.replace("the bags'", "the slide's") for p in problems)
                raise IncompatibleBagsError(f"{self.tag} cannot use this slide: {found}.{hint}")
        features, top_left, extent_px = tile_features_of(tiles, wsi, **engine_kwargs)
        if not len(features):
            raise HistobagError(f"No tissue tiles in {wsi}: nothing to encode.")
        return self._embed(features, top_left, extent_px)


def tile_features_of(
    tile_extractor: FeatureExtractor, wsi: Any, **engine_kwargs: Any
) -> tuple[np.ndarray, np.ndarray, int]:
    """(features (N, F), level-0 top-left corners (N, 2), level-0 tile side) of a WSI."""
    sink = CollectSink()
    run(tile_extractor, [Job("wsi", ExistingWSI(wsi))], sink, **engine_kwargs)
    result = sink.single("wsi")
    return result.features, result.top_left, int(result.geometry.extent_px)
