"""``bags_config.json``: how a folder of feature bags was made, and rebuilding from it.

The file records the extractor (registered name + keyword arguments), the stain normalizer and
its fit, the tile transforms (registered names + keyword arguments, in order), the tile
geometry, the writer and its coordinate convention, and for reproducibility the weights'
sha256, the resolved preprocessing, the precision, package versions and the creation time. A
resumed run compares the *fingerprint* (everything that changes features) and refuses to mix
configurations in one folder.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from histobag._version import __version__
from histobag.errors import (
    ConfigError,
    ExtractorArgumentError,
    HistobagError,
    RenamedNormalizerWarning,
    WeightsError,
    WeightsNotFoundError,
)
from histobag.extractors.registry import RANDOM_WEIGHTS, build_feature_extractor
from histobag.norm import normalizer_config
from histobag.plugins import transform_specs
from histobag.slide.errors import TileSettingsError
from histobag.slide.tissue import LEGACY_TISSUE_DETECTOR, tissue_record
from histobag.tile_transforms import resolve_tile_transforms

CONFIG_NAME = "bags_config.json"

#: Keys whose values must match for bags to be considered the same configuration.
FINGERPRINT_KEYS = (
    "extractor",
    "normalizer",
    "tile_transforms",
    "tissue",
    "reader",
    "num_features",
    "tile_px",
    "tile_um",
    "writer",
)
PROVENANCE_FINGERPRINT = ("weights_sha256", "preprocessing", "precision")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def make_config(
    extractor: Any,
    normalizer: Any,
    *,
    tile_px: int,
    tile_um: float | str,
    writer: str,
    coordinates: str,
    tile_transforms: Sequence[Any] = (),
    tissue: dict[str, Any] | None = None,
    reader: str = "auto",
) -> dict[str, Any]:
    """The configuration of a bag run (JSON-able).

    ``tile_transforms`` are built :class:`histobag.tile_transforms.TileTransform` objects; each is
    recorded as ``{"name", "kwargs"}`` and its pack's version goes with the other versions.
    ``tissue`` is the record of the dataset's tissue detection (``{"name", "kwargs"}`` from
    :func:`histobag.slide.tissue.tissue_record`; ``None``: none); ``reader`` its
    slide reader (``"auto"`` or a name; the reader each slide was read with, and its version,
    go to the run report).
    """
    provenance = extractor.provenance()
    pack = provenance.pop("pack")
    provenance["versions"] = {
        "histobag": __version__,
        pack["name"]: pack["version"] or _version(pack["name"]),
        "torch": _version("torch"),
        "timm": _version("timm"),
    }
    for transform in tile_transforms:
        dist = transform.distribution
        if dist and not dist.startswith("<"):  # not "<in-process>"
            provenance["versions"].setdefault(dist, _version(dist))
    provenance["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    provenance["random_weights"] = extractor.weights_source == "random"
    return {
        "extractor": extractor.dump_config(),
        "normalizer": normalizer_config(normalizer),
        "tile_transforms": [transform.to_dict() for transform in tile_transforms],
        "tissue": tissue,
        "reader": reader,
        "num_features": extractor.num_features,
        "tile_px": tile_px,
        "tile_um": tile_um,
        "writer": writer,
        "coordinates": coordinates,
        "license": extractor.license,
        "citation": extractor.citation,
        "provenance": provenance,
    }


def _weights_file(config: dict[str, Any]) -> str | None:
    """The local weights file recorded in a configuration (None: downloaded, random or none)."""
    extractor = config.get("extractor")
    kwargs = extractor.get("kwargs") if isinstance(extractor, dict) else None
    weights = kwargs.get("weights") if isinstance(kwargs, dict) else None
    return weights if isinstance(weights, str) and weights != RANDOM_WEIGHTS else None


def fingerprint(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a configuration that determines the features.

    A local weights file counts by its sha256 (``weights_sha256``), not by the spelling of its
    path: the same file under another name, or moved, is the same configuration. Options that
    change speed only (``compile``) do not count. A configuration written before tile
    transforms existed (no ``tile_transforms``) has none.
    """
    out = {key: config.get(key) for key in FINGERPRINT_KEYS}
    out["tile_transforms"] = out["tile_transforms"] or []
    out["tissue"] = _tissue_fingerprint(config.get("tissue", LEGACY_TISSUE_DETECTOR))
    out["reader"] = config.get("reader", "auto")
    provenance = config.get("provenance") or {}
    out.update({key: provenance.get(key) for key in PROVENANCE_FINGERPRINT})
    ignored = set(_SPEED_ONLY_KWARGS)
    if _weights_file(config) is not None and out["weights_sha256"]:
        ignored.add("weights")
    extractor = out["extractor"]
    if isinstance(extractor, dict) and isinstance(extractor.get("kwargs"), dict):
        kwargs = {k: v for k, v in extractor["kwargs"].items() if k not in ignored}
        out["extractor"] = {**extractor, "kwargs": kwargs}
    return json.loads(json.dumps(out))  # normalise tuples/ints for comparison


def _tissue_fingerprint(recorded: Any) -> Any:
    """A recorded tissue detection in full (``{"name", "kwargs"}`` with every parameter).

    Configurations written before detectors were recorded with their parameters hold a bare
    name; a registered detector's name stands for its defaults. (No record at all means Otsu,
    then the only detector: :data:`~histobag.slide.tissue.LEGACY_TISSUE_DETECTOR`.)
    """
    if isinstance(recorded, str):
        try:
            return tissue_record(recorded)
        except TileSettingsError:  # a detector no longer installed: compare its name
            return {"name": recorded, "kwargs": None}
    return recorded


#: Build options that change speed, not features: a compiled run may resume a plain one.
_SPEED_ONLY_KWARGS = ("compile",)


def _weights_label(config: dict[str, Any]) -> str:
    """``sha256 <digest> (<where from>)`` of a configuration's weights, for messages."""
    provenance = config.get("provenance") or {}
    digest = provenance.get("weights_sha256") or "none"
    where = _weights_file(config) or provenance.get("weights_source") or "no weights file"
    return f"sha256 {digest} ({where})"


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable fingerprint differences between two configurations.

    Weights that differ are named by both digests and both files, e.g.
    ``weights: sha256 3f2a... (/data/r18.safetensors) -> sha256 9c41... (/tmp/r18.safetensors)``.
    """
    a, b = fingerprint(old), fingerprint(new)
    out = []
    for key in a:
        if a[key] == b[key]:
            continue
        if key == "weights_sha256":
            out.append(f"weights: {_weights_label(old)} -> {_weights_label(new)}")
        else:
            out.append(f"{key}: {a[key]!r} -> {b[key]!r}")
    return out


def config_path(path: str | os.PathLike[str]) -> Path:
    """``path`` itself if it is a file, else ``path/bags_config.json``."""
    path = Path(path)
    return path if path.is_file() or path.suffix == ".json" else path / CONFIG_NAME


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and minimally validate a ``bags_config.json`` (or the one in a bags folder)."""
    file = config_path(path)
    if not file.is_file():
        raise ConfigError(
            f"No {CONFIG_NAME} at {file}. Is this a folder written by generate_feature_bags?"
        )
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file} is not valid JSON ({exc}); the file is damaged.") from exc
    _validate(config, file)
    _migrate_normalizer(config, file)
    return config


#: Stain normalizer names whose meaning changed in histobag 0.2.0, when they took slideflow's,
#: and the methods that reproduce what they meant before.
RENAMED_NORMALIZERS = {
    "macenko": "legacy_macenko",
    "reinhard": "legacy_reinhard",
    "reinhard_mask": "legacy_reinhard_mask",
    "vahadane": "legacy_vahadane",
}
SLIDEFLOW_NAMES_SINCE = (0, 2)


def _release(version: Any) -> tuple[int, ...] | None:
    """``"0.1.0"`` → ``(0, 1, 0)``; None when it cannot be read."""
    try:
        return tuple(int(part) for part in str(version).split("+")[0].split(".")[:3])
    except ValueError:
        return None


def _migrate_normalizer(config: dict[str, Any], file: Path) -> None:
    """Give a normalizer recorded by histobag < 0.2 the name of the transform that made the bags.

    Until 0.2, ``macenko``, ``reinhard``, ``reinhard_mask`` and ``vahadane`` were histobag's own
    transforms; since, they are slideflow's. A configuration written before keeps its meaning:
    its method is read as the ``legacy_*`` method, with a warning.
    """
    norm = config.get("normalizer")
    if not norm or str(norm["method"]).lower() not in RENAMED_NORMALIZERS:
        return
    written_by = ((config.get("provenance") or {}).get("versions") or {}).get("histobag")
    release = _release(written_by)
    if release is not None and release >= SLIDEFLOW_NAMES_SINCE:
        return
    method = str(norm["method"]).lower()
    legacy = RENAMED_NORMALIZERS[method]
    warnings.warn(
        f"{file} was written by histobag {written_by or 'before 0.2'}, whose {method!r} stain "
        f"normalizer is now called {legacy!r}: since histobag 0.2, {method!r} means slideflow's "
        f"{method!r}. These bags are read as made with {legacy!r}, the transform that made them; "
        f"to extend this folder, pass normalizer={legacy!r}.",
        RenamedNormalizerWarning,
        stacklevel=3,
    )
    norm["method"] = legacy


def _json_scalar_tree(value: Any) -> bool:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    if isinstance(value, list):
        return all(_json_scalar_tree(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_scalar_tree(v) for k, v in value.items())
    return False


def _tissue_record(record: Any) -> bool:
    if record is None or isinstance(record, str):
        return True
    return (
        isinstance(record, dict)
        and isinstance(record.get("name"), str)
        and set(record) <= {"name", "kwargs"}
        and _json_scalar_tree(record.get("kwargs", {}))
    )


def _validate(config: Any, file: Path) -> None:
    problem = None
    if not isinstance(config, dict):
        problem = "it is not a JSON object"
    else:
        ext = config.get("extractor")
        norm = config.get("normalizer")
        if not isinstance(ext, dict) or not isinstance(ext.get("extractor"), str):
            problem = "'extractor' must be {'extractor': <registered name>, 'kwargs': {...}}"
        elif not isinstance(ext.get("kwargs", {}), dict) or not _json_scalar_tree(ext["kwargs"]):
            problem = "'extractor.kwargs' must be a JSON object of plain values"
        elif norm is not None and (
            not isinstance(norm, dict)
            or not isinstance(norm.get("method"), str)
            or not isinstance(norm.get("fit", {}), dict)
        ):
            problem = "'normalizer' must be null or {'method': <name>, 'fit': {...}}"
        elif not _tile_transforms_record(config.get("tile_transforms")):
            problem = "'tile_transforms' must be a list of {'name': <name>, 'kwargs': {...}}"
        elif not _tissue_record(config.get("tissue", LEGACY_TISSUE_DETECTOR)):
            problem = (
                "'tissue' must be null, a tissue detector's name or {'name': <name>, "
                "'kwargs': {...}}"
            )
        elif not isinstance(config.get("writer"), str):
            problem = "'writer' must be a registered writer name"
    if problem:
        raise ConfigError(f"{file} is not a valid {CONFIG_NAME}: {problem}.")


def _tile_transforms_record(record: Any) -> bool:
    """Whether ``record`` is absent or a list of ``{"name": str, "kwargs": {plain values}}``."""
    if record is None:
        return True
    return isinstance(record, list) and all(
        isinstance(entry, dict)
        and set(entry) <= {"name", "kwargs"}
        and isinstance(entry.get("name"), str)
        and isinstance(entry.get("kwargs", {}), dict)
        and _json_scalar_tree(entry.get("kwargs", {}))
        for entry in record
    )


def build_tile_transforms(config: dict[str, Any] | list[Any] | str | os.PathLike[str]) -> list[Any]:
    """The tile transforms recorded in a bags configuration, built, in order.

    Like the extractor and the normalizer, only registered names are built (through the
    ``histobag_transforms`` hook, kind ``tile_transform``), with the recorded keyword
    arguments. Each is a :class:`histobag.tile_transforms.TileTransform`: call it on a uint8
    (B, 3, H, W) batch, after the stain normalizer, to get the tiles the extractor saw::

        extractor, normalizer = rebuild_extractor("bags/")
        transforms = build_tile_transforms("bags/")

    Args:
        config: A bags folder or its ``bags_config.json``, a configuration read with
            :func:`read_config`, or its ``tile_transforms`` record. A configuration written
            before tile transforms existed has none (an empty list).

    Raises:
        ConfigError: The file is missing or damaged, or a recorded transform is not
            registered (its pack is not installed) or refuses the recorded arguments.
    """
    where = "the configuration"
    if isinstance(config, (str, os.PathLike)):
        file = config_path(config)
        config, where = read_config(file), str(file)
    record = config.get("tile_transforms") if isinstance(config, dict) else config
    if not _tile_transforms_record(record):
        raise ConfigError(
            f"{where}: 'tile_transforms' must be a list of {{'name': <name>, 'kwargs': {{...}}}}, "
            f"got {record!r}."
        )
    try:
        return resolve_tile_transforms(record or [])
    except HistobagError as exc:
        raise ConfigError(
            f"Cannot rebuild the tile transforms recorded in {where}: {exc} Install the pack "
            "that provides it, or check the recorded arguments."
        ) from exc


def build_normalizer(config: dict[str, Any] | None) -> Any:
    """A registered stain normalizer from ``{"method", "fit"}`` (or None).

    The method must be registered through the ``histobag_transforms`` hook; its factory is
    called with the recorded fit (or nothing, for its default fit).
    """
    if config is None:
        return None
    method = str(config["method"]).lower()
    specs = {n: s for n, s in transform_specs().items() if s.kind == "stain_normalizer"}
    if method not in specs:
        raise ConfigError(
            f"unknown stain normalizer {config['method']!r}; registered: "
            f"{', '.join(sorted(specs))}."
        )
    factory = specs[method].load()
    fit = config.get("fit")
    return factory(fit) if fit else factory()


def _recorded_weights(recorded: str, digest: str | None, file: Path) -> Path:
    """The weights file a configuration records, from any working directory.

    Current files record an absolute path. Files written by older versions may record the path
    as typed (relative): it is looked for relative to the bags folder, then to the current
    directory, and a warning says which was used.

    Raises:
        WeightsNotFoundError: The file is not there (moved or deleted); the message names the
            recorded path and sha256 and how to pass the file's new location.
    """
    path = Path(recorded).expanduser()
    candidates = (
        [(path, "")]
        if path.is_absolute()
        else [(file.parent / path, "the bags folder"), (Path.cwd() / path, "the current directory")]
    )
    for candidate, where in candidates:
        if candidate.exists():
            if where:
                warnings.warn(
                    f"{file} records the weights as the relative path {recorded!r} (written by "
                    f"an older histobag); using {candidate.resolve()}, found relative to "
                    f"{where}.",
                    UserWarning,
                    stacklevel=3,
                )
            return candidate.resolve()
    looked = " or ".join(str(c) for c, _ in candidates)
    raise WeightsNotFoundError(
        f"The weights file recorded in {file} is not at {looked} any more (sha256 "
        f"{digest or 'not recorded'}). If it moved, pass its new location: "
        f"rebuild_extractor({str(file.parent)!r}, weights='/new/path/{path.name}'); the file is "
        "checked against the recorded sha256."
    )


def rebuild_from_config(
    path: str | os.PathLike[str], *, weights: str | os.PathLike[str] | None = None
) -> tuple[Any, Any]:
    """(extractor, normalizer) as recorded in a bags folder or config file.

    Builds registered names only, with the recorded keyword arguments; never imports anything
    named in the file. The tile transforms applied after the normalizer are rebuilt by
    :func:`build_tile_transforms`.

    Args:
        path: A bags folder, or its ``bags_config.json``.
        weights: Where the recorded weights are now (a file or a folder holding it), when they
            moved or were downloaded and the machine is offline. They must be the same bytes:
            their sha256 is checked against the one recorded.

    Raises:
        ConfigError: The file is missing, damaged or tampered (an unknown extractor, a value
            the extractor refuses, such as a device this machine does not have).
        WeightsNotFoundError: The recorded weights file (or ``weights``) does not exist; also a
            ``FileNotFoundError``.
        WeightsError: The weights found are not the ones recorded (another sha256), or they
            cannot be loaded.
    """
    file = config_path(path)
    config = read_config(file)
    spec = config["extractor"]
    kwargs = dict(spec.get("kwargs", {}))
    recorded = (config.get("provenance") or {}).get("weights_sha256")
    recorded_file = _weights_file(config)
    if weights is not None:
        if not recorded:
            raise WeightsError(
                f"{file} records no weights file to replace (the bags were made with "
                f"{kwargs.get('weights') or 'no'} weights), so weights= cannot be checked "
                "against it. To extract with other weights, build the extractor yourself with "
                f"build_feature_extractor({spec['extractor']!r}, weights=...)."
            )
        kwargs["weights"] = os.fspath(weights)
    elif recorded_file is not None:
        kwargs["weights"] = str(_recorded_weights(recorded_file, recorded, file))
    try:
        extractor = build_feature_extractor(spec["extractor"], **kwargs)
        normalizer = build_normalizer(config.get("normalizer"))
    except WeightsNotFoundError:
        raise  # names the missing file, which is not in the configuration
    except ExtractorArgumentError as exc:
        raise ConfigError(f"{file} records arguments the extractor refuses: {exc}") from exc
    except WeightsError as exc:
        raise ConfigError(
            f"Cannot rebuild the extractor recorded in {file}: {exc}\nIf you have the weights "
            f"as a file, pass it: rebuild_extractor({str(file.parent)!r}, weights=...)."
        ) from exc
    except HistobagError as exc:
        raise ConfigError(f"Cannot rebuild the extractor recorded in {file}: {exc}") from exc
    except (TypeError, ValueError, RuntimeError) as exc:  # raised by a pack's factory
        raise ConfigError(
            f"{file} records arguments the extractor refuses ({spec['extractor']!r} with "
            f"{json.dumps(spec.get('kwargs', {}))}): {type(exc).__name__}: {exc}"
        ) from exc
    actual = extractor.weights_sha256
    if recorded and actual != recorded:
        message = (
            f"The weights loaded now ({extractor.weights_source}, sha256 {actual}) are not "
            f"those recorded in {file} (sha256 {recorded}); features would not match the bags."
        )
        if weights is not None or recorded_file is not None:  # a local file: the wrong one
            raise WeightsError(
                message + " Pass the file with the recorded sha256 as weights=. To extract "
                "with these weights on purpose, build the extractor yourself with "
                f"build_feature_extractor({spec['extractor']!r}, weights=...) and write to "
                "another folder."
            )
        warnings.warn(  # a download: the published file changed; there is nothing else to get
            message + " The published file has changed since; pass the original file as "
            "weights= if you have it.",
            UserWarning,
            stacklevel=2,
        )
    return extractor, normalizer
