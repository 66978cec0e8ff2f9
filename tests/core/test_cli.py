import json
import subprocess
import sys

import histobag
from histobag.cli import main


def test_list_table(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["name", "kind", "pack", "licence", "dims", "gated"]
    row = next(line for line in out.splitlines() if line.startswith("resnet50_imagenet "))
    expected = ["resnet50_imagenet", "tiles", "histobag-apache", "Apache-2.0", "2048", "no"]
    assert row.split() == expected


def test_list_filtered_by_license(capsys):
    assert main(["list", "--license", "mit"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]]
    assert names == histobag.list_extractors(license="MIT")
    assert "resnet50_imagenet" not in names


def test_list_json(capsys):
    assert main(["list", "--json", "--tag", "imagenet"]) == 0
    specs = json.loads(capsys.readouterr().out)
    assert {s["name"] for s in specs} == set(histobag.list_extractors(tag="imagenet"))
    assert all(s["factory"].startswith("histobag_apache.") for s in specs)


def test_list_nothing_matching(capsys):
    assert main(["list", "--license", "WTFPL"]) == 0
    assert "No extractors installed match these filters" in capsys.readouterr().out


def test_info_shows_preprocessing_and_citation(capsys):
    assert main(["info", "vit_base_patch16_224_imagenet"]) == 0
    out = capsys.readouterr().out
    assert "licence" in out and "Apache-2.0" in out
    assert "normalize mean=[0.5, 0.5, 0.5]" in out
    assert "@inproceedings{dosovitskiy2021image" in out
    assert "tile_px, layers, pooling" in out


def test_info_unknown_is_a_clean_error(capsys):
    assert main(["info", "resnet50_imagnet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No installed extractor") and "Traceback" not in err


def test_version_console_script():
    proc = subprocess.run(
        [sys.executable, "-m", "histobag.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.strip() == f"histobag {histobag.__version__}"


def test_verify_lists_damaged_bags_and_exits_1(tmp_path, capsys):
    from tests.core.bag_helpers import PIXELNET, TILE_PX, TILE_UM, make_slides
    from tests.core.toy_models import registered

    slides = make_slides(tmp_path / "slides", n=2)
    outdir = tmp_path / "bags"
    with registered(PIXELNET):
        extractor = histobag.build_feature_extractor("pixelnet", device="cpu")
        dataset = histobag.Dataset(slides, tile_px=TILE_PX, tile_um=TILE_UM)
        dataset.generate_feature_bags(extractor, outdir, progress=False, num_workers=0)
    assert main(["verify", str(outdir)]) == 0
    assert "2 verified, 0 damaged, 0 missing, 0 unrecorded" in capsys.readouterr().out

    pt = outdir / "slide-1.pt"
    raw = bytearray(pt.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # same size
    pt.write_bytes(bytes(raw))
    (outdir / "slide-0.pt").unlink()
    assert main(["verify", str(outdir)]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED  slide-1: slide-1.pt has changed since it was written" in out
    assert "DAMAGED  slide-0: slide-0.pt is missing" in out
    assert "1 missing" not in out and "0 verified, 2 damaged" in out

    assert main(["verify", str(outdir), "--json"]) == 1
    found = json.loads(capsys.readouterr().out)
    assert found["ok"] is False and sorted(found["damaged"]) == ["slide-0", "slide-1"]
    assert found["verified"] == 0 and found["missing"] == {} and found["unrecorded"] == []


def test_verify_without_a_manifest_is_a_clean_error(tmp_path, capsys):
    assert main(["verify", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no bags_manifest.json" in err
    assert main(["verify", str(tmp_path / "missing")]) == 2
    assert "does not exist; give a bags folder" in capsys.readouterr().err
