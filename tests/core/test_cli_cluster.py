"""``histobag extract`` cluster and model options, and ``histobag report``."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from histobag.bags.report import read_process_reports
from histobag.cli import main
from histobag.cluster import stop_on_sigterm
from histobag.extractors.base import cpu_supports_bf16
from tests.core.bag_helpers import PIXELNET, TILE_PX, TILE_UM, make_slides
from tests.core.toy_models import registered


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    return make_slides(tmp_path_factory.mktemp("cli-cluster-slides"), n=3)


@pytest.fixture
def pixelnet():
    with registered(PIXELNET):
        yield


@pytest.fixture
def no_launcher(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
        monkeypatch.delenv(name, raising=False)


def _extract(slides, outdir, *extra):
    args = ["extract", "--extractor", "pixelnet", "--slides", str(slides), "--tile-px"]
    args += [str(TILE_PX), "--tile-um", str(TILE_UM), "--outdir", str(outdir)]
    return main([*args, "--workers", "0", "--no-progress", "--device", "cpu", *extra])


def _ranks(outdir):
    return [p["owner"]["rank"] for p in read_process_reports(outdir)]


def test_shard_names_the_process_in_the_report(pixelnet, no_launcher, slides, tmp_path):
    assert _extract(slides, tmp_path / "bags", "--shard", "2/3") == 0
    assert _ranks(tmp_path / "bags") == [1]
    report = json.loads((tmp_path / "bags" / "run_report.json").read_text())
    assert report["done"] == 3
    assert {s["rank"] for s in report["slides"].values()} == {1}


def test_a_slurm_array_task_takes_its_shard(pixelnet, no_launcher, slides, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    assert _extract(slides, tmp_path / "bags") == 0
    assert _ranks(tmp_path / "bags") == [1]


@pytest.mark.parametrize(
    ("env", "extra", "message"),
    [
        ({}, ("--distributed",), "--distributed needs a torch.distributed launch"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, ("--shard", "1/2"), "--shard is for independent"),
        ({}, ("--shard", "4/3"), "between 1 and 3"),
        ({}, ("--claim-timeout", "0"), "--claim-timeout must be > 0"),
    ],
)
def test_bad_cluster_options_are_refused_before_work(
    pixelnet, no_launcher, slides, tmp_path, monkeypatch, capsys, env, extra, message
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _extract(slides, tmp_path / "bags", *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bags").exists()


def test_precision_is_recorded_or_refused_with_advice(pixelnet, no_launcher, slides, tmp_path):
    assert _extract(slides, tmp_path / "fp32", "--precision", "fp32") == 0
    config = json.loads((tmp_path / "fp32" / "bags_config.json").read_text())
    assert config["provenance"]["precision"] == "float32"
    status = _extract(slides, tmp_path / "bf16", "--precision", "bf16")
    if cpu_supports_bf16():
        assert status == 0
        config = json.loads((tmp_path / "bf16" / "bags_config.json").read_text())
        assert config["provenance"]["precision"] == "bfloat16"
    else:
        assert status == 2
        assert not (tmp_path / "bf16").exists()


def test_compile_reaches_the_builder(pixelnet, no_launcher, slides, tmp_path, monkeypatch):
    from histobag.bags import generate

    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        raise SystemExit(7)

    monkeypatch.setattr(generate, "build_extractor_for_run", spy)
    with pytest.raises(SystemExit):
        _extract(slides, tmp_path / "bags", "--compile", "--precision", "fp16")
    assert seen["compile"] is True and seen["precision"] == "fp16"


def test_report_merges_and_prints_the_run(pixelnet, no_launcher, slides, tmp_path, capsys):
    assert _extract(slides, tmp_path / "bags") == 0
    (tmp_path / "bags" / "run_report.json").unlink()
    capsys.readouterr()
    assert main(["report", str(tmp_path / "bags")]) == 0
    out = capsys.readouterr().out
    assert "3 done, 0 skipped, 0 failed" in out
    assert json.loads((tmp_path / "bags" / "run_report.json").read_text())["done"] == 3
    assert main(["report", str(tmp_path / "bags"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["slides"]["slide-0"]["status"] == "done"
    assert _extract(slides, tmp_path / "bags") == 0  # a later run: all skipped
    assert "0 done, 3 skipped, 0 failed" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "bags")]) == 0
    assert "0 done, 3 skipped" in capsys.readouterr().out  # the latest run


def test_report_needs_run_reports(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no run reports" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2


def _terminate_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler interrupts this


def test_sigterm_stops_like_an_interrupt():
    with stop_on_sigterm(), pytest.raises(SystemExit) as stopped:
        _terminate_self()
    assert stopped.value.code == 143
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored
