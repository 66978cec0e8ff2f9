"""The copy-paste examples of docs/distributed.md run as written, on CPU with tiny settings.

Each shell block marked ``<!-- test: NAME -->`` is taken from the page and run with bash; the
page's settings block is replaced by tiny values (the test pack's ``example-colorstats`` model,
small sample slides), and SLURM's array variables are set as ``sbatch`` would.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from histobag.cluster import Shard
from tests.core.bag_helpers import make_slides

DOC = Path(__file__).resolve().parents[2] / "docs" / "distributed.md"
BIN = Path(sys.executable).parent
SLIDE_NAMES = [f"slide-{i}" for i in range(6)]

pytestmark = pytest.mark.slow


def _blocks() -> dict[str, str]:
    """Marker name -> the shell block that follows it."""
    pattern = re.compile(r"<!-- (test: [\w-]+|settings) -->\n```bash\n(.*?)```", re.DOTALL)
    return {
        m.group(1).removeprefix("test: "): m.group(2) for m in re.finditer(pattern, DOC.read_text())
    }


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    return make_slides(tmp_path_factory.mktemp("doc-slides"), n=len(SLIDE_NAMES))


def _env(slides: Path, outdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK"))}
    return {
        **env,
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "EXTRACTOR": "example-colorstats",
        "SLIDES": str(slides),
        "OUTDIR": str(outdir),
        "TILE_PX": "64",
        "TILE_UM": "32",
        **extra,
    }


def _bash(block: str, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", block],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(*procs: subprocess.Popen) -> list[str]:
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        outs.append(out)
    return outs


def _report(outdir: Path) -> dict:
    report = json.loads((outdir / "run_report.json").read_text())
    assert sorted(report["slides"]) == SLIDE_NAMES
    assert {s["status"] for s in report["slides"].values()} == {"done"}
    assert sorted(p.stem for p in outdir.glob("*.pt")) == SLIDE_NAMES
    return report


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def test_the_settings_block_sets_every_variable_the_examples_use():
    blocks = _blocks()
    assert set(blocks) == {"settings", "torchrun", "torchrun-nodes", "sbatch", "shell", "report"}
    settings = set(re.findall(r"^(\w+)=", blocks["settings"], re.MULTILINE))
    used = {
        v for name, b in blocks.items() if name != "settings" for v in re.findall(r"\$(\w+)", b)
    }
    launcher = {"NODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "i"}  # explained in the text
    assert used - launcher <= settings


def test_the_shard_table_is_the_split_histobag_makes():
    rows = re.findall(
        r"\| `--shard (\d)/3`, array task \d of 3 \| ([\d, ]+)\.\.\.", DOC.read_text()
    )
    assert len(rows) == 3
    for shard, starts in rows:
        first = [int(s) for s in starts.split(",")]
        assert Shard(int(shard) - 1, 3).order(12)[: len(first)] == first


def test_torchrun_example(slides, tmp_path):
    outdir = tmp_path / "bags"
    (out,) = _finish(
        _bash(_blocks()["torchrun"], _env(slides, outdir, GPUS_PER_NODE="2"), tmp_path)
    )
    report = _report(outdir)
    assert sorted(p["rank"] for p in report["process_reports"]) == [0, 1]
    assert "6 done, 0 skipped, 0 failed" in out


def test_multi_node_torchrun_example(slides, tmp_path):
    outdir = tmp_path / "bags"
    nodes = {"NODES": "2", "GPUS_PER_NODE": "1", "MASTER_ADDR": "127.0.0.1"}
    nodes["MASTER_PORT"] = _free_port()
    block = _blocks()["torchrun-nodes"]
    procs = [
        _bash(block, _env(slides, outdir, NODE_RANK=str(rank), **nodes), tmp_path)
        for rank in (0, 1)
    ]
    _finish(*procs)
    report = _report(outdir)
    assert sorted(p["rank"] for p in report["process_reports"]) == [0, 1]


def test_sbatch_array_example(slides, tmp_path):
    outdir = tmp_path / "bags"
    script = tmp_path / "extract.sh"
    script.write_text(_blocks()["sbatch"])
    assert "#SBATCH --array=" in script.read_text()
    tasks = [
        subprocess.Popen(
            ["bash", str(script)],
            env=_env(
                slides,
                outdir,
                SLURM_ARRAY_TASK_ID=str(task),
                SLURM_ARRAY_TASK_MIN="0",
                SLURM_ARRAY_TASK_COUNT="3",
            ),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for task in range(3)
    ]
    _finish(*tasks)
    report = _report(outdir)
    assert sorted(p["rank"] for p in report["process_reports"]) == [0, 1, 2]


def test_shell_and_report_examples(slides, tmp_path):
    outdir = tmp_path / "bags"
    blocks = _blocks()
    _finish(_bash(blocks["shell"], _env(slides, outdir), tmp_path))
    assert len(list(tmp_path.glob("extract-*.log"))) == 3
    report = _report(outdir)
    assert report["processes"] == 3
    (out,) = _finish(_bash(blocks["report"], _env(slides, outdir), tmp_path))
    assert "6 done, 0 skipped, 0 failed" in out
