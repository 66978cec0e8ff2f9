"""MkDocs hook: the pages generated from the installed code at build time.

- ``choose_a_model.md``: every installed extractor, from ``list_extractors()`` and
  ``extractor_info()``.
- ``cli.md``: every ``histobag`` subcommand and option, from ``histobag.cli.build_parser()``.
- ``reference/*.md``: one page per public package (``histobag`` and each subpackage whose
  ``__init__`` defines ``__all__``), rendering exactly the names of its ``__all__`` with
  mkdocstrings.

Nothing here is written into ``docs/``: the pages exist only in the build, so they cannot go
stale. The functions that produce their Markdown are importable (tests/docs/ checks them).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MODEL_TABLE_PAGE = "choose_a_model.md"
CLI_PAGE = "cli.md"
REFERENCE_DIR = "reference"

# Columns of the model table; tests/docs/test_model_table.py reads the table by these names.
MODEL_COLUMNS = ("name", "kind", "pack", "licence", "dims", "input", "gated", "citation")
UNKNOWN_DIMS = "depends on args"


def _cell(text: Any) -> str:
    """One Markdown table cell: pipes escaped, newlines folded."""
    return " ".join(str(text).split()).replace("|", r"\|")


def citation_key(citation: str | None) -> str:
    """The BibTeX key of a citation (``@article{key, ...}`` -> ``key``), or ``""``."""
    match = re.match(r"\s*@\w+\s*\{\s*([^,\s]+)\s*,", citation or "")
    return match.group(1) if match else ""


def model_input(spec: Any) -> str:
    """What a model reads: tile size in pixels, or the tile encoder a slide encoder needs."""
    if spec.kind == "tiles":
        return f"{spec.input_size} px tiles"
    return f"{spec.tile_encoder} features"


def model_rows() -> list[dict[str, str]]:
    """One row per installed extractor, keyed by :data:`MODEL_COLUMNS`."""
    # Imported here so the hook module loads (and tests collect) without histobag's registry.
    from histobag import extractor_info, list_extractors

    rows = []
    for name in list_extractors():
        spec = extractor_info(name)
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "pack": spec.distribution,
                "licence": spec.license,
                "licence_url": spec.license_url or "",
                "dims": UNKNOWN_DIMS if spec.num_features is None else str(spec.num_features),
                "input": model_input(spec),
                "gated": "yes" if spec.gated else "no",
                "citation": citation_key(spec.citation),
                "citation_text": (spec.citation or "").strip(),
            }
        )
    return rows


def model_table_markdown() -> str:
    """The "Choose a model" page: the table of installed extractors and their citations."""
    rows = model_rows()
    out = [
        "# Choose a model",
        "",
        "Every extractor installed where this site was built, read from the packs' specs by",
        "`histobag.list_extractors()` and `histobag.extractor_info()` (the same data as",
        "`histobag list --json`). *kind* `tiles` is a tile encoder (images in, one vector per",
        "tile); `tile_features` is a slide encoder (a bag of tile features in, one vector per",
        "slide). *gated* models need access granted on the Hugging Face model page and",
        "`hf auth login` first. `histobag info NAME` prints everything about one model, and",
        "[Models, licences and parity](models.md) explains the packs and their licences.",
        "",
        "| " + " | ".join(MODEL_COLUMNS) + " |",
        "|" + "---|" * len(MODEL_COLUMNS),
    ]
    for row in rows:
        licence = _cell(row["licence"])
        if row["licence_url"]:
            licence = f"[{licence}]({row['licence_url']})"
        citation = _cell(row["citation"])
        if row["citation_text"]:
            citation = f"[{citation or 'cite'}](#cite-{row['name']})"
        cells = [f"`{_cell(row['name'])}`", _cell(row["kind"]), _cell(row["pack"]), licence]
        cells += [_cell(row["dims"]), _cell(row["input"]), row["gated"], citation]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "## Citations", ""]
    for row in rows:
        if row["citation_text"]:
            out += [
                f'<a id="cite-{row["name"]}"></a>**{row["name"]}**',
                "",
                "```bibtex",
                row["citation_text"],
                "```",
                "",
            ]
    return "\n".join(out)


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, Any]]:
    """``(name, help, subparser)`` for each subcommand of ``parser``, in definition order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def _argument_rows(parser: argparse.ArgumentParser) -> list[tuple[str, str, str]]:
    """``(argument, help, default)`` for each argument of ``parser`` except ``--help``."""
    formatter = parser._get_formatter()
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            name = ", ".join(f"`{s}`" for s in action.option_strings)
            if action.nargs != 0:
                metavar = action.metavar or action.dest.upper()
                if action.choices:
                    metavar = "{" + ",".join(map(str, action.choices)) + "}"
                name += f" `{metavar}`"
        else:
            name = f"`{action.metavar or action.dest}`"
        help_text = formatter._expand_help(action) if action.help else ""
        default = action.default
        shown = "" if default in (None, False, argparse.SUPPRESS) else f"`{default}`"
        rows.append((name, _cell(help_text), shown))
    return rows


def cli_reference_markdown(parser: argparse.ArgumentParser | None = None) -> str:
    """The CLI reference page: every subcommand with its usage and arguments."""
    if parser is None:
        from histobag.cli import build_parser  # imported on use: the hook loads without it

        parser = build_parser()
    prog = parser.prog
    out = [
        "# Command line reference",
        "",
        f"`{prog}` and its subcommands, generated from the command's argument parser when",
        f"this site was built. `{prog} COMMAND --help` prints the same.",
        "",
        "```text",
        parser.format_usage().strip(),
        "```",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    commands = list(_subcommands(parser))
    for name, help_text, _ in commands:
        out.append(f"| [`{name}`](#{prog}-{name}) | {_cell(help_text)} |")
    for name, help_text, sub in commands:
        out += [
            "",
            f"## {prog} {name} {{#{prog}-{name}}}",
            "",
            _cell(help_text[:1].upper() + help_text[1:]) + ("." if help_text else ""),
            "",
            "```text",
            sub.format_usage().strip(),
            "```",
            "",
            "| argument | help | default |",
            "|---|---|---|",
        ]
        out += [f"| {arg} | {h} | {d} |" for arg, h, d in _argument_rows(sub)]
    return "\n".join(out) + "\n"


def _static_all(init: Path) -> list[str] | None:
    """The literal ``__all__`` of a module file, or None if it defines none."""
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    return None


def public_packages(root: str = "histobag") -> dict[str, list[str]]:
    """Each public package under ``root`` whose ``__init__`` defines ``__all__``: its names.

    Read from the source without importing it, so the heavy subpackages are not loaded.
    """
    spec = importlib.util.find_spec(root)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{root} is not an installed package")
    base = Path(next(iter(spec.submodule_search_locations)))
    packages = {}
    for init in sorted(base.rglob("__init__.py")):
        parts = init.parent.relative_to(base).parts
        if any(p.startswith("_") for p in parts):
            continue
        names = _static_all(init)
        if names is not None:
            packages[".".join((root, *parts))] = names
    return packages


def reference_page_path(package: str) -> str:
    """The docs path of a package's API reference page."""
    return f"{REFERENCE_DIR}/{package}.md"


def reference_pages() -> dict[str, str]:
    """The API reference: ``{docs path: Markdown}``, one page per public package and an index."""
    packages = public_packages()
    pages = {}
    index = [
        "# API reference",
        "",
        "Every public name of `histobag` and of its subpackages: what each package's",
        "`__all__` exports, generated from the docstrings when this site was built.",
        "",
        "| package | names |",
        "|---|---|",
    ]
    for package, names in packages.items():
        page = reference_page_path(package)
        index.append(f"| [`{package}`]({page.split('/', 1)[1]}) | {len(names)} |")
        members = "\n".join(f"        - {n}" for n in names)
        pages[page] = (
            # The heading's id is the package's path: docstrings' :mod: roles link to it.
            f"# `{package}` {{ #{package} }}\n\n"
            f"::: {package}\n"
            "    options:\n"
            "      show_root_heading: false\n"
            "      show_root_toc_entry: false\n"
            "      show_submodules: true\n"
            "      members:\n"
            f"{members}\n"
        )
    pages[f"{REFERENCE_DIR}/index.md"] = "\n".join(index) + "\n"
    return pages


def generated_pages() -> dict[str, str]:
    """Every generated page: ``{docs path: Markdown}``."""
    return {
        MODEL_TABLE_PAGE: model_table_markdown(),
        CLI_PAGE: cli_reference_markdown(),
        **reference_pages(),
    }


def on_files(files: Any, config: Any) -> Any:
    """MkDocs event: add the generated pages to the site's files (before the nav is built)."""
    from mkdocs.structure.files import File  # only present where mkdocs runs the hook

    for path, content in generated_pages().items():
        files.append(File.generated(config, path, content=content))
    return files


def on_config(config: Any) -> Any:
    """MkDocs event: list the generated API reference pages in the nav's "API reference"."""
    pages = [reference_page_path(p) for p in public_packages()]
    for entry in config["nav"] or []:
        if isinstance(entry, dict) and "API reference" in entry:
            entry["API reference"] = [{"Overview": f"{REFERENCE_DIR}/index.md"}, *pages]
    return config
