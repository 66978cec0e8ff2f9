"""Plugin specs: plain data describing what a pack provides, before anything is built.

:class:`ExtractorSpec` (a feature extractor), :class:`TransformSpec` (a stain normalizer) and
:class:`BagWriterSpec` (a bag file format). Each names its factory as a ``"module:attr"`` string
imported only when used, so listing never imports torch or model code (DESIGN principle 1).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from histobag.errors import PluginError

#: Interpolation modes accepted by :class:`Preprocessing` (torchvision's names).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """A model's default tile preprocessing, applied on the device to uint8 tiles.

    The pipeline is: convert to float in [0, 1], then center-crop and resize (crop first
    unless ``resize_first``), then normalise with ``mean``/``std``.

    Attributes:
        resize: Target size of the shorter side, or ``None`` for no resize.
        center_crop: Side of the square center crop, or ``None`` for no crop.
        resize_first: Resize before cropping (e.g. GigaPath: resize 256, crop 224).
        interpolation: One of ``"nearest"``, ``"bilinear"``, ``"bicubic"``.
        antialias: Antialias when downsampling.
        mean: Per-channel normalisation mean (RGB, on the [0, 1] scale).
        std: Per-channel normalisation standard deviation.
    """

    resize: int | None = None
    center_crop: int | None = None
    resize_first: bool = False
    interpolation: str = "bilinear"
    antialias: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {INTERPOLATIONS}, not {self.interpolation!r}"
            )
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ValueError(f"{name} needs three values (R, G, B), got {value!r}")
            object.__setattr__(self, name, tuple(float(v) for v in value))

    def replace(self, **changes: Any) -> Preprocessing:
        """Return a copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, as recorded in ``bags_config.json``."""
        out = dataclasses.asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    def describe(self) -> str:
        """One line per step, in the order they run; needs no torch."""
        steps = ["to float in [0, 1]"]
        crop = f"center crop {self.center_crop}" if self.center_crop else None
        aa = ", antialias" if self.antialias else ""
        resize = f"resize {self.resize} ({self.interpolation}{aa})" if self.resize else None
        ordered = [resize, crop] if self.resize_first else [crop, resize]
        steps += [s for s in ordered if s]
        steps.append(f"normalize mean={list(self.mean)} std={list(self.std)}")
        return "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1))


#: What an extractor consumes: ``"tiles"``, a tile encoder (uint8 tiles in, one feature vector
#: per tile out: what feature bags are made with), or ``"tile_features"``, a slide encoder (a
#: slide's tile features from a tile encoder in, e.g. ``gigapath.slide``).
EXTRACTOR_KINDS = ("tiles", "tile_features")


@dataclass(frozen=True)
class SlideInput:
    """What a slide encoder needs from its bags: which tile encoder, at which tile geometry.

    Slide encoders are trained on the features of one tile encoder, from tiles of one size at
    one magnification; bags made otherwise give embeddings that look fine and mean nothing.
    histobag refuses such bags (unless forced), naming what it found and what is needed.

    Attributes:
        tile_encoders: Registered names of the tile encoders whose features the model takes;
            the first is the one run when histobag makes the bags itself.
        tile_px: Tile side in pixels at :attr:`magnification` (None: any).
        magnification: Objective magnification of the tiles: 20 is 0.5 µm/px, 10 is 1 µm/px
            (None: any).
        coordinates: How the model uses tile coordinates, in one line (for docs and listings).
    """

    tile_encoders: tuple[str, ...]
    tile_px: int | None = None
    magnification: float | None = None
    coordinates: str = "ignored"

    def __post_init__(self) -> None:
        object.__setattr__(self, "tile_encoders", tuple(self.tile_encoders))
        if not self.tile_encoders:
            raise PluginError("SlideInput needs at least one tile encoder name")

    @property
    def tile_um(self) -> float | None:
        """Tile side in µm (``tile_px`` at ``magnification``, 10x = 1 µm/px), if both are set."""
        if self.tile_px is None or self.magnification is None:
            return None
        return self.tile_px * 10.0 / self.magnification

    def describe(self) -> str:
        """E.g. ``"conch-v1.5 features of 512 px tiles at 20x"``."""
        encoders = " or ".join(self.tile_encoders)
        size = f"{self.tile_px} px" if self.tile_px else "any size of"
        mag = f" at {self.magnification:g}x" if self.magnification else " at any magnification"
        return f"{encoders} features of {size} tiles{mag}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        out = dataclasses.asdict(self)
        out["tile_encoders"] = list(self.tile_encoders)
        return out


@dataclass(frozen=True)
class ExtractorSpec:
    """What a pack declares about one feature extractor.

    Attributes:
        name: Registered name, e.g. ``"ctranspath"``; what users pass to
            :func:`histobag.build_feature_extractor`.
        factory: ``"module:attr"`` of a callable ``factory(spec, **model_kwargs)`` returning a
            :class:`histobag.extractors.ModelBuild` (or a bare ``torch.nn.Module``). Imported
            only when the model is built. In-process registrations (scripts) may pass the
            callable itself.
        license: SPDX identifier of the weights' licence (e.g. ``"GPL-3.0-only"``).
        license_url: Where the licence text lives.
        citation: BibTeX entry users should cite.
        num_features: Length of the embedding (may be ``None`` when it depends on arguments).
        input_size: Side of the square input the network expects, in pixels.
        preprocessing: Default preprocessing, matching the official pipeline.
        description: One line shown by ``histobag list``/``info``.
        aliases: Other names that resolve to this spec.
        tags: Free-form labels used for filtering (``foundation``, ``imagenet``, ``ssl``...).
        hf_repo: Hugging Face repository of the official weights, if any.
        hf_filename: File inside ``hf_repo``.
        hf_revision: Pinned revision (branch, tag or commit); ``None`` means the default branch.
        gated: Whether ``hf_repo`` needs approval on its model page.
        sha256: Digest of the official checkpoint; a different file triggers a warning.
        weights_help: Where to get the official weights when they are not on Hugging Face
            (one sentence with a URL); said when weights are missing.
        checkpoint_keys: Nesting keys unwrapped from a loaded checkpoint, tried in order
            (e.g. ``("model",)`` for ``{'model': state_dict}``).
        weights_required: If False the model is usable without weights (e.g. it has none).
        autocast_dtype: ``"bfloat16"`` or ``"float16"``, the reduced precision used on CUDA;
            ``"float32"`` for a model whose official pipeline runs in float32 only
            (``precision="auto"`` then means float32; bf16/fp16 can still be asked for).
        model_kwargs: Keyword arguments the factory accepts (validated before building).
        required_kwargs: Those of ``model_kwargs`` that must be given.
        kind: What the model consumes, one of :data:`EXTRACTOR_KINDS`: ``"tiles"`` (a tile
            encoder, the default) or ``"tile_features"`` (a slide encoder, refused where
            feature bags are made).
        tile_encoder: For a slide encoder, the registered name of the tile encoder whose
            features it consumes (e.g. ``"gigapath.tile"``); named in error messages. Filled
            in from ``slide_input`` when that is given.
        slide_input: For a slide encoder, the tile encoders and tile geometry its bags must
            have (:class:`SlideInput`).
        distribution: Distribution that registered this spec (filled in by the plugin manager).
        version: That distribution's version (filled in by the plugin manager).
    """

    name: str
    factory: str | Callable[..., Any]
    license: str
    citation: str = ""
    license_url: str = ""
    num_features: int | None = None
    input_size: int = 224
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    description: str = ""
    aliases: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    hf_repo: str | None = None
    hf_filename: str | None = None
    hf_revision: str | None = None
    gated: bool = False
    sha256: str | None = None
    weights_help: str = ""
    checkpoint_keys: tuple[str, ...] = ()
    weights_required: bool = True
    autocast_dtype: str = "bfloat16"
    model_kwargs: tuple[str, ...] = ()
    required_kwargs: tuple[str, ...] = ()
    kind: str = "tiles"
    tile_encoder: str | None = None
    slide_input: SlideInput | None = None
    distribution: str = ""
    version: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.factory, str) and ":" not in self.factory:
            raise PluginError(
                f"Extractor {self.name!r}: factory must be a 'module:attr' string, "
                f"got {self.factory!r}"
            )
        if not isinstance(self.factory, str) and not callable(self.factory):
            raise PluginError(f"Extractor {self.name!r}: factory must be a 'module:attr' string")
        if self.autocast_dtype not in ("bfloat16", "float16", "float32"):
            raise PluginError(
                f"Extractor {self.name!r}: autocast_dtype must be 'bfloat16', 'float16' or "
                "'float32'"
            )
        if self.kind not in EXTRACTOR_KINDS:
            raise PluginError(
                f"Extractor {self.name!r}: kind must be one of {', '.join(EXTRACTOR_KINDS)} "
                f"(what the model consumes), not {self.kind!r}"
            )
        if self.slide_input is not None and self.tile_encoder is None:
            object.__setattr__(self, "tile_encoder", self.slide_input.tile_encoders[0])
        if (
            self.tile_encoder is not None or self.slide_input is not None
        ) and self.kind != "tile_features":
            raise PluginError(
                f"Extractor {self.name!r}: tile_encoder and slide_input describe what a "
                "slide encoder consumes; give them with kind='tile_features' only"
            )
        for name in ("aliases", "tags", "checkpoint_keys", "model_kwargs", "required_kwargs"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def replace(self, **changes: Any) -> ExtractorSpec:
        """Return a copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def pack(self) -> str:
        """The providing distribution, or ``"<in-process>"`` for script registrations."""
        return self.distribution or "<in-process>"

    @property
    def weights_url(self) -> str | None:
        """The model page of the official weights on Hugging Face, if any."""
        return f"https://huggingface.co/{self.hf_repo}" if self.hf_repo else None

    def load_factory(self) -> Callable[..., Any]:
        """Import and return the factory callable."""
        if not isinstance(self.factory, str):
            return self.factory
        return import_object(self.factory, what=f"factory of extractor {self.name!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (used by ``histobag info --json`` and the docs)."""
        out = dataclasses.asdict(self)
        out["preprocessing"] = self.preprocessing.to_dict()
        out["slide_input"] = self.slide_input.to_dict() if self.slide_input else None
        if not isinstance(self.factory, str):
            out["factory"] = f"{self.factory.__module__}:{self.factory.__qualname__}"
        for key in ("aliases", "tags", "checkpoint_keys", "model_kwargs", "required_kwargs"):
            out[key] = list(out[key])
        return out


#: Prefix of the mean-pooling slide encoders: ``mean:<tile encoder>``.
MEAN_POOLING_PREFIX = "mean:"


def mean_pooling_spec(tile_encoder: ExtractorSpec) -> ExtractorSpec:
    """The slide encoder ``mean:<tile encoder>``: the mean of that encoder's tile features.

    It has no weights of its own; it carries the tile encoder's licence and citation (the
    features are that model's), and takes bags of any tile size and magnification.
    """
    if tile_encoder.kind != "tiles":
        raise PluginError(
            f"mean pooling takes a tile encoder's features; {tile_encoder.name} is a slide encoder"
        )
    return ExtractorSpec(
        name=f"{MEAN_POOLING_PREFIX}{tile_encoder.name}",
        factory="histobag.slide_encoding.mean_pooling:build_mean_pooling",
        license=tile_encoder.license,
        license_url=tile_encoder.license_url,
        citation=tile_encoder.citation,
        num_features=tile_encoder.num_features,
        description=f"mean of a slide's {tile_encoder.name} tile features",
        tags=("slide-encoder", "mean-pooling"),
        weights_required=False,
        kind="tile_features",
        slide_input=SlideInput((tile_encoder.name,), coordinates="ignored"),
        distribution=tile_encoder.distribution,
        version=tile_encoder.version,
    )


def import_object(path: str, *, what: str) -> Any:
    """Import ``"package.module:attr.sub"`` and return the object, with a helpful error."""
    module_name, _, attr_path = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr_path.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise PluginError(
            f"Could not import the {what} ({path!r}): {exc}. "
            "Reinstall the pack that provides it, or check its dependencies."
        ) from exc
    return obj


#: Kinds of transform a pack can register.
TRANSFORM_KINDS = ("stain_normalizer", "tile_transform")


def check_factory_path(factory: Any, owner: str) -> None:
    """Refuse a spec's ``factory`` unless it is a ``"module:attr"`` string.

    Checked when a pack's hook builds the spec, so a typo fails when packs are listed, not
    mid-run.

    Args:
        factory: The spec's ``factory`` field.
        owner: What the spec is, for the message, e.g. ``"Slide reader 'czi'"``.

    Raises:
        PluginError: ``factory`` is not a ``"module:attr"`` string.
    """
    module, _, attr = factory.partition(":") if isinstance(factory, str) else ("", "", "")
    if not module or not attr:
        raise PluginError(f"{owner}: factory must be a 'module:attr' string, got {factory!r}.")


@dataclass(frozen=True)
class TransformSpec:
    """A stain normalizer or tile transform provided by a pack.

    Attributes:
        name: Registered name, e.g. ``"macenko"``.
        factory: ``"module:attr"`` of a class or callable building the transform (the contract
            of each kind is in :func:`histobag.hookspecs.histobag_transforms`).
        kind: One of :data:`TRANSFORM_KINDS`: ``"stain_normalizer"`` or ``"tile_transform"``.
        description: One line for listings.
        distribution: Providing distribution (filled in by the plugin manager).

    Raises:
        PluginError: ``kind`` is not one of :data:`TRANSFORM_KINDS`, or ``factory`` is not a
            ``"module:attr"`` string.
    """

    name: str
    factory: str
    kind: str = "stain_normalizer"
    description: str = ""
    distribution: str = ""

    def __post_init__(self) -> None:
        # Checked when the pack's hook builds the spec, so a typo fails at listing, not mid-run.
        pack = f" (pack {self.distribution!r})" if self.distribution else ""
        if self.kind not in TRANSFORM_KINDS:
            raise PluginError(
                f"Transform {self.name!r}{pack}: kind must be one of "
                f"{', '.join(map(repr, TRANSFORM_KINDS))}, not {self.kind!r}."
            )
        check_factory_path(self.factory, f"Transform {self.name!r}{pack}")

    def load(self) -> Any:
        """Import and return the factory."""
        return import_object(self.factory, what=f"transform {self.name!r}")


@dataclass(frozen=True)
class BagWriterSpec:
    """A feature-bag file format provided by a pack.

    Attributes:
        name: Registered name used as ``writer=``, e.g. ``"h5"``.
        factory: ``"module:attr"`` of a :class:`histobag.io.bag_writers.BagWriter` subclass.
        description: One line for listings.
        distribution: Providing distribution (filled in by the plugin manager).
    """

    name: str
    factory: str
    description: str = ""
    distribution: str = ""

    def load(self) -> Any:
        """Import and return the writer class."""
        return import_object(self.factory, what=f"bag writer {self.name!r}")


@dataclass(frozen=True)
class SlideReaderSpec:
    """A slide reader (a library that opens a slide format) provided by a pack.

    Attributes:
        name: Registered name used as ``reader=``, e.g. ``"openslide"``.
        factory: ``"module:attr"`` of a callable ``factory(source: str) ->``
            :class:`histobag.slide.readers.SlideReader`; it raises when it cannot open
            ``source`` (the next reader is then tried).
        suffixes: File suffixes it opens (lower case, with the dot, e.g. ``(".czi",)``); a
            folder suffix such as ``".zarr"`` counts too.
        schemes: URL schemes it opens (e.g. ``("s3", "https")``); local files have none.
        priority: Higher is tried first among readers that claim a file (OpenSlide: 0).
        auto: Whether ``reader="auto"`` tries it; ``False``: an opt-in reader, used only when
            named (``reader="cucim"``).
        license: SPDX identifier of the library's licence.
        description: One line for listings.
        distribution: Providing distribution (filled in by the plugin manager).
    """

    name: str
    factory: str
    suffixes: tuple[str, ...] = ()
    schemes: tuple[str, ...] = ()
    priority: int = 0
    auto: bool = True
    license: str = ""
    description: str = ""
    distribution: str = ""

    def __post_init__(self) -> None:
        check_factory_path(self.factory, f"Slide reader {self.name!r}")
        object.__setattr__(self, "suffixes", tuple(s.lower() for s in self.suffixes))
        object.__setattr__(self, "schemes", tuple(s.lower() for s in self.schemes))

    def claims(self, source: str) -> bool:
        """Whether ``source`` (a path or URL) has one of this reader's suffixes or schemes."""
        scheme = source.split("://", 1)[0].lower() if "://" in source else ""
        if scheme and scheme != "file" and scheme not in self.schemes:
            return False
        name = source.rstrip("/").lower().split("?", 1)[0]
        return not self.suffixes or name.endswith(self.suffixes)

    def load(self) -> Any:
        """Import and return the factory."""
        return import_object(self.factory, what=f"slide reader {self.name!r}")


#: The tissue detector used when none is named: it keeps pale and haematoxylin-only tissue
#: and drops pen marks and dust (:mod:`histobag.slide.tissue_hsv`).
DEFAULT_TISSUE_DETECTOR = "hsv"

#: The detector of bags configurations that record none (written when Otsu on saturation was
#: the only detector) and the default before ``hsv``.
LEGACY_TISSUE_DETECTOR = "otsu"


@dataclass(frozen=True)
class TissueDetectorSpec:
    """A tissue detector provided by a pack.

    Attributes:
        name: Registered name used as ``tissue=``, e.g. ``"otsu"``.
        factory: ``"module:attr"`` of a callable ``factory(**kwargs)`` returning a detector:
            a callable mapping an RGB uint8 thumbnail (H, W, 3) at ``mpp`` µm/px, called as
            ``detector(thumbnail, mpp=mpp)``, to a bool mask (H, W). Keyword arguments must
            be JSON-able (they are recorded in ``bags_config.json``).
        description: One line for listings.
        distribution: Providing distribution (filled in by the plugin manager).
    """

    name: str
    factory: str
    description: str = ""
    distribution: str = ""

    def __post_init__(self) -> None:
        check_factory_path(self.factory, f"Tissue detector {self.name!r}")

    def load(self) -> Any:
        """Import and return the factory."""
        return import_object(self.factory, what=f"tissue detector {self.name!r}")
