"""CHIEF slide encoder: gated attention pooling of CHIEF-CTransPath tile features.

CHIEF (Wang et al., Nature 2024) was pretrained weakly supervised on whole slides: a CLAM-style
gated attention network scores every tile, and the slide is classified from the
attention-weighted tiles plus a text embedding of its organ. The slide embedding the authors
publish (their ``WSI_feature``, the output TRIDENT returns) uses only the scoring branch:

1. ``h = Dropout(ReLU(attention_net.0(x)))``: 768 → 512 per tile (dropout is off in eval);
2. gated attention: ``s = attention_c(tanh(attention_a.0(h)) * sigmoid(attention_b.0(h)))``,
   one score per tile (512 → 256 → 1);
3. ``w = softmax(s)`` over the slide's tiles, and the embedding is ``sum_i w_i x_i``: the
   attention-weighted mean of the tile features themselves (768-d, not of ``h``).

The organ index the official ``forward`` takes changes only the classification branch, not
``WSI_feature``. Coordinates are not used: the pooling is permutation invariant.

The published ``CHIEF_pretraining.pth`` is a flat state dict of the whole pretraining model;
:class:`CHIEFSlideEncoder` keeps the official module names (the classifier, instance
classifiers, ``att_head``, ``text_to_vision`` and the 19 x 768 ``organ_embedding`` buffer
included), so the file loads strictly and any other file is refused by key name. The official
code (and TRIDENT) run it in float32; so does :meth:`CHIEFSlideEncoder.embed`, whatever
autocast is active: it is a few small matrix products per slide.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from histobag import ExtractorSpec
from histobag.errors import ExtractorArgumentError
from histobag.extractors.base import ModelBuild
from histobag.slide_encoding import SlideEncoderExtractor
from histobag_noncommercial.abmil import ABMILSlideEncoder, GatedAttention, attention_pool


@dataclass(frozen=True)
class CHIEFConfig:
    """Sizes of the CHIEF pretraining model (defaults: the published ``size_arg="small"``).

    Attributes:
        in_features: Tile feature width (CHIEF-CTransPath: 768).
        hidden: Width after the first projection.
        attention_dim: Width of the gated attention's two branches.
        n_classes: Outputs of the slide classifier (and number of instance classifiers).
        n_organs: Rows of the organ text-embedding table.
        text_dim: Width of an organ text embedding.
        dropout: Dropout probability of the training graph (inactive in eval mode).
    """

    in_features: int = 768
    hidden: int = 512
    attention_dim: int = 256
    n_classes: int = 2
    n_organs: int = 19
    text_dim: int = 768
    dropout: float = 0.25


#: The published model.
FULL = CHIEFConfig()


class CHIEFSlideEncoder(ABMILSlideEncoder):
    """CHIEF's pretraining model with the official parameter names; computes ``WSI_feature``.

    Only ``attention_net`` takes part in the slide embedding; the other submodules are the
    pretraining heads, kept so the published checkpoint loads strictly.
    """

    def __init__(self, config: CHIEFConfig = FULL) -> None:
        super().__init__()
        self.config = config
        c = config
        self.attention_net = nn.Sequential(
            nn.Linear(c.in_features, c.hidden),
            nn.ReLU(),
            nn.Dropout(c.dropout),  # holds no weights, kept for the official index 3 below
            GatedAttention(c.hidden, c.attention_dim),
        )
        self.classifiers = nn.Linear(c.hidden, c.n_classes)
        self.instance_classifiers = nn.ModuleList(
            nn.Linear(c.hidden, 2) for _ in range(c.n_classes)
        )
        self.att_head = nn.Module()
        self.att_head.fc1 = nn.Linear(c.hidden, c.attention_dim)
        self.att_head.fc2 = nn.Linear(c.attention_dim, 1)
        self.text_to_vision = nn.Sequential(
            nn.Linear(c.text_dim, c.hidden), nn.ReLU(), nn.Dropout(c.dropout)
        )
        self.register_buffer("organ_embedding", torch.zeros(c.n_organs, c.text_dim))

    def attention_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Unnormalised attention score of each tile: (B, N, in_features) → (B, N) (the
        official ``attention_raw``, for heatmaps)."""
        return self.attention_net(features)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Slide embedding (B, in_features), in float32, of tile features (B, N, in_features),
        N ≥ 1 (coordinates are not used)."""
        if features.ndim != 3 or features.shape[-1] != self.config.in_features:
            raise ExtractorArgumentError(
                f"CHIEF takes tile features of shape (B, N, {self.config.in_features}), not "
                f"{tuple(features.shape)}"
            )
        if features.shape[1] == 0:
            raise ExtractorArgumentError("CHIEF cannot embed a slide without tiles")
        x = features.float()
        # The official model runs in float32; the pooling is too small to gain from autocast.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return attention_pool(self.attention_scores(x), x)


def build_chief(spec: ExtractorSpec) -> ModelBuild:
    """Factory of ``chief``: (1, N, 768) chief-ctranspath features → (1, 768).

    Args:
        spec: The ``chief`` spec.
    """
    return ModelBuild(
        module=CHIEFSlideEncoder(FULL),
        num_features=FULL.in_features,
        extractor_cls=SlideEncoderExtractor,
        extra={"in_features": FULL.in_features},
    )
