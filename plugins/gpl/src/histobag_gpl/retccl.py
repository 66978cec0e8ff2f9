"""RetCCL: a torchvision ResNet-50 without its classifier, loading the authors' checkpoint.

The authors' ResNet-50 has torchvision's layout and key names (stride in the 3x3 convolution of
each bottleneck); their ``retccl.pth`` is a flat state dict without ``fc.*``, so it loads
strictly into :func:`torchvision.models.resnet50` once ``fc`` is an identity.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet50

from histobag import ExtractorSpec
from histobag.extractors.base import ModelBuild


def build_retccl(spec: ExtractorSpec) -> ModelBuild:
    """Build RetCCL: (B, 3, H, W) normalised tiles → (B, 2048) average-pooled features.

    Args:
        spec: The ``retccl`` spec.
    """
    model = resnet50(weights=None)
    model.fc = nn.Identity()
    return ModelBuild(module=model)
