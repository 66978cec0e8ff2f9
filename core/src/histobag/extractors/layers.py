"""Features from named intermediate layers of a network, pooled and concatenated."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from histobag.errors import ExtractorArgumentError

#: The layer name meaning "the network's pooled pre-logits features".
POSTCONV = "postconv"
POOLINGS = ("avg", "max")


def normalise_layers(layers: str | Sequence[str] | None) -> list[str]:
    """``None`` → ``['postconv']``; a string → a one-item list; duplicates refused."""
    if layers is None:
        return [POSTCONV]
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names or len(set(names)) != len(names):
        raise ExtractorArgumentError(f"layers must be distinct module names, got {layers!r}")
    return names


def pool(activation: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, C, H, W) → (B, C) by avg/max over space; (B, N, C) tokens → (B, C) by mean/max over
    tokens; (B, C) unchanged."""
    if activation.ndim == 4:
        dims = (2, 3)
    elif activation.ndim == 3:
        dims = (1,)
    elif activation.ndim == 2:
        return activation
    else:
        raise ExtractorArgumentError(f"Cannot pool an activation of shape {activation.shape}")
    return activation.amax(dim=dims) if pooling == "max" else activation.mean(dim=dims)


class LayerFeatures(nn.Module):
    """Runs ``network`` and returns pooled activations of ``layers``, concatenated.

    Args:
        network: The model whose modules are named in ``layers``.
        layers: Module names (``dict(network.named_modules())`` keys) and/or ``"postconv"``.
        postconv: Computes the pooled pre-logits features of ``network`` from an input batch;
            it must run the modules named in ``layers``.
        pooling: ``"avg"`` or ``"max"``, for 4-D (and token) activations.
    """

    def __init__(
        self,
        network: nn.Module,
        layers: Sequence[str],
        postconv: Callable[[torch.Tensor], torch.Tensor],
        pooling: str = "avg",
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ExtractorArgumentError(f"pooling must be 'avg' or 'max', not {pooling!r}")
        modules = dict(network.named_modules())
        unknown = [name for name in layers if name != POSTCONV and name not in modules]
        if unknown:
            sample = ", ".join(n for n in list(modules)[1:12])
            raise ExtractorArgumentError(
                f"Unknown layer(s) {', '.join(unknown)}. Layers are module names of the "
                f"network (e.g. {sample}, ...) or 'postconv'."
            )
        self.network = network
        self.layers = list(layers)
        self.pooling = pooling
        self._postconv = postconv
        self._captured: dict[str, torch.Tensor] = {}
        for name in self.layers:
            if name != POSTCONV:
                modules[name].register_forward_hook(self._hook(name))

    def _hook(self, name: str) -> Callable[..., None]:
        def capture(_module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, (tuple, list)):
                output = output[0]
            self._captured[name] = output  # type: ignore[assignment]

        return capture

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled activations of every requested layer, concatenated along features."""
        self._captured.clear()
        pre_logits = self._postconv(x)
        parts = []
        for name in self.layers:
            if name == POSTCONV:
                parts.append(pre_logits.flatten(1))
                continue
            if name not in self._captured:
                raise ExtractorArgumentError(
                    f"Layer {name!r} did not run while computing features; pick a layer of "
                    "the feature trunk (before the classifier head)."
                )
            parts.append(pool(self._captured[name], self.pooling).flatten(1))
        self._captured.clear()
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
