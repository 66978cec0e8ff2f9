"""``histobag extract`` with bad options: ``error: ...`` and exit status 2, never a traceback;
an empty dataset: a warning, and exit status 1 with ``--strict``."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

import histobag
from histobag import validation
from histobag.cli import main
from histobag.errors import EmptyRunWarning, StorageError
from tests.core.bag_helpers import PIXELNET, TILE_PX, TILE_UM, make_slides
from tests.core.toy_models import registered

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    return make_slides(tmp_path_factory.mktemp("clislides"), n=1)


@pytest.fixture
def pixelnet():
    with registered(PIXELNET):
        yield


def _extract(slides, outdir, *extra):
    return main(
        [
            "extract",
            "--extractor",
            "pixelnet",
            "--slides",
            str(slides),
            "--tile-px",
            str(TILE_PX),
            "--tile-um",
            str(TILE_UM),
            "--outdir",
            str(outdir),
            "--workers",
            "0",
            "--no-progress",
            *extra,
        ]
    )


def _clean_error(capsys, expected):
    err = capsys.readouterr().err
    assert err.startswith("error: "), err
    assert expected in err, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        # before: ZeroDivisionError traceback
        (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0."),
        # before: every slide FAILED "could not be read", exit 1
        (["--batch-size", "-4"], "--batch-size must be an integer >= 1, got -4."),
        # before: raw ValueError from the DataLoader / from int()
        (["--workers", "-3"], "--workers must be 'auto' or an integer from 0 to 1024"),
        (["--workers", "many"], "got 'many'"),
        # before: accepted (10^6 x 10^6 px tiles)
        (["--tile-px", "1000000"], "--tile-px must be an integer from 8 to 16384 pixels"),
        (["--tile-um", "-8"], "--tile-um must be a positive number of micrometres"),
        (["--tile-um", "twentyx"], "got 'twentyx'"),
        (["--min-tiles", "-1"], "--min-tiles must be an integer >= 0, got -1."),
    ],
)
def test_bad_numbers_are_refused_before_any_work(
    slides, tmp_path, capsys, pixelnet, option, expected
):
    assert _extract(slides, tmp_path / "bags", *option) == 2
    _clean_error(capsys, expected)
    assert not (tmp_path / "bags").exists()


def test_outdir_that_is_a_file_or_lies_under_one(slides, tmp_path, capsys, pixelnet):
    file = tmp_path / "bags.txt"
    file.write_text("a file")
    assert _extract(slides, file) == 2
    _clean_error(capsys, f"--outdir {file} is a file, not a folder")
    assert _extract(slides, file / "bags") == 2
    _clean_error(capsys, f"lies under {file}, which is a file")


def test_slides_pointing_at_a_file(slides, tmp_path, capsys, pixelnet):
    # before: "Slide folder ... does not exist"
    assert _extract(slides / "slide-0.svs", tmp_path / "bags") == 2
    _clean_error(capsys, f"--slides {slides / 'slide-0.svs'} is a file; give a folder of slides")


def test_unwritable_outdir_simulated(slides, tmp_path, capsys, pixelnet, monkeypatch):
    """Simulated (os.access says no): proves the wording and the exit status as any user."""
    real_access = os.access
    folder = tmp_path / "locked"
    folder.mkdir()

    def access(path, mode, *args, **kwargs):
        if Path(path) == folder and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(validation.os, "access", access)
    assert _extract(slides, folder / "bags") == 2
    _clean_error(capsys, f"{folder} is not writable by this user; choose a folder you can")


def test_unwritable_outdir_with_real_permissions(tmp_path):
    """Real permissions: a folder mode 0o555, checked by a process that cannot write it. Root
    writes through any mode, so as root the check runs in a forked child that has dropped to
    the unprivileged user ``nobody`` (65534) first."""
    folder = Path(tempfile.mkdtemp(prefix="histobag-locked-", dir="/tmp"))  # reachable by all
    folder.chmod(0o555)
    try:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 3
            try:
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                validation.check_output_dir(folder / "bags")
                code = 1  # accepted: the bug
            except StorageError as exc:
                code = 0 if "is not writable by this user" in str(exc) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


def _read_only_mount_command(mount_point: Path) -> list[str] | None:
    """A command prefix that runs the rest in a private mount namespace where ``mount_point``
    is an empty read-only tmpfs, or None where that is not possible (no unshare, no rights)."""
    unshare = shutil.which("unshare")
    if unshare is None or sys.platform != "linux":
        return None
    prefix = [unshare, "--mount"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    script = 'mount -t tmpfs -o ro,size=1m tmpfs "$0" && exec "$@"'
    command = [*prefix, "sh", "-c", script, str(mount_point)]
    probe = subprocess.run(
        [*command, "sh", "-c", 'touch "$0/probe"', str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if "Read-only file system" not in probe.stderr:
        return None
    return command


def test_read_only_outdir_on_a_real_read_only_mount(slides, tmp_path):
    """A real EROFS, even as root: the folder is a read-only tmpfs in a private mount
    namespace (invisible outside the child process). Skipped where unshare is not allowed."""
    mount_point = tmp_path / "ro"
    mount_point.mkdir()
    command = _read_only_mount_command(mount_point)
    if command is None:
        pytest.skip("cannot mount a read-only tmpfs here (unshare/mount not permitted)")
    cli = [
        sys.executable,
        "-m",
        "histobag.cli",
        "extract",
        "--extractor",
        "example-colorstats",
        "--slides",
        str(slides),
        "--tile-px",
        str(TILE_PX),
        "--tile-um",
        str(TILE_UM),
        "--workers",
        "0",
        "--no-progress",
    ]
    for outdir in (mount_point, mount_point / "bags"):
        proc = subprocess.run(
            [*command, *cli, "--outdir", str(outdir)],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            timeout=300,
            check=False,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: --outdir "), proc.stderr
        assert f"{mount_point} is on a read-only file system" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_empty_dataset_warns_and_strict_exits_1(tmp_path, capsys, pixelnet):
    empty = tmp_path / "no-slides"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a slide")
    assert _extract(empty, tmp_path / "bags") == 0
    captured = capsys.readouterr()
    assert "0 done, 0 skipped, 0 failed" in captured.out
    assert "warning: The dataset has no slides, so no bag was written" in captured.err
    assert captured.err.count("The dataset has no slides") == 1  # not also as a Python warning
    report = json.loads((tmp_path / "bags" / "run_report.json").read_text())
    assert report["warnings"] and "no slides" in report["warnings"][0]

    assert _extract(empty, tmp_path / "bags", "--strict") == 1
    assert "warning: The dataset has no slides" in capsys.readouterr().err


def test_empty_dataset_and_all_failed_warn_in_python(slides, tmp_path, pixelnet):
    empty = tmp_path / "no-slides"
    empty.mkdir()
    extractor = histobag.build_feature_extractor("pixelnet", device="cpu")
    dataset = histobag.Dataset(empty, tile_px=TILE_PX, tile_um=TILE_UM)
    with pytest.warns(EmptyRunWarning, match="The dataset has no slides") as caught:
        report = dataset.generate_feature_bags(extractor, tmp_path / "a", progress=False)
    assert caught[0].filename == __file__  # points at the caller's line, not histobag's
    assert report.warnings and not report.done

    dataset = histobag.Dataset(slides, tile_px=TILE_PX, tile_um=TILE_UM)
    with pytest.warns(EmptyRunWarning, match="all 1 slides failed"):
        dataset.generate_feature_bags(
            extractor, tmp_path / "b", min_tiles=10**9, progress=False, num_workers=0
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyRunWarning)  # a run with bags does not warn
        dataset.generate_feature_bags(extractor, tmp_path / "c", progress=False, num_workers=0)
