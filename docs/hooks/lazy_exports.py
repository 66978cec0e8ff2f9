"""Griffe extension: let mkdocstrings see the names histobag's packages load lazily.

Several packages (``histobag``, ``histobag.io``, ``histobag.norm``, ``histobag.slide_encoding``)
export names through a PEP 562 ``__getattr__`` so importing them stays cheap. Griffe reads the
source and cannot see those names, or sees a submodule where the package exports a function of
the same name (``histobag.slide_encoding.zero_shot``). This extension points each such
``__all__`` name at the object it stands for: found through the package's ``_LAZY`` table
(``name -> module``, the convention these packages follow) without importing anything, or else
by importing the package and asking it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import warnings
from typing import Any

import griffe


def _packages(module: griffe.Module) -> list[griffe.Module]:
    """``module`` and every package below it."""
    found = [module]
    for member in module.modules.values():
        if member.is_init_module:  # a package or subpackage
            found += _packages(member)
    return found


def _lazy_table(package: griffe.Module) -> dict[str, str]:
    """The package's ``_LAZY`` table (name -> absolute module path), or ``{}``."""
    table = package.members.get("_LAZY")
    if table is None or table.is_alias or not table.is_attribute:
        return {}
    try:
        raw = ast.literal_eval(str(table.value))
    except (ValueError, SyntaxError):
        return {}
    root = package.path.split(".", 1)[0]
    return {
        name: module if module.split(".", 1)[0] == root else f"{package.path}.{module}"
        for name, module in raw.items()
    }


def _static_path(package: griffe.Module, name: str, loader: griffe.GriffeLoader) -> str | None:
    """What ``package.name`` is by the ``_LAZY`` table: the module's attribute, or the module."""
    module = _lazy_table(package).get(name)
    if module is None:
        return None
    for path in (f"{module}.{name}", module):
        try:
            loader.modules_collection.get_member(path)
        except (KeyError, ValueError):
            continue
        if path == module and not path.endswith(f".{name}"):
            continue  # a module stands for its own name only
        return path
    return None


def _runtime_path(package: griffe.Module, name: str) -> str | None:
    """Where the imported ``package.name`` is defined (``module.qualname``), if it says."""
    with warnings.catch_warnings():  # e.g. a deprecated alias module warns that it moved
        warnings.simplefilter("ignore", DeprecationWarning)
        value = getattr(importlib.import_module(package.path), name)
    if inspect.ismodule(value):
        return value.__name__
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str) and "<" not in qualname:
        return f"{module}.{qualname}"
    return None


def _member_path(member: Any) -> str:
    """The path a griffe member stands for (an alias's target, or the object's own)."""
    return member.target_path if member.is_alias else member.path


class LazyExports(griffe.Extension):
    """Replace each missing or mismatched ``__all__`` member by an alias of the real object."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Fix the members of every package of ``pkg`` once the whole tree is loaded."""
        fixes = []  # all targets are looked up before any member changes
        for package in _packages(pkg):
            for export in package.exports or ():
                name = str(export)
                member = package.members.get(name)
                if member is not None and not member.is_module:
                    continue  # seen in the source (maybe under TYPE_CHECKING): griffe knows it
                path = _static_path(package, name, loader) or _runtime_path(package, name)
                if path is None or (member is not None and _member_path(member) == path):
                    continue
                try:
                    target = loader.modules_collection.get_member(path)
                except (KeyError, ValueError):  # defined outside the loaded packages
                    continue
                fixes.append((package, name, target))
        for package, name, target in fixes:
            package.set_member(name, griffe.Alias(name, target, parent=package))
