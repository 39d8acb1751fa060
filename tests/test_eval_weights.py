"""Offline weights: clear errors for missing files, skip-unless-strict, loading from a local folder."""
from __future__ import annotations

import socket

import pytest
import torch

from ggt_ir.eval.metrics import MetricSuite
from ggt_ir.eval.weights import MissingWeightsError, offline_weights
from ggt_ir.testing.weights import write_random_weights


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_missing_weights_name_metric_file_and_source(tmp_path, no_network):
    with pytest.raises(MissingWeightsError) as e:
        MetricSuite(["lpips"], weights_dir=tmp_path, strict=True)
    msg = str(e.value)
    assert "'lpips'" in msg and "alexnet-owt-7be5be79.pth" in msg
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in msg
    assert str(tmp_path / "checkpoints" / "alexnet-owt-7be5be79.pth") in msg
    assert "LPIPS_v0.1_alex-df73285e.pth" in msg  # every missing file of a known metric is listed


def test_download_attempts_of_any_pyiqa_metric_become_the_same_error(tmp_path, no_network):
    """Metrics outside the known-files table are guarded too: pyiqa's download becomes the error."""
    import pyiqa

    with pytest.raises(MissingWeightsError) as e:
        with offline_weights("cnniqa", tmp_path):
            pyiqa.create_metric("cnniqa", device="cpu")
    msg = str(e.value)
    assert "'cnniqa'" in msg and "CNNIQA_koniq10k-e6f14c91.pth" in msg
    assert "huggingface.co/chaofengc/IQA-PyTorch-Weights" in msg and str(tmp_path / "pyiqa") in msg
    assert torch.hub.get_dir() != str(tmp_path)  # patches are undone


def test_missing_metric_is_skipped_unless_strict(tmp_path, no_network):
    logs = []
    suite = MetricSuite(["psnr", "musiq"], weights_dir=tmp_path, log=logs.append)
    assert list(suite.metrics) == ["psnr"] and "musiq_koniq_ckpt-e95806b9.pth" in suite.skipped["musiq"]
    assert "skipping metric 'musiq'" in logs[0]
    with pytest.raises(MissingWeightsError, match="musiq"):
        MetricSuite(["psnr", "musiq"], weights_dir=tmp_path, strict=True)


def test_weights_from_local_folder_load_without_network(tmp_path, monkeypatch, no_network):
    """Random weights written in the expected layout (TORCH_HOME/hub/{pyiqa,checkpoints}) are used
    as-is: an FR metric with a torchvision backbone (lpips) and an NR metric (cnniqa)."""
    from pyiqa.archs.cnniqa_arch import CNNIQA

    hub = tmp_path / "torch" / "hub"
    write_random_weights("lpips", hub)
    assert (hub / "checkpoints" / "alexnet-owt-7be5be79.pth").is_file()
    (hub / "pyiqa").mkdir(parents=True, exist_ok=True)
    torch.save({"params": CNNIQA(pretrained=None).state_dict()}, hub / "pyiqa" / "CNNIQA_koniq10k-e6f14c91.pth")
    monkeypatch.setenv("GGT_IR_WEIGHTS", str(hub))  # the environment variable route
    suite = MetricSuite(["lpips", "cnniqa"], strict=True)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    scores = suite.score(x, x.flip(-1), ["a", "b"])
    assert set(scores) == {"lpips", "cnniqa"}
    assert all(torch.isfinite(torch.tensor(v)).all() for v in scores.values())
    assert suite.variants()["lpips"]["options"]["net"] == "alex"  # pyiqa's defaults are recorded
    assert suite.variants()["cnniqa"]["seeded_per_image"] is True


def test_hub_backbones_resolve_from_the_weights_folder(tmp_path, monkeypatch):
    """timm backbones: a hand-made HF cache layout under <weights>/huggingface is found offline."""
    from ggt_ir.eval.weights import _hf_local, missing_files

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "huggingface" / "models--timm--resnet50.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("manual")
    (repo / "snapshots" / "manual").mkdir(parents=True)
    (repo / "snapshots" / "manual" / "model.safetensors").write_bytes(b"x")
    assert _hf_local("timm/resnet50.a1_in1k", "model.safetensors", tmp_path).endswith("model.safetensors")
    missing = [m[0] for m in missing_files("topiq_nr", tmp_path)]
    assert missing == ["cfanet_nr_koniq_res50-9a73138b.pth"]  # the backbone is found, the head is not
