"""Prov-GigaPath slide encoder (LongNet ViT) and the tile + slide pipeline.

Numerical parity: the golden outputs of the official code on a reduced configuration
(``tests/fixtures/gigapath-slide``, first delivered in ``../shared/fixtures/``), loaded through
``histobag.build_feature_extractor`` from the official checkpoint layout. Dilated attention is also
checked against a literal, unvectorised re-statement of the official algorithm on configurations
with many segments in every branch (the fixtures only split the ratio-1 branch). Key names and
shapes are checked at full size on the meta device against the fixture's manifest.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.models import VisionTransformer

import histobag
from histobag import ExtractorSpec, Preprocessing, SlideInput
from histobag.bags.read import read_bag
from histobag.errors import ConfigError, ExtractorArgumentError
from histobag.extractors.base import ModelBuild
from histobag.geometry import grid_pitch
from histobag.slide import WSI
from histobag.slide.samples import sample_slide
from histobag.slide_encoding.pipeline import EMBEDDINGS_CONFIG
from histobag_noncommercial import gigapath_slide as gs
from histobag_noncommercial import gigapath_specs, longnet
from tests.core.toy_models import registered as registered_specs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gigapath-slide"
SMALL = gs.SlideEncoderConfig(in_chans=64, embed_dim=256, depth=2)
TOL = 1e-4
TILE_PX, TILE_UM = 16, 8  # 16 level-0 px per tile on the 0.5 µm/px sample slide


def small_slide(spec: ExtractorSpec, *, layer: int | str = -1, pooling: str = "cls") -> ModelBuild:
    """The fixture's reduced slide encoder (64 → 256, 2 layers)."""
    return gs.slide_build(SMALL, layer=layer, pooling=pooling)


def tiny_tile(spec: ExtractorSpec) -> ModelBuild:
    """A 64-feature stand-in for the ViT-g tile encoder (seeded random weights)."""
    torch.manual_seed(0)
    net = VisionTransformer(
        img_size=16, patch_size=8, embed_dim=64, depth=1, num_heads=2, num_classes=0
    )
    return ModelBuild(module=net.eval(), num_features=64, fixed_input_size=16)


@pytest.fixture(scope="module", autouse=True)
def registered() -> Iterator[None]:
    """Reduced GigaPath models beside the pack's own (registered in-process)."""
    slide = gigapath_specs.gigapath_slide()
    specs = [
        slide.replace(
            name="gigapath.slide-small",
            aliases=(),
            tile_encoder=None,
            slide_input=SlideInput(("gigapath.tile-tiny",), tile_px=TILE_PX, magnification=20),
            factory=small_slide,
            hf_repo=None,
            hf_filename=None,
            distribution="",
        ),
        ExtractorSpec(
            name="gigapath.tile-tiny",
            factory=tiny_tile,
            license="MIT",
            num_features=64,
            input_size=16,
            preprocessing=Preprocessing(),
        ),
    ]
    with registered_specs(*specs):
        yield


@pytest.fixture(scope="module")
def fixture_data() -> tuple[dict, dict]:
    inputs = dict(np.load(FIXTURES / "inputs.npz"))
    outputs = dict(np.load(FIXTURES / "outputs.npz"))
    return inputs, outputs


@pytest.fixture(scope="module")
def small() -> gs.GigaPathSlideExtractor:
    return gs.build_slide_encoder(
        FIXTURES / "slide_encoder_small.pth",
        device="cpu",
        mixed_precision=False,
        name="gigapath.slide-small",
    )


# ------------------------------------------------------------------------------------------
# Golden outputs of the official code
# ------------------------------------------------------------------------------------------


def test_fixture_every_output(small, fixture_data):
    inputs, outputs = fixture_data
    model = small.model
    worst = 0.0
    with torch.inference_mode():
        for case in inputs["cases"]:
            emb = torch.from_numpy(inputs[f"{case}_tile_embeds"])
            xy = torch.from_numpy(inputs[f"{case}_coords"])
            assert torch.equal(model.positions(xy), torch.from_numpy(outputs[f"{case}_pos_index"]))
            # One pass keeps every hidden state; the outputs are the official read-outs of them.
            states = model.hidden_states(emb, xy)
            final = model.encoder.layer_norm(states[-1])
            got = {
                "default_cls": model.norm(final[:, 0]),
                "default_globalpool": model.norm(final[:, 1:].mean(1)),
                "encoder_out": final,
            }
            for i, h in enumerate(states):
                got[f"all_layer_{i}"] = model.norm(h[:, 0])
                got[f"all_layer_globalpool_{i}"] = model.norm(h[:, 1:].mean(1))
            for key, value in got.items():
                expected = torch.from_numpy(outputs[f"{case}_{key}"])
                assert value.shape == expected.shape, key
                torch.testing.assert_close(value, expected, atol=TOL, rtol=TOL)
                worst = max(worst, float((value - expected).abs().max()))
            # The extractor's default is the official pipeline's last_layer_embed.
            default = small.embed_model_grid(emb[0], xy[0])
            assert default.shape == (SMALL.embed_dim,)
            torch.testing.assert_close(default, got[f"all_layer_{SMALL.depth}"][0])
    assert worst < 1e-5


def test_fixture_hidden_states_and_position_table(small, fixture_data):
    inputs, outputs = fixture_data
    model = small.model
    emb, xy = torch.from_numpy(inputs["L37_tile_embeds"]), torch.from_numpy(inputs["L37_coords"])
    with torch.inference_mode():
        states = model.hidden_states(emb, xy)
    for i, state in enumerate(states):
        torch.testing.assert_close(
            state, torch.from_numpy(outputs[f"L37_hidden_{i}"]), atol=TOL, rtol=TOL
        )
    idx = torch.from_numpy(outputs["pos_table_sample_idx"])
    assert torch.equal(model.position_rows(idx), torch.from_numpy(outputs["pos_table_sample_rows"]))
    assert torch.equal(
        model.position_rows(torch.arange(5)), torch.from_numpy(outputs["pos_table_first5"])
    )
    with pytest.raises(ExtractorArgumentError, match="1000 x 1000"):
        model.position_rows(torch.tensor([1_000_001]))


def test_options_select_the_right_output(fixture_data):
    inputs, outputs = fixture_data
    emb, xy = inputs["L50u_tile_embeds"][0], inputs["L50u_coords"][0]
    for kwargs, key in [
        ({"layer": 1}, "all_layer_1"),
        ({"layer": "final"}, "default_cls"),
        ({"layer": 0, "pooling": "mean"}, "all_layer_globalpool_0"),
    ]:
        enc = gs.build_slide_encoder(
            FIXTURES / "slide_encoder_small.pth",
            device="cpu",
            mixed_precision=False,
            name="gigapath.slide-small",
            **kwargs,
        )
        torch.testing.assert_close(
            enc.embed_model_grid(emb, xy),
            torch.from_numpy(outputs[f"L50u_{key}"][0]),
            atol=TOL,
            rtol=TOL,
        )
        assert enc.dump_config()["kwargs"]["layer"] == kwargs["layer"]
    with pytest.raises(ExtractorArgumentError, match="layer must be"):
        histobag.build_feature_extractor("gigapath.slide-small", weights="random", layer=3)
    with pytest.raises(ExtractorArgumentError, match="pooling"):
        histobag.build_feature_extractor("gigapath.slide-small", weights="random", pooling="max")


# ------------------------------------------------------------------------------------------
# Dilated attention against a literal statement of the official algorithm
# ------------------------------------------------------------------------------------------


def reference_dilated_attention(q, k, v, segments, ratios):
    """The official steps one by one: per branch, pad to whole segments, pad each segment to a
    multiple of r, take the dilated diagonal, attend (padding not masked), scatter back with
    lse -1e8 where uncovered (or exactly 0), crop each branch's layout to N, softmax-combine."""
    batch, n, heads, dim = q.shape
    outs, lses = [], []
    for seg_len, r in zip(segments, ratios):
        s = min(seg_len, n)

        def gather(x, s=s, r=r):
            x = F.pad(x, (0, 0, 0, 0, 0, -n % s)).reshape(-1, s, heads, dim)
            x = F.pad(x, (0, 0, 0, 0, 0, -s % r))
            bn, g = x.shape[:2]
            x = x.reshape(bn, g // r, r, r, heads // r, dim).permute(0, 1, 4, 5, 2, 3)
            x = torch.diagonal(x, dim1=4, dim2=5)  # (bn, l, h, d, r)
            return x.permute(0, 1, 4, 2, 3).reshape(bn, g // r, heads, dim)

        qi, ki, vi = gather(q), gather(k), gather(v)
        scores = torch.einsum("blhd,bmhd->bhlm", qi, ki) * dim**-0.5
        lse = torch.logsumexp(scores, dim=-1)  # (bn, H, l)
        o = torch.einsum("bhlm,bmhd->blhd", scores.softmax(-1), vi)
        bn, rows = o.shape[:2]
        o = o.reshape(bn, rows, r, heads // r, dim).permute(0, 1, 3, 4, 2)
        o = torch.diag_embed(o, dim1=4, dim2=5)  # (bn, l, h, d, r1, r2)
        o = o.permute(0, 5, 2, 1, 4, 3).reshape(bn, heads, rows * r, dim)
        lse = lse.reshape(bn, r, heads // r, rows).permute(0, 3, 2, 1)
        lse = torch.diag_embed(lse, dim1=3, dim2=4).masked_fill(lambda_zero(lse), -1e8)
        lse = lse.permute(0, 4, 2, 1, 3).reshape(bn, heads, rows * r, 1)
        nseg = bn // batch
        o = o.reshape(batch, nseg, heads, rows * r, dim).permute(0, 2, 1, 3, 4)
        lse = lse.reshape(batch, nseg, heads, rows * r, 1).permute(0, 2, 1, 3, 4)
        outs.append(o.reshape(batch, heads, -1, dim)[:, :, :n])
        lses.append(lse.reshape(batch, heads, -1, 1)[:, :, :n])
    weights = torch.stack(lses).softmax(dim=0)
    out = (torch.stack(outs) * weights).sum(0)  # (B, H, N, D)
    return out.permute(0, 2, 1, 3).reshape(batch, n, heads * dim)


def lambda_zero(lse):
    """Mask of the zero entries of diag_embed(lse) (uncovered, or an lse of exactly 0)."""
    return torch.diag_embed(lse, dim1=3, dim2=4) == 0


@pytest.mark.parametrize("n_tokens", [3, 13, 37, 64])
@pytest.mark.parametrize("math_only", [False, True])
def test_dilated_attention_matches_reference(n_tokens, math_only, monkeypatch):
    if math_only:
        monkeypatch.setattr(longnet, "attention_with_lse", longnet.attention_with_lse_math)
    # A segment of 6 with ratio 4 pads each segment to 8: the official layout then shifts
    # later segments, which must be reproduced too.
    segments, ratios = (4, 6, 10), (1, 4, 2)
    torch.manual_seed(n_tokens)
    attn = longnet.DilatedAttention(32, 4, segments, ratios).eval()
    x = torch.randn(2, n_tokens, 32)
    with torch.inference_mode():
        got = attn(x)
        q, k, v = (p(x).view(2, n_tokens, 4, 8) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        ref = reference_dilated_attention(q, k, v, segments, ratios)
        expected = attn.out_proj(attn.inner_attn_ln(ref))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_attention_with_lse_kernels_agree():
    torch.manual_seed(1)
    q, k, v = (torch.randn(3, 4, 50, 16) for _ in range(3))
    out, lse = longnet.attention_with_lse(q, k, v)
    ref_out, ref_lse = longnet.attention_with_lse_math(q, k, v)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))


# ------------------------------------------------------------------------------------------
# Full-size architecture
# ------------------------------------------------------------------------------------------


def test_full_size_keys_and_shapes_equal_the_manifest():
    manifest = json.loads((FIXTURES / "keys_full.json").read_text())
    with torch.device("meta"):
        model = gs.SlideEncoder(gs.FULL)
    got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert got == manifest["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"] == 86_330_880
    assert list(gs.FULL.segment_length) == manifest["config"]["segment_length"]
    assert list(gs.FULL.dilated_ratio) == manifest["config"]["dilated_ratio"]
    assert model.axis_table.shape == (1000, 384)  # not the (1, 1000001, 768) table


def test_specs_are_listed():
    assert "gigapath.slide" in histobag.list_extractors(tag="slide-encoder")
    info = histobag.extractor_info("gigapath-slide")
    assert info.name == "gigapath.slide" and info.hf_filename == "slide_encoder.pth"
    assert info.license == "LicenseRef-prov-gigapath" and "Nature" in info.citation
    assert info.gated and info.checkpoint_keys == ("model",)
    assert histobag.extractor_info("gigapath").num_features == 768


# ------------------------------------------------------------------------------------------
# Coordinates, bags and the end-to-end pipeline
# ------------------------------------------------------------------------------------------


def test_coordinate_conversion():
    top_left = np.array([[0, 0], [16, 0], [48, 32], [160, 16]])
    assert grid_pitch(top_left) == 16
    assert grid_pitch(top_left[:1]) is None
    grid = gs.to_model_grid(top_left, pitch_px=16)
    assert grid.tolist() == [[0, 0], [256, 0], [768, 512], [2560, 256]]
    centres = top_left + 8
    assert np.array_equal(gs.to_model_grid(centres, pitch_px=16, convention="centre"), grid)
    # overlapping tiles (stride 8, side 16): grid positions, origin rounded once, no collisions
    half = np.array([[8, 0], [16, 0], [24, 8]])
    cells = gs.to_model_grid(half + 8, pitch_px=8, extent_px=16, convention="centre") // 256
    assert cells.tolist() == [[1, 0], [2, 0], [3, 1]]
    with pytest.raises(ExtractorArgumentError, match="1000 x 1000"):
        gs.to_model_grid(np.array([[0, 16_000]]), pitch_px=16)


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("slides")
    return sample_slide(folder / "slide-0.svs", size=(768, 512), levels=2)


def _tiny_pipeline(**kwargs):
    """GigaPath end to end with the reduced test encoders, on the CPU."""
    return histobag.build_feature_extractor(
        "gigapath",
        tile_encoder="gigapath.tile-tiny",
        slide_encoder="gigapath.slide-small",
        tile_encoder_weights="random",
        slide_encoder_weights=FIXTURES / "slide_encoder_small.pth",
        device="cpu",
        **kwargs,
    )


def test_gigapath_end_to_end_equals_bags(slide_path, tmp_path):
    pipe = _tiny_pipeline(mixed_precision=False)
    assert isinstance(pipe.slide, gs.GigaPathSlideExtractor)
    assert pipe.tile.tag == "gigapath.tile-tiny" and pipe.num_features == 256
    wsi = WSI(slide_path, TILE_PX, TILE_UM)
    direct = pipe(wsi, batch_size=64, num_workers=0)
    assert direct.shape == (256,) and torch.isfinite(direct).all()

    dataset = histobag.Dataset(slide_path.parent, tile_px=TILE_PX, tile_um=TILE_UM)
    for writer in ("pt", "h5"):
        bags = tmp_path / f"bags-{writer}"
        report = dataset.generate_feature_bags(
            pipe.tile, bags, writer=writer, batch_size=64, num_workers=0, progress=False
        )
        assert report.ok
        features, coords, convention = read_bag(bags, "slide-0")
        assert len(features) > 50 and convention == ("centre" if writer == "pt" else "top_left")
        out = tmp_path / f"embeddings-{writer}"
        assert pipe.slide.generate_and_save(bags, out).ok
        saved = torch.load(out / "slide-0.pt", weights_only=True)
        assert saved.dtype == torch.float32 and saved.shape == (256,)
        torch.testing.assert_close(saved, direct, atol=1e-5, rtol=1e-5)
        config = json.loads((out / EMBEDDINGS_CONFIG).read_text())
        assert config["slide_encoder"]["extractor"] == "gigapath.slide-small"
        assert config["bags_config"]["writer"] == writer
        assert not list(out.glob(".histobag-tmp-*"))
    # Another configuration may not be mixed into the folder; overwrite=True replaces it.
    other = gs.build_slide_encoder(
        "random", device="cpu", mixed_precision=False, name="gigapath.slide-small"
    )
    with pytest.raises(ConfigError, match="another configuration"):
        other.generate_and_save(bags, out)
    assert other.generate_and_save(bags, out, overwrite=True).ok
    assert not torch.equal(torch.load(out / "slide-0.pt", weights_only=True), direct)
    with pytest.raises(ExtractorArgumentError, match="whole slides"):
        pipe.forward_batch(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    # A different grid position changes the embedding (positions are used).
    shifted = pipe.slide.embed_bag(features, coords + 16 * 5, convention)
    assert not torch.allclose(shifted, direct, atol=1e-4)


def test_end_to_end_precision_and_compile_reach_both_encoders():
    # compiled lazily, at the first batch: building stays cheap
    pipe = _tiny_pipeline(precision="fp32", compile=True)
    assert pipe.tile.requested_precision == pipe.slide.requested_precision == "fp32"
    assert pipe.tile.precision == pipe.slide.precision == "float32"
    assert pipe.tile.compiled


def test_misuse_gives_clear_errors(small):
    with pytest.raises(ExtractorArgumentError, match="not from images"):
        small(np.zeros((2, 16, 16, 3), dtype=np.uint8))
    with pytest.raises(ExtractorArgumentError, match="not from images"):
        small.forward_batch(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ExtractorArgumentError, match=r"\(N, 64\)"):
        small(np.zeros((3, 65), dtype=np.float32), np.zeros((3, 2)))
    with pytest.raises(ExtractorArgumentError, match="no tiles"):
        small(np.zeros((0, 64), dtype=np.float32), np.zeros((0, 2)))
    with pytest.raises(ExtractorArgumentError, match="tile_encoder_weights"):
        histobag.build_feature_extractor("gigapath", weights=FIXTURES / "slide_encoder_small.pth")
