"""The parity harness of the packs' tests (import as ``tests.parity``).

Every named model is proved equal to its reference implementation in the same steps:

1. Build the reference (timm, transformers, the authors' code) and move every floating
   parameter and buffer away from its initialisation (:func:`perturbed`): a scrambled key
   mapping, a LayerScale left at its init or a missed BatchNorm statistic cannot pass.
2. Save those weights as the authors published theirs (:func:`save_checkpoint`, or the
   reference's own ``save_pretrained``).
3. Load that file through histobag, in float32 on the CPU (:func:`build_fp32`).
4. Compare the embeddings of real histology tiles (:func:`assert_parity`: at most
   :data:`ATOL` apart, and far from a collapsed output).

The timm ViTs built by :func:`histobag.extractors.vit.timm_vit_build` (Virchow, H-optimus-0,
UNI, UNI2-h, Virchow2, GigaPath's tile encoder) share whole tests: a pack's test module writes
each model card out once (:class:`TimmCard`) and subclasses :class:`TimmCardChecks`.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn

import histobag
from histobag.errors import CheckpointMismatchError, ExtractorArgumentError
from histobag.extractors.preprocess import build_transform
from histobag.specs import IMAGENET_MEAN, IMAGENET_STD
from tests.helpers import histology_tiles, perturb_

#: Parity tolerance between histobag and a reference implementation, fp32 on the CPU.
ATOL = 1e-5

Norm = tuple[tuple[float, float, float], tuple[float, float, float]]
IMAGENET: Norm = (IMAGENET_MEAN, IMAGENET_STD)


# -- the four steps ------------------------------------------------------------------------


def perturbed(model: nn.Module, *, seed: int = 0, scale: float = 0.5) -> nn.Module:
    """``model`` in eval mode, every floating tensor of its state dict changed in place
    (:func:`tests.helpers.perturb_`); fails if one was left as initialised."""
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    perturb_(model, seed=seed, scale=scale)
    after = model.state_dict()
    unchanged = [key for key, value in before.items() if torch.equal(value, after[key])]
    assert not unchanged, f"perturb_ left these tensors as initialised: {unchanged}"
    return model.eval()


def save_checkpoint(state_dict: Mapping[str, Any], path: Path, *, nest: str = "") -> Path:
    """``torch.save`` the weights as published: flat, or under one key (``{'model': ...}``)."""
    torch.save({nest: dict(state_dict)} if nest else dict(state_dict), path)
    return path


def build_fp32(name: str, weights: Any = None, **kwargs: Any) -> histobag.FeatureExtractor:
    """The registered extractor ``name`` with ``weights``, in float32 on the CPU."""
    return histobag.build_feature_extractor(
        name, weights=weights, device="cpu", mixed_precision=False, **kwargs
    )


def mismatch_message(
    name: str, path: Path, state_dict: Mapping[str, Any], *, nest: str = ""
) -> str:
    """Save an altered checkpoint at ``path`` (safetensors by its suffix, else ``torch.save``
    under ``nest``), build ``name`` from it, and return the :class:`CheckpointMismatchError`
    that must follow, as text."""
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(dict(state_dict), path)
    else:
        save_checkpoint(state_dict, path, nest=nest)
    with pytest.raises(CheckpointMismatchError) as caught:
        build_fp32(name, path)
    return str(caught.value)


def assert_parity(
    ours: torch.Tensor, expected: torch.Tensor, *, atol: float = ATOL, min_std: float = 0.1
) -> None:
    """Same shape, float32, at most ``atol`` apart; the reference's output varies by more than
    ``min_std`` (a collapsed output would match anything)."""
    assert ours.dtype == torch.float32
    assert ours.shape == expected.shape
    assert float((ours - expected).abs().max()) <= atol
    assert float(expected.std()) > min_std


def to_float(tiles: np.ndarray) -> torch.Tensor:
    """uint8 tiles (B, H, W, 3) as a float batch (B, 3, H, W) in [0, 1]."""
    return torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255


def card_preprocessing_gap(
    name: str, card_transform: Callable[..., Any], tile_px: int, size: int
) -> tuple[torch.Tensor, float]:
    """histobag's on-device preprocessing of ``name`` against the model card's pipeline on two
    real ``tile_px`` tiles: |ours − card's PIL pipeline| (PIL rounds resized pixels to uint8),
    and the max gap to the card's pipeline run on float tensors (float precision).

    ``card_transform(pil=True)`` takes a PIL image, ``card_transform(pil=False)`` a float batch.
    """
    from PIL import Image

    tiles = histology_tiles(2, tile_px, seed=1)
    pil = card_transform(pil=True)
    expected = torch.stack([pil(Image.fromarray(tile)) for tile in tiles])
    batch = torch.from_numpy(tiles).permute(0, 3, 1, 2)
    ours = build_transform(histobag.extractor_info(name).preprocessing)(batch)
    assert ours.shape == expected.shape == (2, 3, size, size)
    on_tensors = float((ours - card_transform(pil=False)(to_float(tiles))).abs().max())
    return (ours - expected).abs(), on_tensors


def normalised(tiles: np.ndarray, norm: Norm = IMAGENET) -> torch.Tensor:
    """uint8 tiles (B, H, W, 3) as the float batch a reference model takes: /255, normalised."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in norm)
    return (to_float(tiles) - mean) / std


class _OneSpec:
    """A plugin registering one spec in-process."""

    def __init__(self, spec: histobag.ExtractorSpec) -> None:
        self.spec = spec

    @histobag.hookimpl
    def histobag_extractors(self) -> list[histobag.ExtractorSpec]:
        return [self.spec]


@contextlib.contextmanager
def registered_variant(name: str, factory: str, *, suffix: str) -> Iterator[str]:
    """Register ``name``'s spec again as ``name + suffix`` with another factory (e.g. one
    building fewer blocks); yields the new name and unregisters it afterwards."""
    spec = histobag.extractor_info(name).replace(
        name=name + suffix, aliases=(), factory=factory, distribution="", version=""
    )
    plugin = histobag.register_plugin(_OneSpec(spec), name=spec.name)
    try:
        yield spec.name
    finally:
        histobag.unregister_plugin(plugin)


# -- what a pack lists ------------------------------------------------------------------------


def assert_gated_spec(name: str, *, pack: str, repo: str, license: str, num_features: int) -> None:
    """The listed spec of a gated ViT: its pack, licence, ``pytorch_model.bin`` in ``repo``, 224
    px input, bfloat16 (ViT-H/g activations overflow float16), where to ask for access, and a
    balanced BibTeX entry."""
    spec = histobag.extractor_info(name)
    assert spec.pack == pack
    assert spec.license == license and spec.license_url.startswith("https://")
    assert (spec.hf_repo, spec.hf_filename, spec.gated) == (repo, "pytorch_model.bin", True)
    assert (spec.num_features, spec.input_size) == (num_features, 224)
    assert spec.autocast_dtype == "bfloat16"
    assert {"foundation", "pathology"} <= set(spec.tags)
    assert f"request access on https://huggingface.co/{repo}" in spec.description
    assert spec.citation.startswith("@")
    assert spec.citation.count("{") == spec.citation.count("}")
    assert spec.model_kwargs == ()


def info_text(name: str, capsys: pytest.CaptureFixture[str]) -> str:
    """What ``histobag info <name>`` prints."""
    from histobag.cli import main

    assert main(["info", name]) == 0
    return capsys.readouterr().out


def assert_imports_no_heavy_modules(module: str, *heavy: str) -> None:
    """In a fresh interpreter, importing ``module`` and calling its ``specs()`` imports none of
    ``heavy`` (listing extractors stays fast)."""
    code = (
        f"import sys, {module} as m; m.specs(); "
        f"heavy = set({list(heavy)!r}) & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- timm ViTs built from model-card kwargs ---------------------------------------------------


def cls_token(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The card's embedding when the timm model itself pools the class token."""
    return model(x)


def cls_and_patch_mean(first_patch: int) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """The card's ``cat([out[:, 0], out[:, first_patch:].mean(1)])`` (tokens before
    ``first_patch`` are the class token and registers)."""

    def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        return torch.cat([out[:, 0], out[:, first_patch:].mean(1)], dim=-1)

    return embed


@dataclass(frozen=True)
class TimmCard:
    """A timm ViT as its model card describes it, written out apart from the pack's code.

    Attributes:
        module: The pack's model module; its ``TIMM_KWARGS`` get fewer blocks for parity.
        arch: The timm architecture of the card's ``create_model`` call.
        kwargs: The card's ``create_model`` arguments (the published ``config.json`` too).
        embed: The card's embedding of the model's output (:func:`cls_token`...).
        million_params: The published parameter count, in millions.
        pipeline: The card's transform: ``(interpolation, resize, center crop)``.
        tile_px: Side of the tiles whose embeddings are compared.
        pil_px: Side of the tiles compared with the PIL pipeline (default ``tile_px``).
        norm: The card's normalisation (mean, std).
    """

    module: ModuleType
    arch: str
    kwargs: Mapping[str, Any]
    embed: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    million_params: float
    pipeline: tuple[str, int | None, int | None]
    tile_px: int = 224
    pil_px: int | None = None
    norm: Norm = IMAGENET

    def __post_init__(self) -> None:
        if self.pil_px is None:
            object.__setattr__(self, "pil_px", self.tile_px)

    @property
    def dynamic(self) -> bool:
        """Whether the network interpolates its position embeddings (any input size)."""
        return bool(self.kwargs.get("dynamic_img_size", False))

    def reference(self, depth: int) -> nn.Module:
        """The card's network with ``depth`` blocks, perturbed; its LayerScales far from init."""
        network = timm_create(self.arch, **{**self.kwargs, "depth": depth})
        network = perturbed(network)
        gammas = [p.detach() for k, p in network.named_parameters() if k.endswith(".gamma")]
        assert len(gammas) == 2 * depth  # LayerScale after attention and after the MLP
        assert min(float(g.abs().mean()) for g in gammas) > 1e-3  # init_values is 1e-5
        return network

    def transform(self, *, pil: bool) -> Callable[[Any], torch.Tensor]:
        """The card's torchvision pipeline: on float tensors, or on a PIL image (``pil``)."""
        from torchvision import transforms as T
        from torchvision.transforms import InterpolationMode

        interpolation, resize, crop = self.pipeline
        steps: list[Any] = []
        if resize:
            mode = InterpolationMode(interpolation)
            # PIL always antialiases; on tensors antialias=True gives the same kernel.
            steps.append(T.Resize(resize, interpolation=mode, antialias=True))
        if crop:
            steps.append(T.CenterCrop(crop))
        if pil:
            steps.append(T.ToTensor())
        return T.Compose([*steps, T.Normalize(*self.norm)])

    def reference_batch(self, tiles: np.ndarray) -> torch.Tensor:
        """The card's pipeline on float tensors (PIL's uint8 rounding is checked apart)."""
        return self.transform(pil=False)(to_float(tiles))


def timm_create(arch: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(arch, pretrained=False, **kwargs)``."""
    import timm

    return timm.create_model(arch, pretrained=False, **kwargs)


def shrink(monkeypatch: pytest.MonkeyPatch, module: ModuleType, depth: int) -> None:
    """Make ``module``'s factory build ``depth`` blocks (its ``TIMM_KWARGS`` plus depth)."""
    kwargs = MappingProxyType({**module.TIMM_KWARGS, "depth": depth})
    monkeypatch.setattr(module, "TIMM_KWARGS", kwargs)


class TimmCardChecks:
    """Every check of the timm ViTs, on each card of ``cards`` (a pack's test module subclasses
    this as ``Test...`` and sets ``cards = {registered name: TimmCard}``)."""

    cards: ClassVar[Mapping[str, TimmCard]] = {}

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Run each test once per card, its registered name as the id."""
        if "name" in metafunc.fixturenames:
            metafunc.parametrize("name", list(self.cards))

    def test_full_size_layout_matches_official(self, name: str) -> None:
        """On the meta device: the registered factory's network has exactly the keys and
        shapes of the card's (the official checkpoint's layout), the card's network has the
        published size, and the input size is fixed exactly when the card's has no
        dynamic_img_size."""
        card = self.cards[name]
        spec = histobag.extractor_info(name)
        with torch.device("meta"):
            build = spec.load_factory()(spec)
            reference = timm_create(card.arch, **card.kwargs)
        assert _layout(build.weights_target) == _layout(reference)
        n_params = sum(p.numel() for p in reference.parameters())
        assert n_params == pytest.approx(card.million_params * 1e6, rel=0.005)
        assert build.fixed_input_size == (None if card.dynamic else spec.input_size)

    def test_embeddings_match_model_card(
        self, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The four steps at two blocks: a flat ``pytorch_model.bin`` of the perturbed card
        network, loaded by the registered factory, against the card's network and pipeline."""
        card = self.cards[name]
        extractor, reference = _shrunk_pair(name, card, tmp_path, monkeypatch, depth=2)
        tiles = histology_tiles(2, card.tile_px)
        ours = extractor(tiles)
        with torch.inference_mode():
            expected = card.embed(reference, card.reference_batch(tiles))
        assert ours.shape == (2, extractor.num_features)
        assert_parity(ours, expected)

    def test_unresized_tiles(
        self, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Tiles of another size with resize and crop off: a network with dynamic_img_size
        runs them (position embeddings interpolated, parity kept); one without refuses them.
        112 px: a multiple of both patch sizes (14, 16), which dynamic_img_size needs."""
        card = self.cards[name]
        tiles = histology_tiles(2, 112)
        if not card.dynamic:
            shrink(monkeypatch, card.module, depth=1)
            extractor = histobag.build_feature_extractor(
                name, weights="random", device="cpu", resize=False, center_crop=False
            )
            with pytest.raises(ExtractorArgumentError, match="only accepts 224x224"):
                extractor(tiles)
            return
        extractor, reference = _shrunk_pair(
            name, card, tmp_path, monkeypatch, depth=1, resize=False, center_crop=False
        )
        ours = extractor(tiles)
        with torch.inference_mode():
            expected = card.embed(reference, normalised(tiles, card.norm))
        assert_parity(ours, expected)

    def test_preprocessing_matches_pil_pipeline(self, name: str) -> None:
        """histobag's on-device transform against the card's torchvision pipeline on PIL
        images, up to PIL's rounding to uint8 (about half a grey level); antialiasing is what
        makes them agree."""
        from PIL import Image

        card = self.cards[name]
        spec = histobag.extractor_info(name)
        tiles = histology_tiles(2, card.pil_px)
        pil = card.transform(pil=True)
        expected = torch.stack([pil(Image.fromarray(tile)) for tile in tiles])
        batch = torch.from_numpy(tiles).permute(0, 3, 1, 2)
        ours = build_transform(spec.preprocessing)(batch)
        assert ours.shape == expected.shape == (2, 3, 224, 224)
        diff = (ours - expected).abs()
        if card.pipeline[1] is None:  # nothing resampled: exact
            assert float(diff.max()) <= 1e-6
            return
        assert float(diff.mean()) < 0.007
        assert float(diff.max()) < 0.06
        # Without antialiasing the resampling kernel differs from PIL's, and it shows.
        plain = build_transform(spec.preprocessing.replace(antialias=False))(batch)
        assert float((plain - expected).abs().mean()) > 0.009


def _layout(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def _shrunk_pair(
    name: str,
    card: TimmCard,
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    depth: int,
    **kwargs: Any,
) -> tuple[histobag.FeatureExtractor, nn.Module]:
    """(the registered extractor at ``depth`` blocks, loaded from the saved weights of the
    perturbed card network, that network)."""
    reference = card.reference(depth)
    checkpoint = save_checkpoint(reference.state_dict(), folder / "pytorch_model.bin")
    shrink(monkeypatch, card.module, depth)
    return build_fp32(name, checkpoint, **kwargs), reference
