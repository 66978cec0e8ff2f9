"""Spec fields of published models: weights on the Hub, gating, the card's pipeline, BibTeX.

Helpers for packs writing the :class:`~histobag.specs.ExtractorSpec` of a model published with
a model card on the Hugging Face Hub. Plain data: importing this module imports no torch, so a
pack's spec module may use it (``histobag list`` imports spec modules).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

from histobag.errors import PluginError
from histobag.specs import IMAGENET_MEAN, IMAGENET_STD, ExtractorSpec, Preprocessing

__all__ = ["SpecTable", "bibtex_entries", "gated_note", "pil_resize_crop"]

#: What pipelines run on PIL images share: the resize before the crop, antialiased resampling.
_ON_PIL = Preprocessing(resize_first=True, antialias=True)

#: ``@kind{key,`` at the start of a line opens a BibTeX entry.
_ENTRY = re.compile(r"^@\w+\{([^,\s]+),", re.MULTILINE)


def gated_note(repo: str) -> str:
    """What the description of a model with gated weights ends with: where to ask for access."""
    return f"weights gated: request access on https://huggingface.co/{repo} first"


@dataclass(frozen=True)
class SpecTable:
    """What the models of one table in a pack share; :meth:`spec` adds one model's own facts.

    A pack lists its models one per line (``name: (module, repo, BibTeX key, num_features,
    preprocessing)``) and builds each spec as ``TABLE.spec(name, *row, description=...)``,
    like timm's ``_cfg()`` defaults under its ``default_cfgs``.

    Attributes:
        package: The pack's import package. A model's factory is ``build_<name>`` (``-`` and
            ``.`` read as ``_``) in ``<package>.<module>``; BibTeX keys are looked up in the
            package's ``citations.bib`` (:func:`bibtex_entries`).
        license: SPDX identifier of the weights' licence.
        license_url: Where the licence is stated; ``None``: each model's Hub page.
        tags: Labels of every model in the table.
        gated: Whether the Hub repositories need approval; a gated model's description ends
            with :func:`gated_note`.
        filename: The weights file in each Hub repository.
        input_size: Side of the square input the networks expect.
    """

    package: str
    license: str
    license_url: str | None = None
    tags: tuple[str, ...] = ()
    gated: bool = False
    filename: str = "pytorch_model.bin"
    input_size: int = 224

    def spec(
        self,
        name: str,
        module: str,
        repo: str | None,
        bibtex_keys: str | tuple[str, ...],
        num_features: int | None,
        preprocessing: Preprocessing,
        *,
        description: str,
        **fields: Any,
    ) -> ExtractorSpec:
        """The spec of ``name``, the table's defaults overridden by ``fields``.

        Args:
            name: Registered name.
            module: The module of ``package`` holding the factory ``build_<name>``.
            repo: Hugging Face repository of the official weights (``None``: no download).
            bibtex_keys: The entry, or entries, users should cite.
            num_features: Embedding length (``None`` when it depends on arguments).
            preprocessing: Default preprocessing, matching the official pipeline.
            description: What ``histobag list`` shows.
            fields: Other :class:`~histobag.specs.ExtractorSpec` fields.

        Raises:
            PluginError: A BibTeX key is not in the package's ``citations.bib``.
        """
        entries = bibtex_entries(self.package)
        keys = (bibtex_keys,) if isinstance(bibtex_keys, str) else bibtex_keys
        missing = [key for key in keys if key not in entries]
        if missing:
            raise PluginError(
                f"{name!r} cites {', '.join(missing)}, which {self.package}/citations.bib does "
                "not hold: add the entry, or correct the key in the pack's table"
            )
        identifier = name.replace("-", "_").replace(".", "_")
        license_url = fields.pop("license_url", self.license_url)
        if license_url is None and repo is not None:
            license_url = f"https://huggingface.co/{repo}"
        if self.gated and repo is not None:
            description = f"{description}; {gated_note(repo)}"
        defaults: dict[str, Any] = {
            "license": self.license,
            "tags": self.tags,
            "input_size": self.input_size,
        }
        if repo is not None:
            defaults.update(hf_repo=repo, hf_filename=self.filename, gated=self.gated)
        return ExtractorSpec(
            name=name,
            factory=f"{self.package}.{module}:build_{identifier}",
            license_url=license_url or "",
            citation="\n\n".join(entries[key] for key in keys),
            num_features=num_features,
            preprocessing=preprocessing,
            description=description,
            **{**defaults, **fields},
        )


def pil_resize_crop(
    resize: int,
    crop: int,
    *,
    interpolation: str,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> Preprocessing:
    """The evaluation pipeline most model cards publish, on the device.

    torchvision's ``Resize(resize)`` (shorter side) then ``CenterCrop(crop)`` and
    ``Normalize(mean, std)``, run by the card on PIL images. PIL's resampling always
    antialiases, so this does too; the resize comes first, so a larger tile is scaled down
    whole rather than cropped.
    """
    pipeline = _ON_PIL.replace(resize=resize, center_crop=crop, interpolation=interpolation)
    return pipeline.replace(mean=mean, std=std)


@functools.cache
def bibtex_entries(package: str, filename: str = "citations.bib") -> Mapping[str, str]:
    """The BibTeX entries of a ``.bib`` file shipped inside ``package``, by citation key.

    Each entry runs from its ``@kind{key,`` line to the next one; its text is kept as written
    (what ``histobag info`` shows and bags record). Text before the first entry (a ``%``
    comment) is skipped. The file is read once per process.

    Raises:
        PluginError: The file is missing, holds no entry, or repeats a key.
    """
    try:
        text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise PluginError(
            f"{package} ships no {filename} ({exc}); reinstall the pack that provides it"
        ) from exc
    starts = list(_ENTRY.finditer(text))
    if not starts:
        raise PluginError(f"{package}/{filename} holds no BibTeX entry (@kind{{key, ...}})")
    entries: dict[str, str] = {}
    for match, end in zip(starts, [*(m.start() for m in starts[1:]), len(text)]):
        key = match.group(1)
        if key in entries:
            raise PluginError(f"{package}/{filename} holds the BibTeX key {key!r} twice")
        entries[key] = text[match.start() : end].strip()
    return MappingProxyType(entries)
