"""Prov-GigaPath slide encoder: a LongNet ViT over tile features and their positions.

The model (Xu et al., Nature 2024) turns the 1536-d features of a slide's tiles (from the
``gigapath.tile`` encoder) and the tiles' coordinates into one 768-d slide embedding:

1. ``patch_embed.proj``: a linear map 1536 → 768 of each tile feature;
2. a fixed 2-D sin-cos position table of ``1000 x 1000 + 1`` rows, indexed from the tile's cell
   ``(floor(x / 256), floor(y / 256))`` as ``x_cell * 1000 + y_cell + 1`` (row 0 is the class
   token's); the first half of each row encodes the *y* cell, the second half the *x* cell;
3. a class token, 12 pre-LN LongNet layers (dilated attention, :mod:`.longnet`), and norms.

Which output (``layer``/``pooling`` of :func:`build_slide_encoder`):

- default ``layer=-1, pooling="cls"``: what the official pipeline
  (``run_inference_with_slide_encoder``) reports as ``last_layer_embed``: the class token of
  ``norm(h_12)``, *without* the encoder's output ``layer_norm``;
- ``layer=i`` (0..12): the pipeline's ``layer_{i}_embed`` (``h_0`` is the encoder input);
- ``layer="final"``: ``LongNetViT.forward``'s default output ``norm(encoder.layer_norm(h_12))``;
- ``pooling="mean"``: the same but ``norm(mean of the tile tokens)`` (the official
  ``global_pool=True``).

Coordinates. The official code takes level-0 ``(x, y)`` top-left corners of 256 px tiles (the
model was trained on 256 px tiles at 0.5 µm/px) and uses only ``floor(coord / 256)``, the tile's
cell on the slide grid. Level-0 corners of tiles (any size) are converted to that grid
(:func:`to_model_grid`): a tile's cell is ``round(top_left / pitch)``, where ``pitch`` is
the step of the tile grid (:func:`histobag.geometry.grid_pitch`, the gcd of the coordinate
offsets: the tile side unless tiles overlap), and the model sees ``cell * 256``. Bags at
another tile size or magnification than 256 px at 20x are refused unless forced. Only the
grid origin is rounded, so no two tiles share a cell.
Tile centres (``pt`` bags) are first turned into top-left corners. Cells must lie in
``0 .. 999`` on both axes (the table's size); the official code does not check this (a y cell
of 1000 silently aliases into the next column), here it is an error.

Use :func:`build_slide_encoder` (or ``histobag.build_feature_extractor("gigapath.slide")``) to
get a :class:`GigaPathSlideExtractor`; :func:`build_gigapath` (registered as ``gigapath``) runs
tile and slide encoders end to end on a WSI.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from histobag import ExtractorSpec, build_feature_extractor
from histobag.errors import ExtractorArgumentError
from histobag.extractors.base import FeatureExtractor, ModelBuild
from histobag.extractors.preprocess import PreprocessingOverrides
from histobag.slide_encoding import SlideEncoderExtractor
from histobag.slide_encoding.extractor import as_tensor, tensor_grid_pitch
from histobag_noncommercial.longnet import LongNetEncoder

if TYPE_CHECKING:
    from histobag.specs import Preprocessing


def segment_lengths(max_wsi_size: int, tile_size: int, branches: int) -> tuple[int, ...]:
    """Official segment lengths: ``int(2 ** linspace(10, log2(cells ** 2), branches))``."""
    start, stop = 10.0, float(int(math.log2((max_wsi_size // tile_size) ** 2)))
    if branches == 1:
        return (int(2**start),)
    step = (stop - start) / (branches - 1)
    exps = [start + i * step for i in range(branches - 1)] + [stop]
    return tuple(int(2**e) for e in exps)


@dataclass(frozen=True)
class SlideEncoderConfig:
    """Architecture of the slide encoder (defaults: ``gigapath_slide_enc12l768d``)."""

    in_chans: int = 1536
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 16
    mlp_ratio: float = 4.0
    slide_ngrids: int = 1000
    tile_size: int = 256
    max_wsi_size: int = 262144
    dilated_ratio: tuple[int, ...] = (1, 2, 4, 8, 16)
    layernorm_eps: float = 1e-5
    norm_eps: float = 1e-6
    segment_length: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.segment_length:
            lengths = segment_lengths(self.max_wsi_size, self.tile_size, len(self.dilated_ratio))
            object.__setattr__(self, "segment_length", lengths)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        out = asdict(self)
        out["dilated_ratio"], out["segment_length"] = (
            list(self.dilated_ratio),
            list(self.segment_length),
        )
        return out


#: The published model.
FULL = SlideEncoderConfig()


def sincos_half_table(n: int, dim: int) -> torch.Tensor:
    """(n, dim) float32: ``[sin(p * w), cos(p * w)]`` for p = 0..n-1, w_j = 10000^(-2j/dim),
    computed in float64 like the official table."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = torch.arange(n, dtype=torch.float64)[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


class SlideEncoder(nn.Module):
    """The LongNet ViT of Prov-GigaPath with the official parameter names.

    The (1, 1000001, D) position table of the official code is never built: its rows are
    the concatenation of two small per-axis tables, gathered per tile.
    """

    def __init__(self, config: SlideEncoderConfig = FULL) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        if dim % 4:
            raise ValueError(f"embed_dim must be divisible by 4, not {dim}")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Linear(config.in_chans, dim)
        self.encoder = LongNetEncoder(
            dim,
            config.depth,
            config.num_heads,
            int(dim * config.mlp_ratio),
            config.segment_length,
            config.dilated_ratio,
            eps=config.layernorm_eps,
        )
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)
        half = sincos_half_table(config.slide_ngrids, dim // 2)
        self.register_buffer("axis_table", half, persistent=False)

    def positions(self, coords: torch.Tensor) -> torch.Tensor:
        """Official ``coords_to_pos``: (..., 2) ``(x, y)`` → row index ``x_cell * ngrids +
        y_cell + 1`` (int64), with ``cell = floor(coord / tile_size)`` in the input's dtype."""
        size = self.config.tile_size
        if coords.is_floating_point():
            cells = torch.floor(coords / size).long()
        else:
            cells = torch.div(coords, size, rounding_mode="floor").long()
        return cells[..., 0] * self.config.slide_ngrids + cells[..., 1] + 1

    def position_rows(self, index: torch.Tensor) -> torch.Tensor:
        """Rows of the official sin-cos table (row 0 = zeros) for int64 ``index`` (...)."""
        n = self.config.slide_ngrids
        if index.numel() and (int(index.min()) < 0 or int(index.max()) > n * n):
            raise ExtractorArgumentError(
                f"Tile positions fall outside the {n} x {n} grid of {self.config.tile_size} px "
                "cells the slide encoder was trained on."
            )
        k = (index - 1).clamp(min=0)
        rows = torch.cat([self.axis_table[k % n], self.axis_table[k // n]], dim=-1)
        return rows * (index > 0).unsqueeze(-1).to(rows.dtype)

    def embed(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Encoder input ``h_0`` (B, L+1, D): class token, then projected tiles + positions."""
        x = self.patch_embed.proj(features)
        x = x + self.position_rows(self.positions(coords)).to(x.dtype)
        cls = self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)  # + row 0, which is zero
        return torch.cat([cls, x], dim=1)

    def hidden_states(self, features: torch.Tensor, coords: torch.Tensor) -> list[torch.Tensor]:
        """``[h_0, h_1, ..., h_depth]`` (B, L+1, D) each (for inspection; keeps them all)."""
        states = [self.embed(features, coords)]
        for layer in self.encoder.layers:
            states.append(layer(states[-1]))
        return states

    def forward(
        self,
        features: torch.Tensor,
        coords: torch.Tensor,
        *,
        layer: int | str = -1,
        pooling: str = "cls",
    ) -> torch.Tensor:
        """Slide embedding (B, D).

        Args:
            features: Tile features (B, L, in_chans).
            coords: Level-0 ``(x, y)`` top-left corners (B, L, 2) on the 256 px grid.
            layer: -1 (official pipeline, default) or 0..depth: ``norm(h_layer)``;
                ``"final"``: ``norm(encoder.layer_norm(h_depth))``.
            pooling: ``"cls"`` (class token) or ``"mean"`` (mean of the tile tokens).
        """
        depth = self.config.depth
        num_layers = depth if layer == "final" else check_layer(layer, depth) % (depth + 1)
        x = self.encoder(self.embed(features, coords), num_layers)
        if layer == "final":
            x = self.encoder.layer_norm(x)
        if pooling == "mean":
            return self.norm(x[:, 1:].mean(dim=1))
        if pooling == "cls":
            return self.norm(x[:, 0])
        raise ExtractorArgumentError(f"pooling must be 'cls' or 'mean', not {pooling!r}")


def host_array(values: Any) -> np.ndarray:
    """``values`` (coordinates: a few numbers per tile) as a numpy array; a tensor is
    copied from its device first."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def check_layer(layer: Any, depth: int) -> int:
    """Validate an all-layer index (-depth-1 .. depth) and return it."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not -depth - 1 <= layer <= depth:
        raise ExtractorArgumentError(
            f"layer must be an int in {-depth - 1}..{depth} or 'final', not {layer!r}"
        )
    return layer


# ------------------------------------------------------------------------------------------
# Coordinates
# ------------------------------------------------------------------------------------------


def to_model_grid(
    coords: np.ndarray | torch.Tensor,
    *,
    pitch_px: int,
    convention: str = "top_left",
    extent_px: int | None = None,
    tile_size: int = 256,
    ngrids: int = 1000,
) -> np.ndarray:
    """Level-0 tile coordinates of any tile size → the model's coordinates (``cell * 256``).

    A tile's cell is its position on the tile grid: ``round(top_left / pitch_px)``. Offsets
    between tiles are whole numbers of cells, so rounding is done once, for the grid origin;
    no two grid positions can share a cell.

    Args:
        coords: (N, 2) ``(x, y)`` level-0 coordinates (an array, or a tensor on any device).
        pitch_px: Level-0 step of the tile grid (the tile side; the stride for overlapping
            tiles).
        convention: ``"top_left"`` or ``"centre"`` (slideflow ``pt`` bags).
        extent_px: Level-0 tile side, to turn centres into corners (default ``pitch_px``).
        tile_size: The model's tile size (256).
        ngrids: Cells per axis the model's table has (1000).

    Raises:
        ExtractorArgumentError: A cell falls outside ``0 .. ngrids - 1``.
    """
    coords = host_array(coords).astype(np.float64).reshape(-1, 2)
    if convention == "centre":
        coords = coords - (extent_px or pitch_px) // 2
    elif convention != "top_left":
        raise ExtractorArgumentError(f"Unknown coordinate convention {convention!r}")
    if not len(coords):
        return np.zeros((0, 2), dtype=np.int64)
    origin = coords.min(axis=0)
    cells = np.floor(origin / pitch_px + 0.5) + np.rint((coords - origin) / pitch_px)
    cells = cells.astype(np.int64)
    if cells.min() < 0 or cells.max() >= ngrids:
        raise ExtractorArgumentError(
            f"Tiles span cells {cells.min(axis=0).tolist()}..{cells.max(axis=0).tolist()} of "
            f"{pitch_px} px, beyond the {ngrids} x {ngrids} grid the GigaPath slide encoder "
            "was trained on (slides up to 256,000 px at 0.5 µm/px with 256 px tiles). Use "
            "larger tiles or a region of the slide."
        )
    return cells * tile_size


# ------------------------------------------------------------------------------------------
# Extractor
# ------------------------------------------------------------------------------------------


class GigaPathSlideExtractor(SlideEncoderExtractor):
    """The GigaPath slide encoder: ``extractor(features (N, 1536), coords (N, 2)) -> (768,)``.

    Coordinates are level-0 top-left corners of tiles of any size, as bags store them; they
    are converted to the model's 256 px grid (see the module docstring).
    :meth:`embed_model_grid` takes coordinates already on that grid, as the official code does.
    """

    @property
    def config(self) -> SlideEncoderConfig:
        """The architecture."""
        return self.model.config

    def encode(self, features: torch.Tensor, coords: torch.Tensor, extent_px: int) -> torch.Tensor:
        """Level-0 top-left corners → the model's grid (as :func:`to_model_grid`, on the
        coordinates' device; pitch: the grid's step, the stride for overlapping tiles), then
        the model."""
        pitch = tensor_grid_pitch(coords) or extent_px
        xy = coords.double()
        origin = xy.min(dim=0).values
        cells = (torch.floor(origin / pitch + 0.5) + torch.round((xy - origin) / pitch)).long()
        n = self.config.slide_ngrids
        if int(cells.min()) < 0 or int(cells.max()) >= n:
            raise ExtractorArgumentError(
                f"Tiles span {int(cells.max()) + 1} cells of {pitch} px, beyond the {n} x {n} "
                "grid the GigaPath slide encoder was trained on (slides up to 256,000 px at "
                "0.5 µm/px with 256 px tiles). Use larger tiles or a region of the slide."
            )
        return self._forward(features, cells * self.config.tile_size)

    def _forward(self, features: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return self.model(
            features[None], grid[None], layer=self.extra["layer"], pooling=self.extra["pooling"]
        )[0]

    def embed_model_grid(self, features: Any, coords: Any) -> torch.Tensor:
        """Embedding (768,) float32 on the CPU from coordinates on the model's own grid
        (level-0 corners of 256 px tiles at 0.5 µm/px; only ``floor(coord / 256)`` is used),
        exactly as the official ``LongNetViT`` takes them."""
        feats = as_tensor(features, dtype=torch.float32)
        xy = as_tensor(coords)
        if feats.ndim != 2 or feats.shape[1] != self.config.in_chans or not len(feats):
            raise ExtractorArgumentError(
                f"{self.tag} needs features of shape (N, {self.config.in_chans}), N > 0, got "
                f"{tuple(feats.shape)}"
            )
        if not xy.is_floating_point():
            xy = xy.long()
        with torch.inference_mode(), self.autocast():
            return self._forward(feats.to(self.device), xy.to(self.device)).float().cpu()


def slide_build(
    config: SlideEncoderConfig, *, layer: int | str = -1, pooling: str = "cls"
) -> ModelBuild:
    """ModelBuild of a slide encoder of architecture ``config`` (random weights)."""
    if layer != "final":
        check_layer(layer, config.depth)
    if pooling not in ("cls", "mean"):
        raise ExtractorArgumentError(f"pooling must be 'cls' or 'mean', not {pooling!r}")
    return ModelBuild(
        module=SlideEncoder(config).eval(),
        num_features=config.embed_dim,
        extractor_cls=GigaPathSlideExtractor,
        extra={"layer": layer, "pooling": pooling, "in_features": config.in_chans},
    )


def build_gigapath_slide(
    spec: ExtractorSpec, *, layer: int | str = -1, pooling: str = "cls"
) -> ModelBuild:
    """Factory of ``gigapath.slide``: the full-size encoder; see the module docstring for
    ``layer`` and ``pooling``."""
    return slide_build(FULL, layer=layer, pooling=pooling)


def build_slide_encoder(
    weights: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device | None = None,
    mixed_precision: bool = True,
    layer: int | str = -1,
    pooling: str = "cls",
    name: str = "gigapath.slide",
    precision: str = "auto",
) -> GigaPathSlideExtractor:
    """Build the GigaPath slide encoder (``slide_encoder.pth`` from the gated
    prov-gigapath/prov-gigapath repository when ``weights`` is None).

    Same as ``histobag.build_feature_extractor("gigapath.slide", ...)``; ``name`` picks another
    registered slide encoder (e.g. a reduced test model), ``precision`` is as there.
    """
    extractor = build_feature_extractor(
        name,
        weights=weights,
        device=device,
        mixed_precision=mixed_precision,
        precision=precision,
        layer=layer,
        pooling=pooling,
    )
    if not isinstance(extractor, GigaPathSlideExtractor):
        raise ExtractorArgumentError(f"{name} is not a slide encoder")
    return extractor


# ------------------------------------------------------------------------------------------
# Tile + slide encoders end to end
# ------------------------------------------------------------------------------------------


class GigaPathExtractor(FeatureExtractor):
    """Prov-GigaPath end to end: :attr:`tile` (``gigapath.tile``) and :attr:`slide`
    (``gigapath.slide``). ``extractor(wsi)`` returns the slide embedding (768,) float32."""

    def __init__(
        self,
        spec: ExtractorSpec,
        build: ModelBuild,
        preprocessing: Preprocessing,
        **kwargs: Any,
    ) -> None:
        super().__init__(spec, build, preprocessing, **kwargs)

        extra = self.extra
        # The end-to-end model's preprocessing overrides are the tile encoder's.
        tile_overrides = PreprocessingOverrides.split(self._config_kwargs)[0].recorded()
        self.tile = build_feature_extractor(
            extra["tile_encoder"],
            weights=extra["tile_encoder_weights"],
            device=self.device,
            mixed_precision=self.mixed_precision,
            precision=self.requested_precision,
            compile=self.compiled,  # the tile encoder is where the time goes
            **tile_overrides,
        )
        self.slide = build_slide_encoder(
            extra["slide_encoder_weights"],
            device=self.device,
            mixed_precision=self.mixed_precision,
            precision=self.requested_precision,
            layer=extra["layer"],
            pooling=extra["pooling"],
            name=extra["slide_encoder"],
        )
        if self.tile.num_features != self.slide.config.in_chans:
            raise ExtractorArgumentError(
                f"{extra['tile_encoder']} gives {self.tile.num_features} features but "
                f"{extra['slide_encoder']} takes {self.slide.config.in_chans}"
            )
        self.model = nn.ModuleDict({"tile": self.tile.model, "slide": self.slide.model})
        self.preprocessing = self.tile.preprocessing
        self.transform = self.tile.transform
        self._num_features = self.slide.num_features

    def provenance(self) -> dict[str, Any]:
        """Both encoders' provenance."""
        return {
            **self.tile.provenance(),
            "tile": self.tile.provenance(),
            "slide": self.slide.provenance(),
        }

    def forward_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Refuses tile batches: bags of tile features are made with :attr:`tile`."""
        raise ExtractorArgumentError(
            "gigapath embeds whole slides: use extractor(wsi). For tile features (and bags) "
            "use extractor.tile, then extractor.slide.generate_and_save(bags_dir, outdir)."
        )

    def __call__(self, obj: Any, **kwargs: Any) -> Any:
        """Slide embedding (768,) of a :class:`histobag.WSI`; ``batch_size``,
        ``num_workers`` and ``normalizer`` go to the tile-extraction engine."""
        if not (type(obj).__name__ == "WSI" and hasattr(obj, "read_tiles")):
            raise ExtractorArgumentError(
                "gigapath takes a histobag.WSI; use .tile(batch) for tile features and "
                ".slide(features, coords) for a slide embedding from features."
            )

        self.slide.use_tile_extractor(self.tile, force=True)  # the names were chosen
        return self.slide.embed_wsi(obj, **kwargs)


def _no_single_checkpoint(state_dict: dict[str, Any]) -> dict[str, Any]:
    raise ExtractorArgumentError(
        "gigapath has two checkpoints: pass tile_encoder_weights= and slide_encoder_weights= "
        "(each a path, or None to download), not weights=."
    )


def build_gigapath(
    spec: ExtractorSpec,
    *,
    tile_encoder_weights: str | os.PathLike[str] | None = None,
    slide_encoder_weights: str | os.PathLike[str] | None = None,
    layer: int | str = -1,
    pooling: str = "cls",
    tile_encoder: str = "gigapath.tile",
    slide_encoder: str = "gigapath.slide",
) -> ModelBuild:
    """Factory of ``gigapath``: the two encoders are built (with their weights) when the
    extractor is created, on its device; ``tile_encoder``/``slide_encoder`` name the
    registered models to use (reduced test models, fine-tuned variants)."""
    return ModelBuild(
        module=nn.Module(),
        adapt_state_dict=_no_single_checkpoint,
        num_features=FULL.embed_dim,
        extractor_cls=GigaPathExtractor,
        extra={
            "tile_encoder_weights": tile_encoder_weights,
            "slide_encoder_weights": slide_encoder_weights,
            "layer": layer,
            "pooling": pooling,
            "tile_encoder": tile_encoder,
            "slide_encoder": slide_encoder,
        },
    )
