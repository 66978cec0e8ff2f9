"""``bags_config.json``: how a folder of feature bags was made, and rebuilding from it.

The file records the extractor (registered name + keyword arguments), the stain normalizer and
its fit, the tile geometry, the writer and its coordinate convention, and for reproducibility
the weights' sha256, the resolved preprocessing, the precision, package versions and the
creation time. A resumed run compares the *fingerprint* (everything that changes features) and
refuses to mix configurations in one folder.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from histobag.errors import ConfigError, HistobagError

CONFIG_NAME = "bags_config.json"

#: Keys whose values must match for bags to be considered the same configuration.
FINGERPRINT_KEYS = ("extractor", "normalizer", "num_features", "tile_px", "tile_um", "writer")
PROVENANCE_FINGERPRINT = ("weights_sha256", "preprocessing", "precision")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def normalizer_config(normalizer: Any) -> dict[str, Any] | None:
    """``{"method": ..., "fit": {...}}`` of a stain normalizer, or None."""
    if normalizer is None:
        return None
    return {"method": normalizer.method, "fit": normalizer.get_fit()}


def make_config(
    extractor: Any,
    normalizer: Any,
    *,
    tile_px: int,
    tile_um: float | str,
    writer: str,
    coordinates: str,
) -> dict[str, Any]:
    """The configuration of a bag run (JSON-able)."""
    provenance = extractor.provenance()
    pack = provenance.pop("pack")
    provenance["versions"] = {
        "histobag": _version("histobag"),
        pack["name"]: pack["version"] or _version(pack["name"]),
        "torch": _version("torch"),
        "timm": _version("timm"),
    }
    provenance["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    provenance["random_weights"] = extractor.weights_source == "random"
    return {
        "extractor": extractor.dump_config(),
        "normalizer": normalizer_config(normalizer),
        "num_features": extractor.num_features,
        "tile_px": tile_px,
        "tile_um": tile_um,
        "writer": writer,
        "coordinates": coordinates,
        "license": extractor.license,
        "citation": extractor.citation,
        "provenance": provenance,
    }


def fingerprint(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a configuration that determines the features."""
    out = {key: config.get(key) for key in FINGERPRINT_KEYS}
    provenance = config.get("provenance") or {}
    out.update({key: provenance.get(key) for key in PROVENANCE_FINGERPRINT})
    return json.loads(json.dumps(out))  # normalise tuples/ints for comparison


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable fingerprint differences between two configurations."""
    a, b = fingerprint(old), fingerprint(new)
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if a[k] != b[k]]


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
    return config


def _json_scalar_tree(value: Any) -> bool:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    if isinstance(value, list):
        return all(_json_scalar_tree(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_scalar_tree(v) for k, v in value.items())
    return False


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
        elif not isinstance(config.get("writer"), str):
            problem = "'writer' must be a registered writer name"
    if problem:
        raise ConfigError(f"{file} is not a valid {CONFIG_NAME}: {problem}.")


def build_normalizer(config: dict[str, Any] | None) -> Any:
    """A registered stain normalizer from ``{"method", "fit"}`` (or None).

    The method must be registered through the ``histobag_transforms`` hook; its factory is
    called with the recorded fit (or nothing, for its default fit).
    """
    if config is None:
        return None
    from histobag.plugins import transform_specs

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


def rebuild_from_config(path: str | os.PathLike[str]) -> tuple[Any, Any]:
    """(extractor, normalizer) as recorded in a bags folder or config file.

    Builds registered names only, with the recorded keyword arguments; never imports anything
    named in the file.
    """
    from histobag.extractors.registry import build_feature_extractor

    file = config_path(path)
    config = read_config(file)
    spec = config["extractor"]
    try:
        extractor = build_feature_extractor(spec["extractor"], **spec.get("kwargs", {}))
        normalizer = build_normalizer(config.get("normalizer"))
    except HistobagError as exc:
        raise ConfigError(f"Cannot rebuild the extractor recorded in {file}: {exc}") from exc
    except TypeError as exc:
        raise ConfigError(f"{file} records arguments the extractor refuses: {exc}") from exc
    recorded = (config.get("provenance") or {}).get("weights_sha256")
    if recorded and extractor.weights_sha256 and recorded != extractor.weights_sha256:
        import warnings

        warnings.warn(
            f"The weights loaded now (sha256 {extractor.weights_sha256[:12]}...) differ from those "
            f"recorded in {file} ({recorded[:12]}...); features will not match the bags.",
            UserWarning,
            stacklevel=2,
        )
    return extractor, normalizer
