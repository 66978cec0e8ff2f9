"""The code blocks of README.md and docs/**/*.md run as written (issue 21).

Every block tagged ``python``, ``bash``, ``sh``, ``shell`` or ``console`` runs, unless the line
directly above its fence (or a comment line between) is ``<!-- docs-test: skip REASON -->``.
Generated pages (``docs/cli.md``, ``docs/choose_a_model.md``, ``docs/reference/``) are not
checked. One test per page runs the page's blocks in order, in a fresh temporary working
directory, in one Python process: python blocks share one namespace, shell blocks run with
``bash -e``. A failing block fails the test with its page, line and output.

Before a page runs, its directory holds what ``docs/getting_started.md`` ("About the examples")
promises the reader:

* ``slides/``: four small sample slides (``histobag.slide.samples.sample_slide``), named
  ``slide1.svs`` to ``slide4.svs``, 0.5 µm/px;
* ``annotations.csv``: a ``slide`` column for those four slides and the columns ``label``
  (``tumor``/``normal``), ``subtype`` (``luad``/``lusc``), ``site`` (``A``/``B``) and ``age``;
* an offline Hugging Face cache (``HF_HUB_CACHE``, ``HF_HUB_OFFLINE=1``) holding random
  weights, in each model's official checkpoint format, for the models the examples name
  (:data:`CACHED_MODELS`);
* the virtual environment's ``bin`` first on ``PATH`` (so ``histobag`` is the checkout's).

Anything else a page needs it makes in a visible block.

Most of a page's time is its processes importing torch, so outside pytest-xdist the selected
pages run side by side, as many at a time as there are cores (:func:`page_runs`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.docs.doc_blocks import (
    MARKER,
    REPO,
    RUNNABLE_TAGS,
    doc_pages,
    extract_blocks,
    page_blocks,
)

SLIDES = ("slide1", "slide2", "slide3", "slide4")
ANNOTATIONS = (
    "slide,label,subtype,site,age\n"
    "slide1,tumor,luad,A,61\n"
    "slide2,tumor,lusc,B,58\n"
    "slide3,normal,luad,A,70\n"
    "slide4,normal,lusc,B,49\n"
)
#: Tags shown but never run; a block of any other tag fails the accounting test.
SHOWN_TAGS = frozenset({"text", "json", "toml", "yaml", "ini", "csv", "diff", "python-repr"})
#: How long one page may take (the whole run is meant to take about a minute).
PAGE_TIMEOUT_S = 300


def _timm_checkpoint(arch: str) -> Callable[[Path], tuple[str, str]]:
    """Random weights as timm publishes them: ``model.safetensors`` of the timm state dict."""

    def write(folder: Path) -> tuple[str, str]:
        import timm
        from safetensors.torch import save_file

        model = timm.create_model(arch, pretrained=False)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "file")
        return model.pretrained_cfg["hf_hub_id"], "model.safetensors"

    return write


#: Models the examples name -> writer of their official checkpoint (returns repo, filename).
CACHED_MODELS: dict[str, Callable[[Path], tuple[str, str]]] = {
    "resnet18_imagenet": _timm_checkpoint("resnet18"),
}


def write_hf_cache(cache: Path) -> Path:
    """An offline Hugging Face cache of :data:`CACHED_MODELS`, laid out as ``hf_hub_download``
    leaves one (blob named by digest, snapshot symlink, ``refs/main``)."""
    commit = hashlib.sha1(b"histobag docs examples").hexdigest()
    scratch = cache / ".scratch"
    scratch.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for write in CACHED_MODELS.values():
            repo, filename = write(scratch)
            data = scratch / "file"
            digest = hashlib.sha256(data.read_bytes()).hexdigest()
            repo_dir = cache / f"models--{repo.replace('/', '--')}"
            (repo_dir / "blobs").mkdir(parents=True)
            data.rename(repo_dir / "blobs" / digest)
            snapshot = repo_dir / "snapshots" / commit / filename
            snapshot.parent.mkdir(parents=True)
            snapshot.symlink_to(Path("..", "..", "blobs", digest))
            (repo_dir / "refs").mkdir()
            (repo_dir / "refs" / "main").write_text(commit)
    scratch.rmdir()
    return cache


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """What every page's directory starts with: slides, annotations, the Hugging Face cache."""
    from histobag.slide.samples import sample_slide

    root = tmp_path_factory.mktemp("doc-examples")
    for seed, name in enumerate(SLIDES):
        sample_slide(root / "slides" / f"{name}.svs", size=(1024, 768), seed=seed)
    (root / "annotations.csv").write_text(ANNOTATIONS)
    write_hf_cache(root / "hf-cache")
    return root


def page_env(prepared: Path, home: Path) -> dict[str, str]:
    """The environment the blocks run in: offline cache, the venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SLURM_"))}
    return {
        **env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "HF_HUB_CACHE": str(prepared / "hf-cache"),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "MPLBACKEND": "Agg",
        "PYTHONUNBUFFERED": "1",
        "HOME": str(home),  # examples may write caches (~/.cache): never the real home
        "NUMBA_CACHE_DIR": str(home / "numba"),
    }


def _pages_that_run() -> list[Path]:
    return [page for page in doc_pages() if any(block.runs for block in page_blocks(page))]


def run_page(page: Path, prepared: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run the page's blocks in ``tmp_path/work``, prepared as the module docstring says."""
    blocks = [block for block in page_blocks(page) if block.runs]
    workdir = tmp_path / "work"
    shutil.copytree(prepared / "slides", workdir / "slides")
    shutil.copy(prepared / "annotations.csv", workdir / "annotations.csv")
    spec = tmp_path / "blocks.json"
    spec.write_text(
        json.dumps([{"page": b.page, "line": b.line, "tag": b.tag, "code": b.code} for b in blocks])
    )
    (tmp_path / "home").mkdir()
    return subprocess.run(
        [sys.executable, str(Path(__file__).with_name("doc_blocks.py")), str(spec)],
        cwd=workdir,
        env=page_env(prepared, tmp_path / "home"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=PAGE_TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="session")
def page_runs(request, prepared, tmp_path_factory):
    """Page -> its run, started together for every page test selected (as many at a time as
    there are cores: each page is mostly one process importing torch), so that a serial run
    takes about its CPU time over the cores. Under pytest-xdist, which spreads the pages over
    its workers itself, each page runs when its test comes (empty mapping)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        yield {}
        return
    selected = [
        item.callspec.params["page"]
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_page_examples_run"
    ]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with ThreadPoolExecutor(max_workers=max(1, cores or 1)) as pool:
        yield {
            page: pool.submit(run_page, page, prepared, tmp_path_factory.mktemp("page"))
            for page in selected
        }


@pytest.mark.slow
@pytest.mark.parametrize("page", _pages_that_run(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_page_examples_run(page: Path, prepared: Path, page_runs, tmp_path: Path) -> None:
    started_run = page_runs.get(page)
    proc = started_run.result() if started_run else run_page(page, prepared, tmp_path)
    if proc.returncode == 0:
        return
    blocks = [block for block in page_blocks(page) if block.runs]
    started = [i for i in range(len(blocks)) if MARKER.format(index=i) in proc.stdout]
    failed = blocks[started[-1]] if started else blocks[0]
    output = proc.stdout.split(MARKER.format(index=started[-1]))[-1] if started else proc.stdout
    pytest.fail(
        f"the {failed.tag} block at {failed.where} failed (exit status {proc.returncode}):\n"
        f"{failed.code}\n--- its output ---\n{output[-6000:]}",
        pytrace=False,
    )


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_block_is_run_or_skipped_with_a_reason(page: Path) -> None:
    for block in page_blocks(page):
        assert block.tag in RUNNABLE_TAGS | SHOWN_TAGS, (
            f"{block.where}: tag {block.tag!r} is neither run ({sorted(RUNNABLE_TAGS)}) nor "
            f"shown ({sorted(SHOWN_TAGS)}): tag the block so it is one or the other"
        )
        if block.skip is not None:
            assert block.runnable, f"{block.where}: a skip marker on a {block.tag} block"
            assert block.skip, f"{block.where}: <!-- docs-test: skip --> needs a reason"


def test_the_pages_checked_are_readme_and_the_hand_written_docs() -> None:
    checked = {page.relative_to(REPO).as_posix() for page in doc_pages()}
    assert {"README.md", "docs/getting_started.md", "docs/slides.md"} <= checked
    assert not {p for p in checked if p in ("docs/cli.md", "docs/choose_a_model.md")}
    assert not {p for p in checked if p.startswith("docs/reference/")}


def test_the_extractor_finds_tags_lines_markers_and_indented_fences() -> None:
    text = "\n".join(
        [
            "# Page",  # 1
            "<!-- docs-test: skip needs a GPU -->",  # 2
            "```python",  # 3
            "import torch",
            "```",
            "",
            "1. A step:",
            "",
            "   ```bash",  # 9
            "   histobag list",
            "   ```",
            "<!-- docs-test: skip -->",  # 12
            "<!-- test: named -->",
            "```console",  # 14
            "$ histobag --version",
            "```",
            "<!-- docs-test: skip too far away -->",
            "",
            "````text",  # 19
            "```python",
            "````",
        ]
    )
    blocks = extract_blocks(text, "page.md")
    assert [(b.line, b.tag, b.skip) for b in blocks] == [
        (3, "python", "needs a GPU"),
        (9, "bash", None),
        (14, "console", ""),
        (19, "text", None),
    ]
    assert blocks[1].code == "histobag list\n"
    assert blocks[3].code == "```python\n"
    assert [b.runs for b in blocks] == [False, True, False, False]
    with pytest.raises(ValueError, match=r"page\.md:1: the fence"):
        extract_blocks("```python\nx = 1\n", "page.md")


def test_a_failing_block_is_reported_with_its_page_line_and_output(tmp_path: Path) -> None:
    blocks = extract_blocks(
        "```python\nx = 41\n```\n\n```python\nprint('seen', x + 1)\n1 / 0\n```\n", "p.md"
    )
    spec = tmp_path / "blocks.json"
    spec.write_text(
        json.dumps([{"page": "p.md", "line": b.line, "tag": b.tag, "code": b.code} for b in blocks])
    )
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("doc_blocks.py")), str(spec)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    last = proc.stdout.split(MARKER.format(index=1))[-1]
    assert "seen 42" in last and "ZeroDivisionError" in last and '"p.md", line 7' in last


def test_the_demo_pictures_are_pngs_shown_on_the_start_and_getting_started_pages() -> None:
    from PIL import Image

    for name in ("umap.png", "mosaic.png"):
        picture = REPO / "docs" / "images" / name
        with Image.open(picture) as image:
            assert image.format == "PNG" and min(image.size) >= 300
        assert picture.stat().st_size < 300_000
        for page in ("docs/index.md", "docs/getting_started.md"):
            assert f"images/{name}" in (REPO / page).read_text(), f"{page} does not show {name}"


def test_the_demo_pictures_have_the_size_and_kind_the_demo_renders(tmp_path: Path) -> None:
    """The pictures are what the demo's calls draw (here on four points, which a PCA maps)."""
    import numpy as np
    from PIL import Image

    from histobag.analysis import DatasetFeatures, Mosaic, SlideMap
    from histobag.analysis.tiles import ArrayTileSource
    from histobag.demo import demo_analysis

    assert "umap.png" in demo_analysis.__doc__ and "mosaic.png" in demo_analysis.__doc__
    rng = np.random.default_rng(0)
    features = DatasetFeatures.from_arrays(
        {f"s{i}": rng.normal(size=(1, 8)) for i in range(4)},
        {f"s{i}": [[0, 0]] for i in range(4)},
        annotations={"s0": "normal", "s1": "normal", "s2": "tumor", "s3": "tumor"},
    )
    smap = SlideMap.from_features(features)
    umap = smap.save(tmp_path / "umap.png", title="UMAP of tile features, by label")
    tiles = ArrayTileSource({(f"s{i}", 0, 0): np.full((8, 8, 3), 200, np.uint8) for i in range(4)})
    mosaic = Mosaic(smap, tiles, num_tiles_x=24, expanded=True).save(tmp_path / "mosaic.png")
    for rendered, name in ((umap, "umap.png"), (mosaic, "mosaic.png")):
        with Image.open(rendered) as made, Image.open(REPO / "docs" / "images" / name) as shown:
            assert (shown.format, shown.mode) == (made.format, made.mode)
            size_matches = (
                shown.size == made.size if name == "umap.png" else shown.width == made.width
            )
            assert size_matches, f"docs/images/{name} is {shown.size}, the demo draws {made.size}"
