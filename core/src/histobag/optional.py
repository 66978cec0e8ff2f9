"""Optional dependencies: importing one that is missing says which extra installs it.

The core install (``pip install histobag``) lists, builds, reads slides, runs the engine and
writes ``pt``/``safetensors`` bags. Analysis and the ``h5`` writer need extras::

    pip install "histobag[analysis]"   # umap-learn, matplotlib, pyarrow, scipy
    pip install "histobag[h5]"         # h5py
    pip install "histobag[all]"
"""

from __future__ import annotations

import importlib
from types import ModuleType

from histobag.errors import MissingDependencyError

__all__ = ["require"]


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingDependencyError` naming the extra to install.

    Args:
        module: The module to import, e.g. ``"umap"``.
        extra: The histobag extra that installs it, e.g. ``"analysis"``.
        purpose: What needs it, for the message, e.g. ``"SlideMap"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs {module.split('.')[0]}, which is not installed. Install it with: "
            f'pip install "histobag[{extra}]"',
            module=module,
            extra=extra,
        ) from exc
