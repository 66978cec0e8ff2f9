"""Each pack installed separately (pip install --target), listed in a clean interpreter.

``python -S`` skips site-packages, so only the targets on PYTHONPATH (and pluggy) are visible:
exactly what a user with that combination of packs installed would see.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pluggy
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKS = {
    "core": REPO_ROOT / "core",
    "apache": REPO_ROOT / "plugins" / "apache",
    "gpl": REPO_ROOT / "plugins" / "gpl",
    "noncommercial": REPO_ROOT / "plugins" / "noncommercial",
    "example": REPO_ROOT / "tests" / "plugins" / "histobag-example",
}


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    root = tmp_path_factory.mktemp("targets")
    for name, source in PACKS.items():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--target",
                str(root / name),
                str(source),
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
    deps = root / "deps"
    shutil.copytree(Path(pluggy.__file__).parent, deps / "pluggy")
    return root


def _run(targets: Path, packs: list[str], code: str) -> subprocess.CompletedProcess:
    paths = [str(targets / p) for p in ["core", *packs]] + [str(targets / "deps")]
    return subprocess.run(
        [sys.executable, "-S", "-c", code],
        env={"PYTHONPATH": ":".join(paths), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=targets,
    )


LIST = (
    "import json, sys, histobag; names = histobag.list_extractors(); "
    "print(json.dumps({'names': names, "
    "'licenses': sorted({histobag.extractor_info(n).license for n in names}), "
    "'packs': sorted({histobag.extractor_info(n).pack for n in names}), "
    "'torch': 'torch' in sys.modules}))"
)


def _listing(targets, packs):
    proc = _run(targets, packs, LIST)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_core_alone_lists_nothing(targets):
    result = _listing(targets, [])
    assert result == {"names": [], "licenses": [], "packs": [], "torch": False}


def test_core_plus_apache_has_no_gpl_or_noncommercial_model(targets):
    result = _listing(targets, ["apache"])
    assert result["packs"] == ["histobag-apache"]
    assert "resnet50_imagenet" in result["names"]
    assert not {"ctranspath", "retccl", "uni", "phikon", "plip"} & set(result["names"])
    assert "keep" in result["names"]  # MIT weights
    assert not {"musk", "gpfm", "genbio-pathfm"} & set(result["names"])
    assert not {"kaiko-vits8", "kaiko-vitl14", "lunit-vits8"} & set(result["names"])
    assert "midnight-12k" in result["names"]  # MIT
    assert {"hibou-b", "hibou-l"} <= set(result["names"])  # Apache-2.0
    assert "h-optimus-1" not in result["names"]  # academic-research terms
    assert not {"h0-mini", "h0-mini-cls-mean"} & set(result["names"])  # non-commercial
    assert not {"conch", "conch-v1.5"} & set(result["names"])  # CC-BY-NC-ND-4.0
    assert all(not lic.startswith(("GPL", "CC-BY-NC")) for lic in result["licenses"])
    assert result["torch"] is False


def test_each_pack_adds_only_its_models(targets):
    apache = set(_listing(targets, ["apache"])["names"])
    gpl = set(_listing(targets, ["gpl"])["names"])
    nc = set(_listing(targets, ["noncommercial"])["names"])
    assert {f"kaiko-vit{v}" for v in ("s8", "s16", "b8", "b16", "l14")} | {"lunit-vits8"} <= nc
    assert "midnight-12k" not in nc
    assert "h-optimus-1" in nc and not {"hibou-b", "hibou-l"} & nc
    assert {"h0-mini", "h0-mini-cls-mean"} <= nc
    assert {"conch", "conch-v1.5"} <= nc
    everything = _listing(targets, ["apache", "gpl", "noncommercial", "example"])
    assert set(everything["names"]) == apache | gpl | nc | {"example-colorstats"}
    assert not (apache & gpl or apache & nc or gpl & nc)
    assert everything["packs"] == sorted(
        {"histobag-apache", "histobag-example"}
        | ({"histobag-gpl"} if gpl else set())
        | ({"histobag-noncommercial"} if nc else set())
    )


def test_third_party_pack_is_discovered_by_entry_point(targets):
    result = _listing(targets, ["example"])
    assert result["names"] == ["example-colorstats"]
    assert result["packs"] == ["histobag-example"]


def test_missing_pack_is_named(targets):
    code = (
        "import histobag\n"
        "try:\n    histobag.extractor_info('ctranspath')\n"
        "except histobag.HistobagError as e:\n    print(e)\n"
    )
    proc = _run(targets, ["apache"], code)
    assert "ctranspath is provided by histobag-gpl: pip install histobag-gpl" in proc.stdout


def test_broken_pack_is_reported_and_others_still_load(targets, tmp_path):
    broken = tmp_path / "broken"
    info = broken / "histobag_broken-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: histobag-broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[histobag]\nbroken = histobag_broken_missing.plugin\n")
    paths = [str(targets / "core"), str(targets / "example"), str(broken), str(targets / "deps")]
    proc = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            "import histobag, json; print(json.dumps(histobag.list_extractors())); "
            "(failure,) = histobag.plugin_failures(); print(failure); "
            "print(json.dumps([failure.hook, failure.entry_point, failure.traceback]))",
        ],
        env={"PYTHONPATH": ":".join(paths)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert json.loads(lines[0]) == ["example-colorstats"]
    assert "histobag pack 'histobag-broken'" in lines[1]
    assert "ModuleNotFoundError" in lines[1]
    hook, entry_point, trace = json.loads(lines[2])
    assert hook == "" and entry_point == "broken = histobag_broken_missing.plugin"
    assert trace.startswith("Traceback") and "No module named 'histobag_broken_missing'" in trace
    assert "histobag-broken" in proc.stderr  # also warned
