"""Core's own plugin: the stain normalizers and bag writers that ship with histobag.

It is registered like any pack, so core's components and a third party's are listed the same
way. Core registers no extractors: named models live in packs.
"""

from __future__ import annotations

from histobag.hookspecs import hookimpl
from histobag.specs import BagWriterSpec, SlideReaderSpec, TissueDetectorSpec, TransformSpec

BUILTIN_NORMALIZERS: tuple[tuple[str, str, str], ...] = (
    (
        "macenko",
        "histobag.norm.macenko:Macenko",
        "slideflow's macenko: brightness standardised, then Macenko stain separation.",
    ),
    (
        "macenko_fast",
        "histobag.norm.macenko:MacenkoFast",
        "slideflow's macenko_fast: Macenko stain separation without brightness standardisation.",
    ),
    (
        "reinhard",
        "histobag.norm.reinhard:Reinhard",
        "slideflow's reinhard: brightness standardised, then L*a*b* mean/std transfer.",
    ),
    (
        "reinhard_fast",
        "histobag.norm.reinhard:ReinhardFast",
        "slideflow's reinhard_fast: L*a*b* mean/std transfer without brightness standardisation.",
    ),
    (
        "reinhard_mask",
        "histobag.norm.reinhard:ReinhardMask",
        "slideflow's reinhard_mask: as reinhard, statistics and transfer on tissue pixels only.",
    ),
    (
        "reinhard_fast_mask",
        "histobag.norm.reinhard:ReinhardFastMask",
        "slideflow's reinhard_fast_mask: as reinhard_fast, on tissue pixels only.",
    ),
    (
        "vahadane",
        "histobag.norm.vahadane:Vahadane",
        "slideflow's vahadane (sklearn): sparse non-negative stain separation, no SPAMS.",
    ),
    (
        "legacy_macenko",
        "histobag.norm.legacy_macenko:LegacyMacenko",
        "histobag <= 0.1's macenko (slideflow's macenko_fast, within 1 level).",
    ),
    (
        "legacy_reinhard",
        "histobag.norm.legacy_reinhard:LegacyReinhard",
        "histobag <= 0.1's reinhard (slideflow's reinhard_fast, within 4 levels).",
    ),
    (
        "legacy_reinhard_mask",
        "histobag.norm.legacy_reinhard:LegacyReinhardMask",
        "histobag <= 0.1's reinhard_mask (tissue pixels with L* < 90).",
    ),
    (
        "legacy_vahadane",
        "histobag.norm.legacy_vahadane:LegacyVahadane",
        "histobag <= 0.1's vahadane (20 block-coordinate rounds from the Macenko estimate).",
    ),
)
"""``(name, "module:Class", description)`` of every built-in normalizer, for the plugin hook.

The first seven carry slideflow's names with slideflow's meaning; ``legacy_*`` are the
transforms histobag called ``macenko``, ``reinhard``, ``reinhard_mask`` and ``vahadane``
before, kept so that bags made with them rebuild exactly (see :mod:`histobag.bags.config`).
"""


@hookimpl
def histobag_transforms() -> list[TransformSpec]:
    """Slideflow's stain normalizers (Macenko, Reinhard, Vahadane and variants) and the
    ``legacy_*`` transforms of histobag 0.1."""
    return [
        TransformSpec(name, target, description=text) for name, target, text in BUILTIN_NORMALIZERS
    ]


@hookimpl
def histobag_bag_writers() -> list[BagWriterSpec]:
    """``pt`` (slideflow), ``h5`` (CLAM/TRIDENT) and ``safetensors`` bag formats."""
    return [
        BagWriterSpec(
            "pt",
            "histobag.io.bag_writers:PtBagWriter",
            description="<slide>.pt float32 (N, F) + <slide>.index.npz (slideflow)",
        ),
        BagWriterSpec(
            "h5",
            "histobag.io.bag_writers:H5BagWriter",
            description="<slide>.h5 with features and coords (CLAM/TRIDENT)",
        ),
        BagWriterSpec(
            "safetensors",
            "histobag.io.bag_writers:SafetensorsBagWriter",
            description="<slide>.safetensors with features and coords",
        ),
    ]


@hookimpl
def histobag_slide_readers() -> list[SlideReaderSpec]:
    """OpenSlide, for every local file (the default), and tiffslide for TIFF-based slides
    (a fallback locally; the reader of http(s), s3 and gs URLs)."""
    return [
        SlideReaderSpec(
            "openslide",
            "histobag.slide.readers.openslide_reader:OpenSlideReader",
            priority=0,
            license="LGPL-2.1-only",
            description="OpenSlide: SVS, NDPI, MRXS, SCN, BIF, VMS, pyramidal TIFF, DICOM "
            "(any local file it recognises)",
        ),
        SlideReaderSpec(
            "tiffslide",
            "histobag.slide.readers.tiffslide_reader:TiffSlideReader",
            suffixes=(".svs", ".tif", ".tiff", ".ptif"),
            schemes=("http", "https", "s3", "gs"),
            priority=-10,
            license="BSD-3-Clause",
            description="tiffslide (tifffile): pyramidal TIFF/SVS/OME-TIFF, also from "
            "http(s)/s3/gs URLs with range reads and a block cache (histobag[remote])",
        ),
        SlideReaderSpec(
            "ome-tiff",
            "histobag.slide.readers.tiff_reader:OmeTiffReader",
            suffixes=(".ome.tif", ".ome.tiff"),
            priority=10,  # OpenSlide opens these as one level without the pixel size
            license="BSD-3-Clause",
            description="OME-TIFF pyramids (SubIFDs) with the OME-XML pixel size (tifffile)",
        ),
        SlideReaderSpec(
            "ome-zarr",
            "histobag.slide.readers.zarr_reader:OmeZarrReader",
            suffixes=(".zarr", ".ome.zarr"),
            schemes=("http", "https", "s3", "gs"),
            priority=10,
            license="MIT",
            description="OME-Zarr (NGFF 0.4/0.5) folders or URLs (histobag[zarr])",
        ),
        SlideReaderSpec(
            "czi",
            "histobag.slide.readers.czi_reader:CziReader",
            suffixes=(".czi",),
            priority=10,  # OpenSlide 4 knows some CZI but not every writer's
            license="LGPL-3.0-only",
            description="Zeiss CZI mosaics with pylibCZIrw (libCZI) (histobag[czi])",
        ),
        SlideReaderSpec(
            "dicom",
            "histobag.slide.readers.dicom_reader:DicomReader",
            schemes=("dicomweb+http", "dicomweb+https"),
            priority=-1,  # after OpenSlide: folders, and codecs OpenSlide lacks
            license="Apache-2.0",
            description="wsidicom: DICOM WSI (a folder, any .dcm file of the slide, or a "
            "dicomweb+https://.../studies/UID/series/UID URL; histobag[dicom])",
        ),
        SlideReaderSpec(
            "image",
            "histobag.slide.readers.image_reader:open_image",
            suffixes=(".png", ".jpg", ".jpeg", ".tif", ".tiff"),
            priority=-10,
            license="MIT-CMU",
            description="plain PNG/JPEG (Pillow) and TIFF (tifffile) images without a "
            "pyramid; pass mpp=",
        ),
        SlideReaderSpec(
            "cucim",
            "histobag.slide.readers.cucim_reader:CuCIMReader",
            suffixes=(".svs", ".tif", ".tiff", ".ptif"),
            auto=False,  # opt-in: a corrupt JPEG tile decodes to black, not an error
            license="Apache-2.0",
            description="NVIDIA cuCIM: pyramidal TIFF/SVS, opt-in with reader='cucim' "
            "(histobag[cucim], Linux x86-64)",
        ),
    ]


@hookimpl
def histobag_tissue_detectors() -> list[TissueDetectorSpec]:
    """Otsu on HSV saturation (histobag's first detector) and ``hsv`` (pale tissue kept,
    pen marks and dust dropped)."""
    return [
        TissueDetectorSpec(
            "otsu",
            "histobag.slide.tissue:build_otsu",
            description="Otsu threshold on the thumbnail's HSV saturation, blurred",
        ),
        TissueDetectorSpec(
            "hsv",
            "histobag.slide.tissue_hsv:build_hsv",
            description="saturation and density thresholds after white balance, pen-mark "
            "rejection, clean-up in µm (keeps pale and haematoxylin-only tissue)",
        ),
    ]
