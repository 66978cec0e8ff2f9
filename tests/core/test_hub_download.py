"""Weights resolution through huggingface_hub, against a local fake Hub and a local cache."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save

from tests.core.fake_hub import FakeHub
from tests.core.toy_models import ToyNet
from tests.helpers import perturb_

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "hf_secretTOKEN1234567890"

SCRIPT = """
import json, sys
import histobag
from tests.core.toy_models import registered, toy_spec
spec = toy_spec(hf_repo=sys.argv[1], hf_filename="model.safetensors", gated=True)
with registered(spec):
    try:
        fe = histobag.build_feature_extractor("toy", device="cpu")
        out = {"source": fe.weights_source, "sha": fe.weights_sha256,
               "fc": fe.model.fc.weight.sum().item()}
    except histobag.HistobagError as exc:
        out = {"error": type(exc).__name__, "message": str(exc)}
print(json.dumps(out))
"""


def _build(repo: str, cache: Path, endpoint: str, **env: str) -> tuple[dict, str]:
    environ = {
        **{k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"},
        "HF_HUB_CACHE": str(cache),
        "HF_ENDPOINT": endpoint,
        "HF_TOKEN": TOKEN,
        "HF_HUB_ETAG_TIMEOUT": "5",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PYTHONPATH": str(REPO_ROOT),
        **env,
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, repo],
        capture_output=True,
        text=True,
        env=environ,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.fixture(scope="module")
def weights_bytes():
    net = ToyNet(8)
    perturb_(net, seed=3)
    return save({k: v.contiguous() for k, v in net.state_dict().items()}), net


@pytest.mark.slow
def test_download_then_offline_from_cache(tmp_path, weights_bytes):
    body, net = weights_bytes
    with FakeHub() as hub:
        hub.files[("acme/toy", "model.safetensors")] = body
        first, stderr = _build("acme/toy", tmp_path, hub.endpoint)
        assert hub.authorizations and all(a == f"Bearer {TOKEN}" for a in hub.authorizations)
        served = len(hub.authorizations)
        second, _ = _build("acme/toy", tmp_path, hub.endpoint, HF_HUB_OFFLINE="1")
        assert len(hub.authorizations) == served, "offline mode must not touch the network"
    assert first["source"] == "hf://acme/toy/model.safetensors"
    assert first["fc"] == pytest.approx(net.fc.weight.sum().item(), rel=1e-6)
    import hashlib

    assert first["sha"] == hashlib.sha256(body).hexdigest() == second["sha"]
    assert TOKEN not in stderr
    blobs = list((tmp_path / "models--acme--toy" / "blobs").iterdir())
    assert len(blobs) == 1


def test_offline_and_not_cached_says_how_to_pass_weights(tmp_path):
    result, _ = _build("acme/toy", tmp_path, "http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    assert result["error"] == "OfflineWeightsError"
    assert "HF_HUB_OFFLINE" in result["message"]
    assert "weights='/path/to/model.safetensors'" in result["message"]


def test_gated_repo_says_to_request_access(tmp_path):
    with FakeHub() as hub:
        hub.gated.add("acme/secret")
        result, stderr = _build("acme/secret", tmp_path, hub.endpoint)
    assert result["error"] == "GatedWeightsError"
    assert "Request access on https://huggingface.co/acme/secret" in result["message"]
    assert "hf auth login" in result["message"]
    assert TOKEN not in result["message"] and TOKEN not in stderr


@pytest.mark.slow
def test_prepopulated_cache_is_used_offline(tmp_path, weights_bytes):
    """A cache laid out as huggingface_hub writes it (blobs, snapshots, refs) is found."""
    body, net = weights_bytes
    import hashlib

    digest = hashlib.sha256(body).hexdigest()
    repo = tmp_path / "models--acme--cached"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / digest).write_bytes(body)
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(repo / "blobs" / digest)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    result, _ = _build("acme/cached", tmp_path, "http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    assert result["sha"] == digest
    assert result["fc"] == pytest.approx(net.fc.weight.sum().item(), rel=1e-6)
