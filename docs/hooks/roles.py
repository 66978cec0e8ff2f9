"""Griffe extension: Sphinx cross-reference roles in docstrings become links or inline code.

histobag's docstrings name other objects with Sphinx roles (``:func:`build_extractor```,
``:class:`~histobag.slide.WSI```, ``:mod:`.plan```), which Markdown shows as literal text. At
build time, without touching the source, this extension rewrites each role in every docstring:

- to a mkdocs-autorefs cross-reference ``[`shown`][canonical.path]`` when its target resolves
  to an object the API reference renders (an ``__all__`` name of a public package, or a
  public member of one; not a package itself, whose page has no heading for it).
  mkdocstrings registers every rendered object under its canonical path too (a secondary
  anchor, linked to the closest page that renders it), so one identifier works whether the
  object is shown under ``histobag``, ``histobag.slide`` or both;
- otherwise to inline code ``shown``, so nothing the site does not render becomes a broken link
  (``mkdocs build --strict`` fails on those).

``shown`` is the target as written, or only its last component when it starts with ``~`` (as
Sphinx shows it), or the explicit title of ``:role:`title <target>```; ``!target`` never links.
Names resolve much like Sphinx's: against the object the docstring belongs to (if a class or
module), its enclosing classes, its module and the packages above it (each with what it
imports), then as an absolute path; leading dots are relative to the docstring's package, as in
a relative import.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import griffe

# The Python-domain roles histobag's docstrings use (``:py:func:`` is the same as ``:func:``).
ROLE = re.compile(
    r":(?:py:)?(?P<role>func|class|meth|mod|attr|data|exc|obj|const|type):`(?P<body>[^`]+)`"
)
FENCED_BLOCK = re.compile(
    r"^[ \t]*(`{3,}|~{3,}).*?^[ \t]*\1[^\n]*$", flags=re.MULTILINE | re.DOTALL
)
EXPLICIT_TITLE = re.compile(r"(?P<title>.*?)\s*<(?P<target>[^<>]+)>", flags=re.DOTALL)


@dataclass(frozen=True)
class Role:
    """One parsed role: what it shows, what it points at, and whether it may link."""

    kind: str
    shown: str
    target: str
    linkable: bool = True


def parse_role(kind: str, body: str) -> Role:
    """Parse a role's text (between the backticks) as Sphinx does."""
    body = body.strip()
    explicit = EXPLICIT_TITLE.fullmatch(body)
    title, target = (explicit["title"], explicit["target"]) if explicit else (None, body)
    target = "".join(target.split())  # a role may wrap across lines
    linkable = not target.startswith("!")
    target = target.lstrip("!")
    short = target.startswith("~")
    target = target.lstrip("~")
    if title:
        shown = " ".join(title.split())
    else:
        shown = target.lstrip(".")
        if short:
            shown = shown.rsplit(".", 1)[-1]
    return Role(kind, shown, target, linkable)


def rewrite(text: str, link_target: Callable[[Role], str | None]) -> str:
    """``text`` with each role replaced by a cross-reference (where ``link_target`` gives the
    identifier) or by inline code. Fenced code blocks are left as they are."""

    def replace(match: re.Match[str]) -> str:
        role = parse_role(match["role"], match["body"])
        identifier = link_target(role) if role.linkable else None
        code = f"`{role.shown}`"
        return f"[{code}][{identifier}]" if identifier else code

    # Roles may wrap across lines, so the text between fenced blocks is substituted as a whole.
    pieces, last = [], 0
    for block in FENCED_BLOCK.finditer(text):
        pieces += [ROLE.sub(replace, text[last : block.start()]), block.group()]
        last = block.end()
    pieces.append(ROLE.sub(replace, text[last:]))
    return "".join(pieces)


def _lookup(scope: Any, path: str) -> Any | None:
    """``scope[path]`` (through aliases), or None where it does not resolve."""
    try:
        return scope[path]
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _scopes(obj: Any) -> Iterator[Any]:
    """Where a name in ``obj``'s docstring is looked up: itself if a class or module, then each
    enclosing class, module and package, innermost first."""
    current = obj if (obj.is_class or obj.is_module) else obj.parent
    while current is not None:
        if current.is_class or current.is_module:
            yield current
        current = current.parent


def _relative_base(obj: Any, dots: int) -> Any | None:
    """The package ``dots`` leading dots name from ``obj``'s module (one dot: its package)."""
    module = obj.module
    base = module if module.is_init_module else module.parent
    for _ in range(dots - 1):
        base = base.parent if base is not None else None
    return base


def resolve(obj: Any, role: Role, collection: Any) -> Any | None:
    """The object ``role`` names, seen from ``obj``'s docstring, or None.

    A ``:mod:`` role must name a module and any other role must not, so that ``:func:`run```
    does not resolve to a module called ``run`` further out.
    """
    target = role.target
    if target.startswith("."):
        dots = len(target) - len(target.lstrip("."))
        base = _relative_base(obj, dots)
        candidates = [] if base is None else [(base, target[dots:])]
    else:
        candidates = [(scope, target) for scope in _scopes(obj)]
        candidates.append((collection, target))
    for scope, path in candidates:
        found = _lookup(scope, path)
        if found is None:
            continue
        try:
            is_module = found.is_module
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        if is_module == (role.kind == "mod"):
            return found
    return None


def _canonical(obj: Any) -> str | None:
    """Where ``obj`` is defined, or None if it is an alias that does not resolve."""
    try:
        return obj.canonical_path
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _final(obj: Any) -> Any | None:
    """``obj``, or what it is an alias of (None if that does not resolve)."""
    try:
        return obj.final_target if obj.is_alias else obj
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _add_rendered(obj: Any, found: set[str]) -> None:
    """Add ``obj`` and the members mkdocstrings renders with it (public, own members of a class;
    ``__all__`` names and own public objects of a module) to ``found``, by canonical path.

    Dunder methods are rendered too but left out (a role naming one stays code): the
    mkdocs.yml options decide which of them show, and a link that may break is worse than none.
    """
    canonical, target = _canonical(obj), _final(obj)
    if canonical is None or target is None or canonical in found:
        return
    found.add(canonical)
    if target.is_class:
        members = [m for n, m in target.members.items() if not n.startswith("_") and not m.is_alias]
    elif target.is_module:
        exports = {str(name) for name in target.exports or ()}
        members = [
            m
            for n, m in target.members.items()
            if n in exports or (not n.startswith("_") and not m.is_alias)
        ]
    else:
        return
    for member in members:
        _add_rendered(member, found)


def public_packages(pkg: Any) -> Iterator[Any]:
    """``pkg`` and its subpackages that have a reference page (``__all__``, no ``_`` part)."""
    if pkg.exports is not None and not any(p.startswith("_") for p in pkg.path.split(".")):
        yield pkg
    for member in pkg.modules.values():
        if not member.is_alias and member.is_init_module:
            yield from public_packages(member)


def documented(pkg: Any) -> set[str]:
    """Canonical paths of everything the API reference renders from ``pkg`` (its pages show
    each public package's ``__all__``; docs/hooks/generate.py)."""
    found: set[str] = set()
    for package in public_packages(pkg):
        found.add(package.path)  # its page's heading (docs/hooks/generate.py sets the id)
        for name in package.exports:
            member = package.members.get(str(name))
            if member is not None:
                _add_rendered(member, found)
    return found


def _objects(obj: Any) -> Iterator[Any]:
    """``obj`` and the classes, functions and attributes defined in it (not its submodules,
    nor the names it imports)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias and not member.is_module:
            yield from _objects(member)


def link_target(obj: Any, role: Role, collection: Any, rendered: set[str]) -> str | None:
    """The autorefs identifier for ``role`` in ``obj``'s docstring, if the site renders it."""
    found = resolve(obj, role, collection)
    canonical = None if found is None else _canonical(found)
    return canonical if canonical in rendered else None


class DocstringRoles(griffe.Extension):
    """Rewrite the Sphinx roles of every docstring in a loaded package (see the module doc)."""

    def __init__(self) -> None:
        # Every module as it is created: once the package is complete, a module may be out of
        # its tree's reach (LazyExports replaces ``slide_encoding.zero_shot``, a module, by the
        # function it exports), and griffe's own ``on_module`` events walk that tree.
        self._modules: list[griffe.Module] = []

    def on_module_instance(self, *, mod: griffe.Module, **kwargs: Any) -> None:
        """Remember each module as it loads."""
        self._modules.append(mod)

    def on_module(self, *, mod: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Rewrite the docstrings of a top-level package once it is loaded.

        This event comes after every extension's ``on_package`` (LazyExports' included, which
        decides what the package exports), whatever order mkdocs.yml lists them in.
        """
        if "." in mod.path:
            return
        mine = [m for m in self._modules if m.path.split(".", 1)[0] == mod.path]
        self._modules = [m for m in self._modules if m.path.split(".", 1)[0] != mod.path]
        rendered = documented(mod)
        for module in mine:
            for obj in _objects(module):
                rewrite_docstring(obj, loader.modules_collection, rendered)


def rewrite_docstring(obj: Any, collection: Any, rendered: set[str]) -> None:
    """Rewrite the roles in ``obj``'s docstring in place (see :func:`rewrite`)."""
    if obj.docstring is None or not ROLE.search(obj.docstring.value):
        return
    obj.docstring.value = rewrite(
        obj.docstring.value, lambda role: link_target(obj, role, collection, rendered)
    )
    obj.docstring.__dict__.pop("parsed", None)  # parsed again from the new text
