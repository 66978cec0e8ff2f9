"""Sphinx roles in docstrings render as links or inline code (docs/hooks/roles.py).

The rewrite is tested on a small package written here (loaded by griffe with the same
extensions as mkdocs.yml), on histobag's own docstrings, and in the built site.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import griffe
import pytest

from .test_api_reference import REPO, load_hook

roles = load_hook("roles")
lazy_exports = load_hook("lazy_exports")
generate = load_hook("generate")

# A role as Sphinx writes it, in a docstring (`) or in the HTML Markdown made of one (<code>).
LEFT_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):(?:`|<code)")


def load(root: Path, package: str) -> griffe.Module:
    """``package`` under ``root`` as mkdocstrings loads it (extensions as in mkdocs.yml)."""
    return griffe.load(
        package,
        search_paths=[str(root)],
        extensions=griffe.load_extensions(lazy_exports.LazyExports, roles.DocstringRoles),
        docstring_parser=griffe.Parser.google,
    )


def write_package(root: Path, files: dict[str, str]) -> None:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")


# `pkg` renders Thing and helper (its __all__), `pkg.sub` renders Other, `pkg.lazy` renders the
# function `probe` that a module of the same name defines; `pkg._hidden` has no page.
PACKAGE = {
    "pkg/__init__.py": '''
        """The package. See :class:`~pkg.core.Thing` and :mod:`.core`."""
        from pkg.core import Thing, helper

        __all__ = ["Thing", "helper"]
    ''',
    "pkg/core.py": '''
        """Core: :func:`helper`, :func:`_private`, :class:`os.PathLike`."""

        class Thing:
            """A thing; call :meth:`run`, read :attr:`size`, not :meth:`_secret`."""

            size: int = 1
            """How big (:class:`Thing` itself)."""

            def run(self) -> None:
                """Run it (:meth:`run` again, :func:`helper`, :meth:`Thing.run`)."""

            def _secret(self) -> None:
                """Private."""

        def helper() -> None:
            """Help :class:`~pkg.core.
            Thing` (a role wrapped across lines), :func:`!helper` never links.

            ```python
            keep(":func:`helper`")
            ```
            """

        def _private() -> None:
            """Not rendered: :func:`helper`."""
    ''',
    "pkg/sub/__init__.py": '''
        """Sub."""
        from pkg.sub.other import Other

        __all__ = ["Other"]
    ''',
    "pkg/sub/other.py": '''
        """Other: :func:`..core.helper`, :mod:`.other`, :func:`core.helper`."""

        class Other:
            """See :func:`pkg.helper`, :class:`shown here <pkg.core.Thing>`, :py:class:`Thing`."""
    ''',
    "pkg/lazy/__init__.py": '''
        """Lazy."""
        _LAZY = {"probe": "pkg.lazy.probe"}
        __all__ = ["probe"]

        def __getattr__(name):
            raise AttributeError(name)
    ''',
    "pkg/lazy/probe.py": '''
        """The module the lazy package's export shadows."""

        def probe() -> None:
            """Probe :func:`~pkg.core.helper`."""
    ''',
    "pkg/_hidden/__init__.py": '''
        """Hidden."""

        def inner() -> None:
            """Inner, :func:`inner`."""

        __all__ = ["inner"]
    ''',
}


@pytest.fixture(scope="module")
def pkg(tmp_path_factory) -> griffe.Module:
    root = tmp_path_factory.mktemp("src")
    write_package(root, PACKAGE)
    return load(root, "pkg")


def doc(obj) -> str:
    return obj.docstring.value


# ---- parsing a role ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "shown", "target", "linkable"),
    [
        ("histobag.slide.WSI", "histobag.slide.WSI", "histobag.slide.WSI", True),
        ("~histobag.slide.WSI", "WSI", "histobag.slide.WSI", True),
        (
            "~histobag.tile_readers.\n    plan_opener",
            "plan_opener",
            "histobag.tile_readers.plan_opener",
            True,
        ),
        (".plan", "plan", ".plan", True),
        ("..tiff_tiles", "tiff_tiles", "..tiff_tiles", True),
        ("the slide <histobag.slide.WSI>", "the slide", "histobag.slide.WSI", True),
        ("!histobag.WSI", "histobag.WSI", "histobag.WSI", False),
    ],
)
def test_parse_role(body, shown, target, linkable):
    assert roles.parse_role("class", body) == roles.Role("class", shown, target, linkable)


def test_rewrite_links_what_resolves_and_codes_the_rest():
    text = "A :class:`~a.B` and :func:`a.c`, :py:meth:`d` and :mod:`!a`."
    out = roles.rewrite(text, lambda role: "a.b.B" if role.target == "a.B" else None)
    assert out == "A [`B`][a.b.B] and `a.c`, `d` and `a`."


def test_rewrite_leaves_fenced_code_alone():
    text = "See :func:`f`.\n\n```python\nprint(':func:`f`')\n```\nThen :func:`g`."
    out = roles.rewrite(text, lambda role: None)
    assert out == "See `f`.\n\n```python\nprint(':func:`f`')\n```\nThen `g`."


# ---- resolving, on a package loaded like the site's -------------------------------------------


def test_documented_objects_are_what_the_reference_pages_render(pkg):
    assert roles.documented(pkg) == {
        "pkg",  # the public packages: their pages' headings
        "pkg.sub",
        "pkg.lazy",
        "pkg.core.Thing",
        "pkg.core.Thing.size",
        "pkg.core.Thing.run",
        "pkg.core.helper",
        "pkg.sub.other.Other",
        "pkg.lazy.probe.probe",
    }


def test_absolute_names_link_by_their_canonical_path(pkg):
    assert doc(pkg).startswith("The package. See [`Thing`][pkg.core.Thing] and `core`.")


def test_names_resolve_against_the_class_and_module(pkg):
    thing = pkg["core.Thing"]
    assert doc(thing) == (
        "A thing; call [`run`][pkg.core.Thing.run], read [`size`][pkg.core.Thing.size], "
        "not `_secret`."
    )
    assert doc(thing["size"]) == "How big ([`Thing`][pkg.core.Thing] itself)."
    assert doc(thing["run"]) == (
        "Run it ([`run`][pkg.core.Thing.run] again, [`helper`][pkg.core.helper], "
        "[`Thing.run`][pkg.core.Thing.run])."
    )


def test_undocumented_and_unknown_targets_become_code(pkg):
    # _private exists but has no page; os.PathLike is not in the loaded package.
    assert doc(pkg["core"]) == "Core: [`helper`][pkg.core.helper], `_private`, `os.PathLike`."
    assert doc(pkg["core._private"]) == "Not rendered: [`helper`][pkg.core.helper]."
    assert doc(pkg["_hidden"]["inner"]) == "Inner, `inner`."


def test_wrapped_roles_bang_and_fenced_code(pkg):
    assert doc(pkg["core.helper"]) == (
        "Help [`Thing`][pkg.core.Thing] (a role wrapped across lines), `helper` never links.\n"
        "\n"
        "```python\n"
        'keep(":func:`helper`")\n'
        "```"
    )


def test_relative_and_explicit_title_roles(pkg):
    other = pkg["sub.other"]
    # `..core` is pkg.core (relative-import rules); `core.helper` is found in the enclosing
    # package pkg; modules that are not public packages have no heading of their own on the
    # pages, so :mod: roles naming them are code.
    assert doc(other) == (
        "Other: [`core.helper`][pkg.core.helper], `other`, [`core.helper`][pkg.core.helper]."
    )
    assert doc(other["Other"]) == (
        "See [`pkg.helper`][pkg.core.helper], [`shown here`][pkg.core.Thing], "
        "[`Thing`][pkg.core.Thing]."
    )


def test_a_module_shadowed_by_its_lazy_export_is_rewritten_too(pkg):
    # LazyExports replaces the module pkg.lazy.probe by an alias of the function it defines.
    assert pkg["lazy"].members["probe"].is_alias
    assert doc(pkg["lazy"]["probe"]) == "Probe [`helper`][pkg.core.helper]."


def test_a_mod_role_names_a_module_and_other_roles_do_not(pkg):
    core = pkg["core"]
    assert (
        roles.resolve(core, roles.Role("func", "core", "pkg.core"), pkg.modules_collection) is None
    )
    assert (
        roles.resolve(core, roles.Role("mod", "core", "pkg.core"), pkg.modules_collection) is core
    )


# ---- histobag's own docstrings ----------------------------------------------------------------


@pytest.fixture(scope="module")
def histobag_tree() -> griffe.Module:
    return load(REPO / "core" / "src", "histobag")


def test_no_role_is_left_in_histobag_docstrings(histobag_tree):
    src = REPO / "core" / "src"
    left = []
    for file in sorted((src / "histobag").rglob("*.py")):
        parts = file.relative_to(src).with_suffix("").parts
        path = ".".join(parts[1:-1] if parts[-1] == "__init__" else parts[1:])
        module = histobag_tree[path] if path else histobag_tree
        if not module.is_module:  # a module shadowed by the lazy export of the same name
            module = module.final_target.module
        left += [
            obj.path
            for obj in roles._objects(module)
            if obj.docstring is not None and LEFT_ROLE.search(obj.docstring.value)
        ]
    assert not left, f"docstrings that still show Sphinx roles: {left}"


def test_histobag_links_a_class_by_its_canonical_path(histobag_tree):
    wsi_doc = doc(histobag_tree["dataset.Dataset.wsi"])
    assert "[`WSI`][histobag.slide.wsi.WSI]" in wsi_doc


# ---- the built site ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stderr[-4000:]}"
    return out


def reference_pages(site: Path) -> dict[str, str]:
    return {
        page.parent.name: page.read_text(encoding="utf-8")
        for page in (site / "reference").glob("*/index.html")
    }


@pytest.mark.slow
def test_the_api_reference_shows_no_sphinx_role(site):
    pages = reference_pages(site)
    assert pages
    for name, page in pages.items():
        assert not LEFT_ROLE.search(page), name


@pytest.mark.slow
def test_the_api_reference_links_a_role_to_its_object(site):
    # Dataset.wsi's docstring says :class:`~histobag.slide.WSI`: on the histobag page it links
    # to the WSI rendered on that page (the closest of the pages that render it).
    page = reference_pages(site)["histobag"]
    section = page[page.index('id="histobag.Dataset.wsi"') :]
    link = re.search(
        r'<a class="autorefs[^"]*"[^>]*href="([^"]+)"[^>]*><code>WSI</code></a>', section
    )
    assert link and link.group(1) == "#histobag.WSI"


@pytest.mark.slow
def test_every_object_roles_may_link_to_has_an_anchor(site, histobag_tree):
    """What the extension takes as rendered is rendered: it can never make a broken link."""
    anchors = set()
    for page in reference_pages(site).values():
        anchors |= set(re.findall(r'<h\d id="(histobag[^"]*)"', page))
    rendered = set()
    for anchor in anchors:
        try:
            rendered.add(histobag_tree.modules_collection[anchor].canonical_path)
        except (KeyError, griffe.AliasResolutionError):
            continue
    assert roles.documented(histobag_tree) <= rendered


def test_a_mod_role_naming_a_public_package_links_to_its_page_heading(pkg):
    rendered = roles.documented(pkg)
    role = roles.Role("mod", "pkg.sub", "pkg.sub")
    assert roles.link_target(pkg["core"], role, pkg.modules_collection, rendered) == "pkg.sub"
    module = roles.Role("mod", "pkg.core", "pkg.core")  # a module, not a package: no heading
    assert roles.link_target(pkg["sub"], module, pkg.modules_collection, rendered) is None


def test_each_reference_page_heading_has_its_package_as_id():
    pages = generate.reference_pages()
    for page, text in pages.items():
        if page.endswith("index.md"):
            continue
        package = text.split("::: ", 1)[1].split("\n", 1)[0]
        assert text.startswith(f"# `{package}` {{ #{package} }}\n"), page
