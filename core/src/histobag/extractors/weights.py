"""Finding, reading and strictly loading model weights.

Weights come from a local file the user names, or from Hugging Face through ``hf_hub_download``
(which honours ``HF_TOKEN``, ``HF_HUB_OFFLINE`` and the cache). Files are read with safetensors
or ``torch.load(weights_only=True)``: nothing untrusted is unpickled (DESIGN principle 4).
"""

from __future__ import annotations

import functools
import os
import pickle
import socket
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from histobag.errors import (
    CheckpointDtypeWarning,
    CheckpointMismatchError,
    GatedWeightsError,
    OfflineWeightsError,
    UnsafeCheckpointError,
    WeightsError,
    WeightsNotFoundError,
)
from histobag.files import sha256_file

if TYPE_CHECKING:
    import torch

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


#: Hex sha256 of a checkpoint file (the name packs call).
sha256sum = sha256_file


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


def download(hub: HubFile, *, model: str, pass_file: str | None = None) -> Path:
    """Fetch ``hub`` through the Hugging Face cache and return the local path.

    Args:
        hub: The file on the Hub.
        model: Its model's name, for messages.
        pass_file: How a user passes the file instead, for messages (default:
            ``build_feature_extractor(model, weights='/path/to/<file>')``; a tissue detector
            or another consumer names its own way).

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

    pass_file = pass_file or (
        f"build_feature_extractor({model!r}, weights='/path/to/{hub.filename}')"
    )
    how_to_pass = f"download {hub.filename!r} from {hub.url} yourself and pass {pass_file}"
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


def is_safetensors(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds safetensors, by its suffix or, without one, by its header.

    The Hugging Face cache keeps files as suffix-less blobs behind links: a resolved path
    says nothing about the format. A safetensors file starts with the little-endian length
    of its JSON header, then the header, which opens with ``{``.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint file safely: safetensors, or ``torch.load(weights_only=True)``.

    Safetensors are recognised by their suffix or, as for files in the Hugging Face cache
    reached through their links, by their header (:func:`is_safetensors`).

    Raises:
        WeightsNotFoundError: The file does not exist.
        WeightsError: The file is unreadable.
        UnsafeCheckpointError: The file pickles objects other than tensors and containers.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"Weights file not found: {path}. Check the path passed as weights=."
        )
    if is_safetensors(path):
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
    """Load ``state_dict`` into ``module``; every key, shape and dtype must fit.

    Steps: compare keys and shapes; compare dtypes (:func:`check_dtypes`: a conversion that
    keeps every value is made with a :class:`CheckpointDtypeWarning`, any other is refused);
    then ``load_state_dict(strict=True)``.

    Args:
        module: The module to load into.
        state_dict: The checkpoint's tensors, under the module's own key names.
        source: Where the checkpoint came from (a path or ``hf://`` address), for messages.
        model: The model's registered name, for messages.
        key_name: Maps a module key to the checkpoint's own name for it, so messages name keys
            as the checkpoint file does.

    Raises:
        CheckpointMismatchError: With the missing, unexpected and shape-mismatched keys listed,
            or the keys whose dtype cannot be converted without changing values.
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
    check_dtypes(own, state_dict, source=source, model=model, key_name=key_name)
    module.load_state_dict(state_dict, strict=True)


def _is_integral(dtype: torch.dtype) -> bool:
    """Integers and bool (the dtypes that hold no fractions)."""
    return not dtype.is_floating_point and not dtype.is_complex


def lossless_dtype(src: torch.dtype, dst: torch.dtype) -> bool:
    """Whether every value ``src`` can hold is exactly representable in ``dst``.

    ``float16`` and ``bfloat16`` fit in ``float32``, which fits in ``float64``; ``float64``
    does not fit in ``float32``, nor ``float16`` in ``bfloat16`` (fewer mantissa bits) or
    ``bfloat16`` in ``float16`` (smaller range). Integers fit in wider integers; ``bool`` in
    any integer type. Never across kinds (integer, floating point, complex).

    Args:
        src: The checkpoint tensor's dtype.
        dst: The model tensor's dtype.
    """
    import torch

    if src == dst:
        return True
    if src.is_floating_point and dst.is_floating_point:
        a, b = torch.finfo(src), torch.finfo(dst)
        return b.eps <= a.eps and b.max >= a.max and b.tiny <= a.tiny
    if _is_integral(src) and _is_integral(dst):
        if src == torch.bool:
            return True
        if dst == torch.bool:
            return False
        i, j = torch.iinfo(src), torch.iinfo(dst)
        return j.min <= i.min and j.max >= i.max
    return False


def _conversion_change(value: torch.Tensor, dst: torch.dtype) -> float:
    """The largest absolute change of ``value``'s elements when converted to ``dst`` (0.0:
    the conversion keeps every value exactly; NaN stays NaN)."""
    import torch

    if value.device.type == "meta" or value.numel() == 0:
        return 0.0  # no values to lose
    back = value.to(dst).to(value.dtype)
    same = back == value
    if value.is_floating_point() or value.is_complex():
        same |= torch.isnan(back) & torch.isnan(value)
    if bool(same.all()):
        return 0.0
    wide = torch.complex128 if value.is_complex() else torch.float64
    change = (back.to(wide) - value.to(wide)).abs()[~same]
    return float(change.max())


def check_dtypes(
    own: Mapping[str, Any],
    state_dict: Mapping[str, Any],
    *,
    source: str,
    model: str,
    key_name: Callable[[str], str] | None = None,
) -> None:
    """Check each checkpoint tensor's dtype against the model tensor it will be copied into.

    ``load_state_dict`` casts silently; this makes the cast visible or refuses it:

    - same dtype, or integer (or bool) into an integer buffer that holds every value (e.g.
      BatchNorm's ``num_batches_tracked``): loaded as is, without a word;
    - floating point of another precision whose values all survive the conversion (always for
      ``float16``/``bfloat16`` into ``float32``; for ``float64`` into ``float32`` only when each
      value is exactly a ``float32``, as after ``model.double()``): converted, with one
      :class:`CheckpointDtypeWarning` naming the dtypes;
    - anything else is a :class:`~histobag.errors.CheckpointMismatchError`: integer or bool
      tensors for floating-point parameters (a quantized or wrong checkpoint), complex tensors
      for real ones, values the model's dtype cannot hold exactly (rounded or overflowing),
      and values that are not tensors.

    Args:
        own: The model's state dict (its tensors give the target dtypes).
        state_dict: The checkpoint, under the model's key names; its keys and shapes already
            match ``own``'s.
        source: Where the checkpoint came from, for messages.
        model: The model's registered name, for messages.
        key_name: Maps a module key to the checkpoint's name for it, for messages.

    Raises:
        CheckpointMismatchError: Listing every key that cannot be converted without loss.
    """
    import torch

    name = key_name or (lambda key: key)
    not_tensors: list[str] = []
    wrong_kind: list[str] = []
    lossy: list[str] = []
    converted: dict[tuple[str, str], list[str]] = {}
    for key in sorted(set(own) & set(state_dict)):
        value, target = state_dict[key], own[key]
        if not isinstance(value, torch.Tensor):
            not_tensors.append(f"{name(key)}: {type(value).__name__}")
            continue
        src, dst = value.dtype, target.dtype
        if src == dst:
            continue
        pair = f"{name(key)}: {_dtype_name(src)} in the checkpoint, {_dtype_name(dst)} in the model"
        if (_is_integral(src) and not _is_integral(dst)) or (src.is_complex and not dst.is_complex):
            wrong_kind.append(pair)
            continue
        if not lossless_dtype(src, dst):
            change = _conversion_change(value, dst)
            if change:
                lossy.append(f"{pair} (largest change {change:.3g})")
                continue
        if not (_is_integral(src) and _is_integral(dst)):
            converted.setdefault((_dtype_name(src), _dtype_name(dst)), []).append(name(key))
    if not_tensors or wrong_kind or lossy:
        parts = [
            _listing(title, items)
            for title, items in (
                ("not tensors", not_tensors),
                ("integer or bool for floating-point, or complex for real tensors", wrong_kind),
                ("values the model's dtype cannot hold exactly", lossy),
            )
            if items
        ]
        advice = []
        if not_tensors:
            advice.append("A state dict maps parameter names to tensors only.")
        if wrong_kind:
            advice.append(
                "Integer weights for a floating-point model mean a quantized, converted or "
                "wrong checkpoint; PyTorch would cast them to whole numbers silently. Pass the "
                "floating-point checkpoint of this model."
            )
        if lossy:
            advice.append(
                "PyTorch would round (or overflow) these weights silently, so histobag "
                "refuses them. If that is acceptable, convert the checkpoint to the model's dtype "
                "yourself and pass that file, e.g. for float32: save_file({k: v.float() if "
                "v.is_floating_point() else v for k, v in load_file(path).items()}, "
                "'float32.safetensors') with safetensors.torch's load_file and save_file."
            )
        raise CheckpointMismatchError(
            f"The weights in {source} do not fit {model!r}:\n"
            + "\n".join(parts)
            + "\n"
            + "\n".join(advice)
        )
    if converted:
        lines = [
            f"{len(keys)} {src} tensor(s) to {dst} (e.g. {', '.join(keys[:3])})"
            for (src, dst), keys in converted.items()
        ]
        warnings.warn(
            f"The weights in {source} were converted to the dtypes of {model!r}: "
            + "; ".join(lines)
            + ". No value changed in the conversion.",
            CheckpointDtypeWarning,
            stacklevel=2,
        )


def _dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"``."""
    return str(dtype).removeprefix("torch.")
