"""KEEP (Zhou et al. 2026): the image branch of a knowledge-enhanced pathology CLIP model.

The image tower is timm's ViT-L/16 with LayerScale (as UNI); its class token goes through a
two-layer GELU head into the 768-dimensional joint space and is L2-normalised, as the official
``KEEPModel.encode_image``. The published ``model.safetensors`` also holds the BERT text tower
(``text.*``) and ``logit_scale``, which image features do not load; :meth:`KEEPExtractor.
text_features` loads the text tower on first use (:mod:`histobag_apache.keep_text`), with the
tokenizer (``vocab.txt``) and ``config.json`` of the repository, which need ``transformers``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from histobag import ExtractorSpec
from histobag.errors import ExtractorArgumentError, WeightsError
from histobag.extractors.base import FeatureExtractor, ModelBuild
from histobag_apache.keep_text import BertArch, BertText, bert_tokenizer_class, text_state_dict

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ARCH = "vit_large_patch16_224"

#: The ``timm.create_model`` arguments of the official ``modeling_keep.py``.
TIMM_KWARGS = MappingProxyType(
    {
        "img_size": 224,
        "patch_size": 16,
        "init_values": 1e-5,
        "num_classes": 0,
        "dynamic_img_size": True,
    }
)

#: ``projection_dim`` of the published config.json: the joint image-text space.
PROJECTION_DIM = 768

#: Checkpoint entries of the text branch, which the image extractor leaves out.
TEXT_PREFIXES = ("text.", "logit_scale")
#: The model card tokenises to this length (``padding="max_length"``, truncation).
TEXT_LENGTH = 256
_TEXT_BATCH = 256
#: What a local folder needs for text features: the WordPiece vocabulary and the text sizes.
TEXT_FILES = ("vocab.txt", "config.json")


class KEEPImage(nn.Module):
    """KEEP's image tower and projection head, under the published names.

    Args:
        visual: The timm ViT (class token after the final norm).
        projection_dim: Width of the joint space.
    """

    def __init__(self, visual: nn.Module, projection_dim: int = PROJECTION_DIM) -> None:
        super().__init__()
        self.visual = visual
        width = int(visual.num_features)
        self.visual_head = nn.Sequential(
            nn.Linear(width, projection_dim), nn.GELU(), nn.Linear(projection_dim, projection_dim)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-length projected embeddings (B, projection_dim) of a normalised batch."""
        projected = self.visual_head(self.visual(images))
        return nn.functional.normalize(projected, dim=-1)


def drop_text_branch(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The image branch of a full KEEP checkpoint (text tower and logit scale left out)."""
    return {k: v for k, v in state_dict.items() if not k.startswith(TEXT_PREFIXES)}


def build_keep_image(depth: int | None = None, *, tokenizer: str | None = None) -> ModelBuild:
    """KEEP's image branch with random weights; ``depth`` overrides the 24 blocks (tests).

    Args:
        depth: Number of transformer blocks (default: the published 24).
        tokenizer: Folder or Hugging Face repository of ``vocab.txt`` and ``config.json``
            for :meth:`KEEPExtractor.text_features`; see :func:`build_keep`.
    """
    import timm  # heavy; imported when a model is built, not when specs are listed

    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        raise ExtractorArgumentError(
            f"tokenizer must be a folder or a Hugging Face repository id, not {tokenizer!r}"
        )
    kwargs = dict(TIMM_KWARGS) if depth is None else {**TIMM_KWARGS, "depth": depth}
    visual = timm.create_model(ARCH, pretrained=False, **kwargs)
    return ModelBuild(
        module=KEEPImage(visual).eval(),
        adapt_state_dict=drop_text_branch,
        num_features=PROJECTION_DIM,
        # dynamic_img_size interpolates the position embeddings: any whole number of patches.
        input_multiple=int(visual.patch_embed.patch_size[0]),
        extractor_cls=KEEPExtractor,
        extra={"tokenizer": None if tokenizer is None else str(tokenizer)},
    )


def build_keep(spec: ExtractorSpec, *, tokenizer: str | None = None) -> ModelBuild:
    """KEEP: 768 features, the L2-normalised projected class token (``encode_image``).

    Args:
        spec: The extractor spec.
        tokenizer: Folder or Hugging Face repository holding ``vocab.txt``,
            ``tokenizer_config.json`` and ``config.json`` (the text tower's sizes), used by
            ``text_features``. Default: the folder of the ``weights=`` file, or
            ``Astaxanthin/KEEP`` when the weights come from the Hub.
    """
    return build_keep_image(tokenizer=tokenizer)


class KEEPExtractor(FeatureExtractor):
    """A :class:`~histobag.extractors.base.FeatureExtractor` that also embeds text into
    KEEP's joint space (``encode_text``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._text: BertText | None = None
        self.text_source = self.extra.get("tokenizer") or self._default_text_source()

    def _default_text_source(self) -> str:
        source = self.weights_source
        if source.startswith("hf://") or source in ("random", "none"):
            return self.spec.hf_repo or ""
        path = Path(source).expanduser().resolve()
        return str(path if path.is_dir() else path.parent)

    def _revision(self) -> str | None:
        return self.spec.hf_revision if self.text_source == self.spec.hf_repo else None

    def _weights_file(self) -> Path:
        source = self.weights_source
        if source in ("random", "none"):
            raise WeightsError("text_features needs KEEP's weights; this extractor has none")
        if not source.startswith("hf://"):
            path = Path(source).expanduser()
            return path if path.is_file() else path / (self.spec.hf_filename or "")
        from huggingface_hub import hf_hub_download  # already downloaded: read from the cache

        repo, name = self.spec.hf_repo or "", self.spec.hf_filename or ""
        return Path(hf_hub_download(repo, name, revision=self.spec.hf_revision))

    def _local_folder(self) -> Path | None:
        """:attr:`text_source` as a folder holding the text files, or None for a repository.

        Raises:
            WeightsError: The folder lacks ``vocab.txt`` or ``config.json``.
        """
        folder = Path(self.text_source).expanduser()
        if not folder.is_dir():
            return None
        missing = [n for n in TEXT_FILES if not (folder / n).is_file()]
        if missing:
            raise WeightsError(
                f"No {' or '.join(missing)} in {str(folder)!r}: KEEP's text features need the "
                f"tokenizer and config.json of https://huggingface.co/{self.spec.hf_repo}. Keep "
                "them next to the weights, or pass their folder (or a repository id) with "
                "build_feature_extractor('keep', tokenizer=...)."
            )
        return folder

    def _config_file(self) -> Path:
        folder = self._local_folder()
        if folder is not None:
            return folder / "config.json"
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(self.text_source, "config.json", revision=self._revision()))

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """KEEP's BERT tokenizer (loaded from :attr:`text_source` on first use)."""
        if self._tokenizer is None:
            BertTokenizerFast = bert_tokenizer_class()
            self._local_folder()  # names missing files before transformers does
            try:
                self._tokenizer = BertTokenizerFast.from_pretrained(
                    self.text_source, revision=self._revision()
                )
            except (OSError, ValueError) as exc:
                raise WeightsError(
                    f"Could not load KEEP's tokenizer from {self.text_source!r} ({exc}); keep "
                    "vocab.txt and config.json next to the weights or pass their folder with "
                    "build_feature_extractor('keep', tokenizer=...)"
                ) from exc
        return self._tokenizer

    @property
    def text_model(self) -> BertText:
        """The text tower, built from ``config.json`` and the checkpoint on first use."""
        if self._text is None:
            path = self._config_file()
            try:
                config = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise WeightsError(f"Could not read KEEP's config.json at {path} ({exc})") from exc
            text = BertText(BertArch.from_config(config.get("text_config") or {}))
            try:
                text.load_state_dict(text_state_dict(self._weights_file()), strict=True)
            except RuntimeError as exc:
                raise WeightsError(f"KEEP's text tower does not fit its weights: {exc}") from exc
            self._text = text.eval().to(self.device)
        return self._text

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings, float32 (len(texts), 768), as ``encode_text`` (the
        text tower's width, which the published config makes equal to the image features').

        Texts are tokenised as the model card does (lower case, padded to 256 tokens,
        truncated). Compare them with the image features by a dot product.
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ExtractorArgumentError("text_features expects a list of strings")
        tokenizer, model = self.tokenizer, self.text_model
        outputs = []
        for start in range(0, len(texts), _TEXT_BATCH):
            tokens = tokenizer(
                list(texts[start : start + _TEXT_BATCH]),
                max_length=TEXT_LENGTH,
                padding="max_length",
                truncation=True,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode(), self.autocast():
                pooled = model(
                    tokens["input_ids"], tokens["attention_mask"], tokens["token_type_ids"]
                )
            outputs.append(nn.functional.normalize(pooled.float(), dim=-1))
        if not outputs:
            return torch.zeros(0, self.num_features, device=self.device)
        return torch.cat(outputs)
