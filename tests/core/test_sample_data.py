"""The synthetic sample slide: an Aperio pyramid OpenSlide opens, deterministic, with tissue."""

from __future__ import annotations

import numpy as np
import openslide
import pytest
import tifffile

from histobag.errors import HistobagError
from histobag.slide.samples import sample_slide
from histobag.slide.tissue import saturation


def test_opens_as_a_three_level_aperio_slide(slide_path):
    osr = openslide.OpenSlide(str(slide_path))
    assert osr.properties[openslide.PROPERTY_NAME_VENDOR] == "aperio"
    assert float(osr.properties[openslide.PROPERTY_NAME_MPP_X]) == 0.5
    assert float(osr.properties[openslide.PROPERTY_NAME_MPP_Y]) == 0.5
    assert osr.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "20"
    assert osr.level_dimensions == ((4096, 3072), (1024, 768), (256, 192))
    assert osr.level_downsamples == (1.0, 4.0, 16.0)
    assert osr.properties["tiff.ImageDescription"].startswith("Aperio Image Library")


def test_has_tissue_and_background(slide_path):
    osr = openslide.OpenSlide(str(slide_path))
    lowest = np.asarray(osr.read_region((0, 0), 2, (256, 192)))[..., :3]
    tissue = saturation(lowest) > 0.1
    assert 0.1 < tissue.mean() < 0.5
    background = lowest[~tissue]
    assert np.median(background) >= 235  # bright glass
    # Level 1 is level 0 averaged over 4 x 4 blocks.
    block = np.asarray(osr.read_region((1024, 512), 0, (64, 64)))[..., :3].astype(np.float32)
    level1 = np.asarray(osr.read_region((1024, 512), 1, (16, 16)))[..., :3].astype(np.float32)
    expected = block.reshape(16, 4, 16, 4, 3).mean(axis=(1, 3))
    assert np.abs(level1 - expected).max() <= 1


def test_deterministic_for_a_seed(tmp_path):
    kwargs = {"size": (1024, 768), "levels": 2}
    a = sample_slide(tmp_path / "a.svs", seed=3, **kwargs).read_bytes()
    b = sample_slide(tmp_path / "b.svs", seed=3, **kwargs).read_bytes()
    c = sample_slide(tmp_path / "c.svs", seed=4, **kwargs).read_bytes()
    assert a == b
    assert a != c
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_size_mpp_and_levels_arguments(tmp_path):
    path = sample_slide(tmp_path / "s.svs", size=(1000, 600), mpp=0.25, levels=2)
    osr = openslide.OpenSlide(str(path))
    assert osr.level_dimensions == ((1000, 600), (250, 150))
    assert osr.properties[openslide.PROPERTY_NAME_MPP_X] == "0.25"
    assert osr.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "40"
    with pytest.raises(HistobagError, match="too small"):
        sample_slide(tmp_path / "x.svs", size=(100, 100), levels=5)


def test_jpeg_compression_like_a_scanner(tmp_path):
    kwargs = {"size": (1024, 768), "levels": 2, "seed": 1}
    lossless = sample_slide(tmp_path / "deflate.svs", **kwargs)
    jpeg = sample_slide(tmp_path / "jpeg.svs", compression="jpeg", **kwargs)
    assert tifffile.TiffFile(lossless).pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    assert tifffile.TiffFile(jpeg).pages[0].compression == tifffile.COMPRESSION.JPEG
    a, b = (openslide.OpenSlide(str(p)) for p in (lossless, jpeg))
    assert b.properties[openslide.PROPERTY_NAME_VENDOR] == "aperio"
    region = [np.asarray(s.read_region((0, 0), 0, (1024, 768)))[..., :3] for s in (a, b)]
    error = np.abs(region[0].astype(np.int16) - region[1]).mean()
    assert 0 < error < 3  # lossy, but the same image
    with pytest.raises(HistobagError, match="compression"):
        sample_slide(tmp_path / "x.svs", compression="lzma")
