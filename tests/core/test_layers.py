"""The core's architecture holds: imports run down the layers, and one module writes files.

The layers live in the import-linter contract in ``pyproject.toml`` (DESIGN.md "Layers");
``lint-imports`` also runs in ``make lint``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "core" / "src" / "histobag"


def _contract() -> dict:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (contract,) = config["tool"]["importlinter"]["contracts"]
    return contract


def _core_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_lint_imports_keeps_the_layers_contract():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout


def test_every_core_module_sits_in_a_layer():
    named = {
        name.strip() for line in _contract()["layers"] for name in line.replace("|", ":").split(":")
    }
    top_level = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in _core_modules()}
    top_level.discard("__init__")
    assert top_level - named == set(), "add these modules to a layer in pyproject.toml"
    assert named - top_level == set(), "the contract names modules that no longer exist"


def _function_local_histobag_imports(path: Path):
    source = path.read_text()
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for statement in ast.walk(node):
            if isinstance(statement, ast.ImportFrom) and statement.level == 0:
                modules = [statement.module or ""]
            elif isinstance(statement, ast.Import):
                modules = [alias.name for alias in statement.names]
            else:
                continue
            if any(m == "histobag" or m.startswith("histobag.") for m in modules):
                yield statement.lineno, lines


def _has_reason(lineno: int, lines: list[str]) -> bool:
    """A ``#`` comment on the import's line or in the comment block just above its group."""
    if "#" in lines[lineno - 1]:
        return True
    i = lineno - 2
    while i >= 0 and (not lines[i].strip() or lines[i].strip().startswith(("from ", "import "))):
        i -= 1  # the other imports of the same group
    return i >= 0 and lines[i].strip().startswith("#")


@pytest.mark.parametrize("path", _core_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_function_local_imports_of_histobag_say_why(path):
    unexplained = [
        f"{path.name}:{lineno}"
        for lineno, lines in _function_local_histobag_imports(path)
        if not _has_reason(lineno, lines)
    ]
    assert unexplained == [], (
        "a function-local import of a histobag module is only for deferring a heavy lower layer "
        "(start-up speed); say so in a one-line comment, or import at the top"
    )


def _renames_outside_files_module() -> list[str]:
    found = []
    for path in _core_modules():
        if path.name == "files.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            name = node.func.attr
            owner = node.func.value
            is_os = isinstance(owner, ast.Name) and owner.id == "os"
            if (is_os and name in ("replace", "rename")) or name in (
                "mkstemp",
                "NamedTemporaryFile",
            ):
                keywords = {k.arg: k.value for k in node.keywords}
                prefix = keywords.get("prefix")
                scratch = isinstance(prefix, ast.Name) and prefix.id == "TMP_PREFIX"
                if not scratch:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {name}")
    return found


def test_only_the_files_module_renames_files_into_place():
    assert _renames_outside_files_module() == [], (
        "write through histobag.files (atomic_path, atomic_files, AtomicFile, write_*_atomic)"
    )
