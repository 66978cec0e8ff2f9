import pickle

import pytest
import torch
from safetensors.torch import save_file

import histobag
from histobag.errors import (
    CheckpointMismatchError,
    UnsafeCheckpointError,
    WeightsError,
    WeightsNotFoundError,
)
from histobag.extractors.weights import is_safetensors, sha256sum, unwrap
from tests.core.toy_models import ToyNet, registered, toy_spec
from tests.helpers import perturb_


@pytest.fixture
def trained():
    net = ToyNet(8)
    perturb_(net, seed=1)
    return net.eval()


def _reference(net, tiles, fe):
    # The extractor's own transform is tested separately; here we check weights end up in place.
    with torch.no_grad():
        return net(fe.transform(torch.from_numpy(tiles).permute(0, 3, 1, 2)))


@pytest.mark.parametrize(
    ("suffix", "wrap"),
    [
        (".safetensors", None),
        (".pth", None),
        (".pt", "model"),
        (".bin", "state_dict"),
        (".pth", "teacher"),
    ],
)
def test_loads_flat_nested_and_safetensors(tmp_path, trained, tiles224, suffix, wrap):
    path = tmp_path / f"weights{suffix}"
    state = trained.state_dict()
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save({wrap: state, "epoch": 3} if wrap else state, path)
    with registered(toy_spec()):
        fe = histobag.build_feature_extractor(
            "toy", weights=path, mixed_precision=False, device="cpu"
        )
    assert torch.allclose(fe(tiles224), _reference(trained, tiles224, fe), atol=1e-6)
    assert fe.weights_sha256 == sha256sum(path)
    assert fe.dump_config()["kwargs"]["weights"] == str(path.resolve())


def test_unwrap_descends_nested_levels():
    inner = {"a": torch.zeros(1)}
    assert unwrap({"model": {"state_dict": inner}}, ("state_dict", "model")) == inner
    assert unwrap(inner, ("model",)) == inner


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch histobag-pwned",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        torch.save({"conv.weight": _Exploit()}, handle)
    # prove the file is a real exploit: unrestricted unpickling runs the payload
    torch.load(path, weights_only=False)
    assert (tmp_path / "histobag-pwned").exists()
    (tmp_path / "histobag-pwned").unlink()
    with registered(toy_spec()), pytest.raises(UnsafeCheckpointError, match="Refused to load"):
        histobag.build_feature_extractor("toy", weights=path)
    assert not (tmp_path / "histobag-pwned").exists()


def test_raw_pickle_of_a_module_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    with open(path, "wb") as handle:
        pickle.dump(ToyNet(), handle)
    with registered(toy_spec()), pytest.raises(WeightsError):
        histobag.build_feature_extractor("toy", weights=path)


def test_wrong_keys_and_shapes_give_a_readable_diff(tmp_path, trained):
    state = trained.state_dict()
    state["conv.kernel"] = state.pop("conv.weight")
    state["fc.weight"] = torch.zeros(8, 9)
    del state["bn.running_var"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with registered(toy_spec()), pytest.raises(CheckpointMismatchError) as err:
        histobag.build_feature_extractor("toy", weights=path)
    message = str(err.value)
    assert "missing from the checkpoint (2)" in message
    assert "conv.weight" in message and "bn.running_var" in message
    assert "unexpected in the checkpoint (1):\n    conv.kernel" in message
    assert "fc.weight: checkpoint (8, 9) vs model (8, 8)" in message


def test_missing_file_and_non_state_dict(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with registered(toy_spec()):
        with pytest.raises(WeightsNotFoundError, match="not found") as err:
            histobag.build_feature_extractor("toy", weights="nope.pth")
        assert isinstance(err.value, FileNotFoundError)  # and a WeightsError
        assert f"nope.pth (resolved to {tmp_path.resolve() / 'nope.pth'})" in str(err.value)
        path = tmp_path / "list.pth"
        torch.save([torch.zeros(1)], path)
        with pytest.raises(WeightsError, match="not a state dict"):
            histobag.build_feature_extractor("toy", weights=path)


def test_official_digest_mismatch_warns(tmp_path, trained):
    path = tmp_path / "w.pth"
    torch.save(trained.state_dict(), path)
    with registered(toy_spec(sha256="0" * 64)):
        with pytest.warns(UserWarning, match="not the official toy checkpoint"):
            histobag.build_feature_extractor("toy", weights=path)
    with registered(toy_spec(sha256=sha256sum(path))):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            histobag.build_feature_extractor("toy", weights=path)


def test_a_folder_of_hub_files_is_accepted(tmp_path, trained, tiles224):
    save_file(
        {k: v.contiguous() for k, v in trained.state_dict().items()}, tmp_path / "model.safetensors"
    )
    (tmp_path / "config.json").write_text("{}")
    with registered(toy_spec()):
        fe = histobag.build_feature_extractor(
            "toy", weights=tmp_path, mixed_precision=False, device="cpu"
        )
        assert torch.allclose(fe(tiles224), _reference(trained, tiles224, fe), atol=1e-6)
        empty = tmp_path / "empty"
        empty.mkdir()
        with pytest.raises(WeightsError, match="folder without a checkpoint"):
            histobag.build_feature_extractor("toy", weights=empty)


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_a_hub_cache_link_to_a_suffixless_blob_is_read_in_its_format(
    tmp_path, trained, tiles224, fmt
):
    """``hf_hub_download`` returns a link ``snapshots/<rev>/model.safetensors`` to a blob
    without a suffix; the weights path is resolved, so the format comes from the content."""
    blob = tmp_path / "blobs" / "3f2a9c41d0"
    blob.parent.mkdir()
    state = trained.state_dict()
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, blob)
    else:
        torch.save(state, blob)
    link = (
        tmp_path
        / "snapshots"
        / "main"
        / f"model.{'safetensors' if fmt == 'safetensors' else 'bin'}"
    )
    link.parent.mkdir(parents=True)
    link.symlink_to(blob)
    assert is_safetensors(blob) == (fmt == "safetensors")
    with registered(toy_spec()):
        fe = histobag.build_feature_extractor(
            "toy", weights=link, mixed_precision=False, device="cpu"
        )
    assert torch.allclose(fe(tiles224), _reference(trained, tiles224, fe), atol=1e-6)


def test_a_small_or_odd_file_is_not_taken_for_safetensors(tmp_path):
    for name, data in [("empty", b""), ("short", b"12345678{"), ("zip", b"PK\x03\x04" + bytes(12))]:
        (tmp_path / name).write_bytes(data)
        assert not is_safetensors(tmp_path / name)
    assert not is_safetensors(tmp_path / "missing")
