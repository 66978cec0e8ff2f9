"""``histobag new-pack NAME``: a pack that installs, lists its model and passes its own tests.

The generated pack is installed with ``pip install --no-deps --target`` into a temporary folder
put on ``PYTHONPATH`` of the subprocesses only, so neither ``.venv`` nor this process's plugin
manager ever sees it.
"""

import ast
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from histobag.cli import build_parser, main
from histobag.errors import ArgumentError
from histobag.new_pack import TEMPLATES, create_pack, pack_names, render_pack

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[2]
FILES = {
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "src/histobag_acme/__init__.py",
    "src/histobag_acme/plugin.py",
    "src/histobag_acme/model.py",
    "tests/test_parity.py",
}


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    """``histobag new-pack acme --license Apache-2.0`` in a fresh folder."""
    root = tmp_path_factory.mktemp("new-pack")
    assert main(["new-pack", "acme", "--dir", str(root), "--license", "Apache-2.0"]) == 0
    return root / "histobag-acme"


@pytest.fixture(scope="module")
def installed(pack, tmp_path_factory):
    """The pack pip-installed (no dependencies: histobag and torch are here) into a target."""
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(pack),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return target


def _run(target: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python ARGS`` seeing the installed pack, offline."""
    paths = [str(target), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_new_pack_writes_a_complete_pack(pack, capsys):
    assert _files(pack) == FILES
    project = tomllib.loads((pack / "pyproject.toml").read_text())["project"]
    assert project["name"] == "histobag-acme"
    assert project["license"] == "Apache-2.0"
    assert project["entry-points"]["histobag"] == {"acme": "histobag_acme.plugin"}
    requirements = [re.split(r"[<>=!~ ]", r, maxsplit=1)[0] for r in project["dependencies"]]
    assert sorted(requirements) == ["histobag", "torch"]
    assert "PLACEHOLDER" in (pack / "LICENSE").read_text().splitlines()[0]
    # Every placeholder was filled in; the files are text an editor would have written.
    umask = os.umask(0o022)
    os.umask(umask)
    for path in pack.rglob("*"):
        if path.is_file():
            assert not re.search(r"\$[{a-z_]", path.read_text()), path
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_the_plugin_module_imports_no_torch(pack):
    source = (pack / "src" / "histobag_acme" / "plugin.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported == {"histobag"}
    for path in pack.rglob("*.py"):
        compile(path.read_text(), str(path), "exec")


def test_the_generated_code_is_ruff_clean(pack):
    ruff = Path(sys.executable).with_name("ruff")
    for args in (["check", "--no-cache", "."], ["format", "--no-cache", "--check", "."]):
        proc = subprocess.run(
            [str(ruff), *args], cwd=pack, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_installed_pack_lists_its_model_with_its_licence(installed):
    proc = _run(installed, "-m", "histobag", "list")
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert ["acme-tiny", "tiles", "histobag-acme", "Apache-2.0", "16", "no"] in rows
    assert "warning" not in proc.stderr

    proc = _run(installed, "-m", "histobag", "list", "--pack", "histobag-acme", "--json")
    assert proc.returncode == 0, proc.stderr
    (spec,) = json.loads(proc.stdout)
    assert spec["name"] == "acme-tiny"
    assert spec["factory"] == "histobag_acme.model:build_tiny"
    assert spec["license_url"] == "https://spdx.org/licenses/Apache-2.0.html"
    assert spec["citation"].startswith("@misc{acme_")


@pytest.mark.slow
def test_the_generated_parity_test_passes(pack, installed):
    proc = _run(installed, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=pack)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"\b3 passed\b", proc.stdout), proc.stdout


@pytest.mark.parametrize(
    ("name", "distribution", "package", "model"),
    [
        ("acme", "histobag-acme", "histobag_acme", "acme-tiny"),
        ("my-lab", "histobag-my-lab", "histobag_my_lab", "my-lab-tiny"),
        ("my_lab2", "histobag-my-lab2", "histobag_my_lab2", "my-lab2-tiny"),
    ],
)
def test_pack_names(name, distribution, package, model):
    names = pack_names(name)
    assert (names.distribution, names.package, names.model) == (distribution, package, model)
    assert names.name == distribution.removeprefix("histobag-")


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("Acme", "did you mean 'acme'"),
        ("1acme", "starting with a letter"),
        ("ac me", "lower-case letters and digits"),
        ("acme-", "single '-' or '_'"),
        ("a--b", "single '-' or '_'"),
        ("acme.x", "lower-case letters and digits"),
        ("ācme", "lower-case letters and digits"),
        ("a" * 41, "at most 40"),
        ("", "give the pack's NAME"),
        ("histobag-acme", "without the histobag- prefix"),
        ("gpl", "histobag's own packs"),
    ],
)
def test_bad_names_are_refused_before_anything_is_written(name, says, tmp_path, capsys):
    with pytest.raises(ArgumentError, match=re.escape(says)):
        pack_names(name)
    assert main(["new-pack", name, "--dir", str(tmp_path)]) == 2
    assert says in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("license", ['MIT"', "MIT\nx", "", "MIT OR"])
def test_a_bad_licence_is_refused(license, tmp_path):
    with pytest.raises(ArgumentError, match="SPDX"):
        create_pack("acme", tmp_path, license=license)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_pack_is_not_overwritten_unless_forced(tmp_path, capsys):
    root = create_pack("acme", tmp_path / "packs")
    assert root == tmp_path / "packs" / "histobag-acme"
    plugin = root / "src" / "histobag_acme" / "plugin.py"
    plugin.write_text("# my edits\n")
    (root / "NOTES.md").write_text("mine\n")

    assert main(["new-pack", "acme", "--dir", str(tmp_path / "packs")]) == 2
    assert "--force" in capsys.readouterr().err
    assert plugin.read_text() == "# my edits\n"

    assert main(["new-pack", "acme", "--dir", str(tmp_path / "packs"), "--force"]) == 0
    assert "acme-tiny" in plugin.read_text()
    assert (root / "NOTES.md").read_text() == "mine\n"  # the template's files only


def test_a_file_in_the_way_is_refused_even_with_force(tmp_path):
    (tmp_path / "histobag-acme").write_text("not a folder\n")
    with pytest.raises(ArgumentError, match="not a folder"):
        create_pack("acme", tmp_path, force=True)
    assert (tmp_path / "histobag-acme").read_text() == "not a folder\n"


def test_the_command_says_what_it_wrote_and_what_to_do_next(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["new-pack", "acme"]) == 0
    out = capsys.readouterr().out
    written = {path.format(package="histobag_acme") for path in TEMPLATES}
    assert written == FILES
    assert {line.strip() for line in out.splitlines()} >= written
    assert "pip install ./histobag-acme" in out
    assert "histobag list --pack histobag-acme" in out
    assert _files(tmp_path / "histobag-acme") == FILES


def test_new_pack_is_in_the_cli_reference():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert "new-pack" in sub.choices
    help_text = {a.dest: a.help for a in sub.choices["new-pack"]._actions}
    assert all(help_text[dest] for dest in ("name", "dir", "license", "force"))
    assert "new-pack" in parser.format_help()


def test_render_pack_fills_in_the_licence_and_the_names():
    files = render_pack(pack_names("my-lab"), "LicenseRef-Proprietary")
    assert set(files) == {path.format(package="histobag_my_lab") for path in TEMPLATES}
    plugin = files["src/histobag_my_lab/plugin.py"]
    assert 'name="my-lab-tiny"' in plugin
    assert 'license="LicenseRef-Proprietary"' in plugin
    assert 'factory="histobag_my_lab.model:build_tiny"' in plugin


def test_the_plugin_guide_shows_the_generated_files_as_they_are(tmp_path):
    """docs/plugins.md shows the pack of ``histobag new-pack acme`` file by file."""
    doc = (REPO_ROOT / "docs" / "plugins.md").read_text()
    shown = dict(re.findall(r"```(?:toml|python)\n# histobag-acme/(\S+)\n(.*?)```", doc, re.S))
    assert set(shown) == {
        "pyproject.toml",
        "src/histobag_acme/plugin.py",
        "src/histobag_acme/model.py",
        "tests/test_parity.py",
    }
    root = create_pack("acme", tmp_path)  # the defaults, as the guide runs it
    for relative, text in shown.items():
        assert text == (root / relative).read_text(), f"docs/plugins.md shows an old {relative}"
