"""Principle 1: importing histobag and listing extractors imports no heavy library."""

import json
import subprocess
import sys

HEAVY = ["torch", "timm", "transformers", "open_clip", "numpy", "openslide", "PIL", "pandas"]


def test_import_and_list_import_nothing_heavy():
    code = (
        "import sys, json, histobag\n"
        "names = histobag.list_extractors()\n"
        "infos = [histobag.extractor_info(n) for n in names]\n"
        f"print(json.dumps({{'n': len(names), 'heavy': [m for m in {HEAVY!r} "
        "if m in sys.modules]}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    result = json.loads(proc.stdout)
    assert result["n"] > 0
    assert result["heavy"] == []


def test_histobag_list_cli_imports_no_torch():
    code = (
        "import sys\nfrom histobag.cli import main\nmain(['list'])\n"
        f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\n"
        "print('TORCH', 'torch' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert "resnet50_imagenet" in proc.stdout
    assert "HEAVY []" in proc.stdout  # numpy, pandas, slides: none for a listing
    assert proc.stdout.strip().endswith("TORCH False")
