"""Features coming back from the model's device without making it wait, and checked.

On CUDA, ``features.cpu()`` right after a forward pass blocks until the GPU has finished it, so
everything the host does next (handing the batch to the writer, the progress bar, fetching and
copying the next batch) runs while the GPU has nothing queued. :class:`FeaturesInFlight` starts
a non-blocking copy into pinned host memory and records a CUDA event instead; the engine queues
the next batch on the device before it waits for that event. On the CPU it is a plain view.

:func:`non_finite_rows` finds tiles whose features hold NaN or infinity (a model overflowing in
fp16, a broken checkpoint): the engine fails such a slide, naming the tiles, rather than write
a bag of them.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["FeaturesInFlight", "non_finite_rows"]


class FeaturesInFlight:
    """A batch's features on their way from the model's device to host memory.

    Args:
        features: The model's output, on any device.
    """

    def __init__(self, features: torch.Tensor) -> None:
        self.event: torch.cuda.Event | None = None
        if features.device.type == "cuda":
            # The copy runs on the model's stream after the forward pass; the event marks its
            # end, so only :meth:`numpy` waits (in the writer thread).
            self.host = torch.empty(features.shape, dtype=features.dtype, pin_memory=True)
            self.host.copy_(features, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(features.device))
        else:
            self.host = features.detach().to("cpu")

    def numpy(self) -> np.ndarray:
        """The features in host memory, waiting for the copy if it is still running."""
        if self.event is not None:
            self.event.synchronize()
        return self.host.numpy()


def non_finite_rows(features: np.ndarray) -> np.ndarray:
    """Positions of the rows of ``features`` (n, F) that hold a NaN or an infinity."""
    return np.flatnonzero(~np.isfinite(features).all(axis=tuple(range(1, features.ndim))))
