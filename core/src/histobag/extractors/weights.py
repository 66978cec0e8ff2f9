"""Finding, reading and strictly loading model weights.

Weights come from a local file the user names, or from Hugging Face through ``hf_hub_download``
(which honours ``HF_TOKEN``, ``HF_HUB_OFFLINE`` and the cache). Files are read with safetensors
or ``torch.load(weights_only=True)``: nothing untrusted is unpickled (DESIGN principle 4).
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from histobag.errors import (
    CheckpointMismatchError,
    GatedWeightsError,
    OfflineWeightsError,
    UnsafeCheckpointError,
    WeightsError,
)

if TYPE_CHECKING:
    import torch

#: Extensions read through ``torch.load(weights_only=True)``.
TORCH_EXTENSIONS = (".pth", ".pt", ".bin", ".ckpt", ".pth.tar")

_MAX_KEYS_SHOWN = 12


@dataclass(frozen=True)
class HubFile:
    """A file in a Hugging Face repository."""

    repo: str
    filename: str
    revision: str | None = None
    gated: bool = False

    @property
    def url(self) -> str:
        """The repository's model page."""
        return f"https://huggingface.co/{self.repo}"


def sha256sum(path: str | os.PathLike[str], chunk_size: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks so large checkpoints need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint accepts TCP connections (checked once per process).

    Without this check huggingface_hub retries an unreachable host for about 25 s per file.
    """
    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def download(hub: HubFile, *, model: str) -> Path:
    """Fetch ``hub`` through the Hugging Face cache and return the local path.

    Raises:
        GatedWeightsError: The repository needs approval and this account has none.
        OfflineWeightsError: Downloads are off or failed and the file is not cached.
        WeightsError: The repository or file does not exist.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    how_to_pass = (
        f"download {hub.filename!r} from {hub.url} yourself and pass "
        f"build_feature_extractor({model!r}, weights='/path/to/{hub.filename}')"
    )
    try:
        return Path(
            hf_hub_download(
                hub.repo, hub.filename, revision=hub.revision, local_files_only=not hub_reachable()
            )
        )
    except GatedRepoError as exc:
        raise GatedWeightsError(
            f"The weights of {model!r} are in the gated repository {hub.repo!r} and this "
            f"account has no access. Request access on {hub.url}, then log in with "
            "`hf auth login` (or set HF_TOKEN) and try again; or " + how_to_pass + "."
        ) from exc
    except LocalEntryNotFoundError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        reason = (
            "downloads are disabled (HF_HUB_OFFLINE is set)"
            if offline
            else "the download failed (no connection to the Hugging Face Hub?)"
        )
        raise OfflineWeightsError(
            f"The weights of {model!r} ({hub.repo}/{hub.filename}) are not in the local "
            f"Hugging Face cache and {reason}. Either download them once with network access, "
            f"or {how_to_pass}."
        ) from exc
    except RepositoryNotFoundError as exc:
        raise WeightsError(
            f"The Hugging Face repository {hub.repo!r} of {model!r} was not found (or it is "
            f"private and you are not logged in). Check {hub.url}, or {how_to_pass}."
        ) from exc
    except (RevisionNotFoundError, EntryNotFoundError) as exc:
        raise WeightsError(
            f"{hub.repo!r} has no file {hub.filename!r} at revision {hub.revision or 'main'!r}. "
            f"Check {hub.url}, or {how_to_pass}."
        ) from exc


#: Checkpoint names looked for in a folder passed as ``weights=``, after the spec's own file.
FOLDER_CHECKPOINTS = ("model.safetensors", "pytorch_model.bin")


def checkpoint_in_folder(folder: Path, preferred: str | None, *, model: str) -> Path:
    """The checkpoint inside ``folder``: ``preferred`` (the published file name) if present,
    else ``model.safetensors``, else ``pytorch_model.bin``.

    Raises:
        WeightsError: None of them is in the folder.
    """
    names = list(dict.fromkeys(n for n in (preferred, *FOLDER_CHECKPOINTS) if n))
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise WeightsError(
        f"{folder} is a folder without a checkpoint of {model!r} (looked for "
        f"{', '.join(names)}). Pass the checkpoint file itself as weights=."
    )


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint file safely: safetensors, or ``torch.load(weights_only=True)``.

    Raises:
        WeightsError: The file is missing or unreadable.
        UnsafeCheckpointError: The file pickles objects other than tensors and containers.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Weights file not found: {path}. Check the path passed as weights=.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as exc:  # safetensors raises its own untyped errors
            raise WeightsError(f"Could not read safetensors file {path}: {exc}") from exc
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"Refused to load {path}: it contains pickled Python objects other than tensors, "
            "and unpickling them could run arbitrary code. If you trust the file, convert it "
            "once to a plain state dict (or to .safetensors) and pass that instead. "
            f"Detail: {str(exc).splitlines()[0]}"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise WeightsError(
            f"Could not read {path} as a PyTorch checkpoint ({exc}). Is the file complete? "
            "Supported formats: .safetensors, or .pth/.pt/.bin saved with torch.save."
        ) from exc
    if not isinstance(loaded, Mapping):
        raise WeightsError(
            f"{path} holds a {type(loaded).__name__}, not a state dict (a mapping of names to "
            "tensors). Save the model's state_dict() instead of the whole model."
        )
    return dict(loaded)


def unwrap(checkpoint: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """Descend into nested checkpoints such as ``{'model': state_dict}``.

    Each key in ``keys`` is tried in order at each level; descent stops when none applies.
    """
    keys = tuple(keys)
    current: Mapping[str, Any] = checkpoint
    descended = True
    while descended:
        descended = False
        for key in keys:
            inner = current.get(key)
            if isinstance(inner, Mapping):
                current, descended = inner, True
                break
    return dict(current)


def strip_prefixes(state_dict: Mapping[str, Any], prefixes: Iterable[str]) -> dict[str, Any]:
    """Remove the first matching prefix (e.g. ``module.``) from every key."""
    prefixes = tuple(prefixes)
    out = {}
    for key, value in state_dict.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        out[key] = value
    return out


def _listing(title: str, items: list[str]) -> str:
    shown = "\n".join(f"    {item}" for item in items[:_MAX_KEYS_SHOWN])
    more = len(items) - _MAX_KEYS_SHOWN
    tail = f"\n    ... and {more} more" if more > 0 else ""
    return f"  {title} ({len(items)}):\n{shown}{tail}"


def load_strict(
    module: torch.nn.Module,
    state_dict: Mapping[str, Any],
    *,
    source: str,
    model: str,
    key_name: Callable[[str], str] | None = None,
) -> None:
    """Load ``state_dict`` into ``module``; every key and shape must match.

    ``key_name`` maps a module key to the checkpoint's own name for it, for the error message.

    Raises:
        CheckpointMismatchError: With the missing, unexpected and shape-mismatched keys listed.
    """
    own = module.state_dict()
    name = key_name or (lambda key: key)
    missing = sorted(name(k) for k in set(own) - set(state_dict))
    unexpected = sorted(name(k) for k in set(state_dict) - set(own))
    mismatched = sorted(
        f"{name(k)}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or mismatched:
        parts = [
            _listing(title, items)
            for title, items in (
                ("missing from the checkpoint", missing),
                ("unexpected in the checkpoint", unexpected),
                ("shape mismatches", mismatched),
            )
            if items
        ]
        raise CheckpointMismatchError(
            f"The weights in {source} do not fit {model!r}:\n"
            + "\n".join(parts)
            + "\nIs this the right checkpoint for this model? Official weights load as "
            "published; a fine-tuned or re-saved file may nest or rename its keys."
        )
    module.load_state_dict(state_dict, strict=True)
