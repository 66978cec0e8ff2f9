"""``histobag new-pack NAME``: write a ready-to-publish pack from the templates.

The pack (``histobag-NAME/``) holds a ``pyproject.toml`` declaring the entry point in the
``histobag`` group, the plugin module (the hook returning an :class:`~histobag.ExtractorSpec`
with licence and citation), a factory building a tiny example network, a parity test
comparing histobag's features with a reference forward pass, a ``LICENSE`` placeholder and a
README. ``pip install ./histobag-NAME`` and ``histobag list`` shows its model.

The templates are the ``*.tmpl`` files of ``histobag/pack_template``, rendered with
:class:`string.Template` (``$$`` writes a literal ``$``). Light: imports no torch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from histobag._version import __version__
from histobag.errors import ArgumentError
from histobag.files import write_text_atomic

__all__ = ["TEMPLATES", "PackNames", "create_pack", "pack_names", "render_pack"]

#: Lower-case letters and digits, starting with a letter; words joined by single ``-`` or ``_``.
_NAME = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
_MAX_NAME = 40
#: histobag's own packs: a pack of the same name would shadow their module.
_RESERVED = ("apache", "gpl", "noncommercial")
#: An SPDX licence identifier, or several joined by AND, OR or WITH.
_LICENSE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9.+\-]*(?: +(?:AND|OR|WITH) +[A-Za-z0-9][A-Za-z0-9.+\-]*)*"
)

#: Output path (``{package}`` is the import package) -> template file.
TEMPLATES = {
    "pyproject.toml": "pyproject.toml.tmpl",
    "README.md": "README.md.tmpl",
    "LICENSE": "LICENSE.tmpl",
    "src/{package}/__init__.py": "__init__.py.tmpl",
    "src/{package}/plugin.py": "plugin.py.tmpl",
    "src/{package}/model.py": "model.py.tmpl",
    "tests/test_parity.py": "test_parity.py.tmpl",
}


@dataclass(frozen=True)
class PackNames:
    """Every name a new pack is known by, derived from the ``NAME`` given.

    Attributes:
        name: The pack's short name, words joined by ``-`` (``"my-lab"``); its entry point.
        distribution: What ``pip install`` takes (``"histobag-my-lab"``); also the folder.
        package: The import package (``"histobag_my_lab"``).
        model: The example model's registered name (``"my-lab-tiny"``).
    """

    name: str
    distribution: str
    package: str
    model: str


def pack_names(name: str) -> PackNames:
    """Check a pack's ``NAME`` and derive its distribution, package and model names.

    Args:
        name: Lower-case letters and digits, starting with a letter, words joined by single
            ``-`` or ``_`` (``"acme"``, ``"my-lab"``); without the ``histobag-`` prefix.

    Raises:
        ArgumentError: The name is not of that form, carries the prefix, or is one of
            histobag's own packs.

    Example:
        >>> pack_names("my_lab").distribution
        'histobag-my-lab'
    """
    if not isinstance(name, str) or not name:
        raise ArgumentError("give the pack's NAME, e.g. `histobag new-pack acme`")
    lowered = name.lower()
    for prefix in ("histobag-", "histobag_"):
        if lowered.startswith(prefix) and len(lowered) > len(prefix):
            raise ArgumentError(
                f"give NAME without the histobag- prefix: `histobag new-pack "
                f"{name[len(prefix) :]}` writes histobag-{name[len(prefix) :]}/"
            )
    if not _NAME.fullmatch(name) or len(name) > _MAX_NAME:
        hint = f" (did you mean {lowered!r}?)" if _NAME.fullmatch(lowered) else ""
        raise ArgumentError(
            f"pack name {name!r} is not valid{hint}: use lower-case letters and digits, "
            f"starting with a letter, words joined by single '-' or '_', at most {_MAX_NAME} "
            "characters (e.g. acme, my-lab); the import package is histobag_<name>"
        )
    dashed = name.replace("_", "-")
    if dashed in _RESERVED:
        raise ArgumentError(
            f"histobag-{dashed} is one of histobag's own packs; choose another name"
        )
    return PackNames(
        name=dashed,
        distribution=f"histobag-{dashed}",
        package=f"histobag_{dashed.replace('-', '_')}",
        model=f"{dashed}-tiny",
    )


def _check_license(license: str) -> str:
    """The licence as given, if it looks like an SPDX expression (it is written into TOML
    and Python strings, so nothing else may pass)."""
    if not isinstance(license, str) or not _LICENSE.fullmatch(license.strip()):
        raise ArgumentError(
            f"--license must be an SPDX identifier or expression (e.g. MIT, Apache-2.0, "
            f"LicenseRef-Proprietary), not {license!r}"
        )
    return license.strip()


def _histobag_requirement() -> str:
    """``histobag>=MAJOR.MINOR`` of the running histobag: the API the templates use."""
    major, minor = __version__.split(".")[:2]
    return f"histobag>={major}.{minor}"


def render_pack(names: PackNames, license: str = "MIT") -> dict[str, str]:
    """The pack's files as text, by path relative to the pack's folder.

    Args:
        names: From :func:`pack_names`.
        license: SPDX licence written into ``pyproject.toml`` (the code) and the spec (the
            weights); the ``LICENSE`` file stays a placeholder to replace.

    Raises:
        ArgumentError: ``license`` is not an SPDX identifier or expression.
    """
    license = _check_license(license)
    first = license.split()[0]
    values = {
        "name": names.name,
        "distribution": names.distribution,
        "package": names.package,
        "module": names.package.removeprefix("histobag_"),
        "model": names.model,
        "license": license,
        "license_url": f"https://spdx.org/licenses/{first}.html",
        "histobag_requirement": _histobag_requirement(),
    }
    folder = resources.files("histobag") / "pack_template"
    return {
        path.format(package=names.package): Template(
            (folder / template).read_text(encoding="utf-8")
        ).substitute(values)
        for path, template in TEMPLATES.items()
    }


def create_pack(
    name: str,
    directory: str | os.PathLike[str] = ".",
    *,
    license: str = "MIT",
    force: bool = False,
) -> Path:
    """Write the pack ``histobag-NAME/`` into ``directory``.

    Args:
        name: The pack's name (see :func:`pack_names`).
        directory: Where the pack's folder is made (created if missing).
        license: SPDX licence of the code and of the example weights (see
            :func:`render_pack`).
        force: Write into an existing pack folder, replacing the files the template writes
            (other files there are kept).

    Returns:
        The pack's folder.

    Raises:
        ArgumentError: A bad name or licence, or the folder exists and ``force`` is False.
        StorageError: A file cannot be written.

    Example:
        >>> create_pack("acme", "packs/")  # doctest: +SKIP
        PosixPath('packs/histobag-acme')
    """
    names = pack_names(name)
    files = render_pack(names, license)  # every check before anything is written
    root = Path(directory) / names.distribution
    if root.exists() or root.is_symlink():
        if not root.is_dir():
            raise ArgumentError(f"{root} exists and is not a folder; choose another --dir")
        if not force:
            raise ArgumentError(
                f"{root} already exists; pass --force to rewrite the template's files in it "
                "(other files are kept), or choose another --dir"
            )
    mode = 0o666 & ~_umask()  # what a text editor would give; temporaries are owner-only
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text).chmod(mode)
    return root


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    current = os.umask(0o022)
    os.umask(current)
    return current
