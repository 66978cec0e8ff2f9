"""PLIP (Huang et al. 2023): a CLIP ViT-B/32 fine-tuned on pathology image-text pairs.

Image features are the projected image embeddings (transformers'
``CLIPModel.get_image_features``); :meth:`PLIPExtractor.text_features` gives the projected text
embeddings of captions or prompts, for zero-shot classification and retrieval. Images need only
torch and timm; text needs the CLIP tokenizer from ``transformers``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from histobag import ExtractorSpec
from histobag.errors import ExtractorArgumentError, HistobagError, WeightsError
from histobag.extractors.base import FeatureExtractor, ModelBuild
from histobag_noncommercial.clip_model import CLIPArch, CLIPImageText, adapt_clip

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: vinid/plip config.json: openai/clip-vit-base-patch32's architecture.
PLIP = CLIPArch()

_TEXT_BATCH = 256
#: Files of which a local tokenizer folder needs at least one.
TOKENIZER_FILES = ("vocab.json", "tokenizer.json")


def build_clip(arch: CLIPArch, *, tokenizer: str | None = None) -> ModelBuild:
    """A PLIP-style extractor with hyper-parameters ``arch`` and random weights.

    Args:
        arch: Sizes of the CLIP model.
        tokenizer: Where :meth:`PLIPExtractor.text_features` loads the tokenizer from; see
            :func:`build_plip`.
    """
    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        raise ExtractorArgumentError(
            f"tokenizer must be a folder or a Hugging Face repository id, not {tokenizer!r}"
        )
    model = CLIPImageText(arch).eval()
    return ModelBuild(
        module=model,
        adapt_state_dict=adapt_clip,
        num_features=arch.embed_dim,
        fixed_input_size=arch.image_size,
        extractor_cls=PLIPExtractor,
        extra={"tokenizer": None if tokenizer is None else str(tokenizer)},
    )


def build_plip(spec: ExtractorSpec, *, tokenizer: str | None = None) -> ModelBuild:
    """PLIP: 512 features, the projected image embedding.

    Args:
        spec: The extractor spec.
        tokenizer: Folder or Hugging Face repository holding the CLIP tokenizer files
            (``vocab.json``, ``merges.txt``) used by ``text_features``. Default: the folder of
            the ``weights=`` file (a ``save_pretrained`` folder or a download of the repository),
            or ``vinid/plip`` when the weights come from the Hub.
    """
    return build_clip(PLIP, tokenizer=tokenizer)


class PLIPExtractor(FeatureExtractor):
    """A :class:`~histobag.extractors.base.FeatureExtractor` for CLIP models that also
    embeds text into the image feature space."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.tokenizer_source = self.extra.get("tokenizer") or self._default_tokenizer_source()

    def _default_tokenizer_source(self) -> str:
        """The weights' folder when they are local, else the spec's Hugging Face repository."""
        source = self.weights_source
        if source.startswith("hf://") or source in ("random", "none"):
            return self.spec.hf_repo or ""
        path = Path(source).expanduser().resolve()
        return str(path if path.is_dir() else path.parent)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The CLIP tokenizer (loaded from :attr:`tokenizer_source` on first use)."""
        if self._tokenizer is None:
            tokenizer = load_tokenizer(
                self.tokenizer_source, revision=self._revision(), model=self.tag
            )
            expected = self.model.text.token_embedding.num_embeddings
            if len(tokenizer) != expected:
                raise WeightsError(
                    f"The tokenizer in {self.tokenizer_source!r} has {len(tokenizer)} tokens but "
                    f"{self.tag!r} embeds {expected}: it is not this model's tokenizer. Pass the "
                    f"right one with build_feature_extractor({self.tag!r}, tokenizer=...)."
                )
            self._tokenizer = tokenizer
        return self._tokenizer

    def _revision(self) -> str | None:
        return self.spec.hf_revision if self.tokenizer_source == self.spec.hf_repo else None

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Projected text embeddings, float32 (len(texts), num_features) on the model's device.

        As transformers' ``CLIPModel.get_text_features``: not L2-normalised (normalise both
        these and the image features before comparing them). Texts longer than the model's
        context (77 tokens) are truncated.
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ExtractorArgumentError("text_features expects a list of strings")
        tokenizer = self.tokenizer
        model: CLIPImageText = self.model  # type: ignore[assignment]
        eos = tokenizer.eos_token_id
        outputs = []
        for start in range(0, len(texts), _TEXT_BATCH):
            tokens = tokenizer(
                list(texts[start : start + _TEXT_BATCH]),
                padding=True,
                truncation=True,
                max_length=model.text.context_length,
                return_tensors="pt",
            )["input_ids"].to(self.device)
            with torch.inference_mode(), self.autocast():
                outputs.append(model.encode_text(tokens, eos).float())
        if not outputs:
            return torch.zeros(0, self.num_features, device=self.device)
        return torch.cat(outputs)


def load_tokenizer(
    source: str, *, revision: str | None = None, model: str = "plip"
) -> PreTrainedTokenizerBase:
    """The CLIP tokenizer of a folder or Hugging Face repository.

    Raises:
        HistobagError: ``transformers`` is not installed.
        WeightsError: The tokenizer files could not be found or downloaded.
    """
    try:  # the tokenizers-backed class (an alias of CLIPTokenizer in transformers 5)
        from transformers import CLIPTokenizerFast
    except ImportError as exc:
        raise HistobagError(
            f"Text features of {model!r} need the CLIP tokenizer from the transformers "
            "package: pip install transformers"
        ) from exc
    advice = (
        f"The CLIP tokenizer of {model!r} needs vocab.json and merges.txt (or tokenizer.json), "
        "as in https://huggingface.co/vinid/plip. Keep them next to the weights file, or pass "
        f"their folder (or a repository id) with build_feature_extractor({model!r}, "
        "tokenizer=...)."
    )
    folder = Path(source).expanduser()
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise WeightsError(f"No tokenizer files in {str(folder)!r}. {advice}")
    try:
        return CLIPTokenizerFast.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"Could not load a tokenizer from {source!r} ({exc}). {advice}") from exc
