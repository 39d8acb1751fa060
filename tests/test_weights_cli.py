"""`ggt-ir weights {list,check,fetch}`: what option files need, where the loaders really read it (a file put
where `check` says makes the metric load offline), fetching from local servers (plain URLs for pyiqa and
torchvision files, the Hub API for Hub files and base models), a killed download that continues, offline mode.
No network other than 127.0.0.1."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from fake_hub import FakeHub, serve_as_hub
from helpers import ROOT

from ggt_ir.assets.weights import main as weights_main


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def online(monkeypatch, tmp_path, local_only):
    server = serve_as_hub(monkeypatch, tmp_path)
    monkeypatch.delenv("GGT_IR_WEIGHTS", raising=False)
    yield server
    server.stop()


def put_at(out: str, name: str) -> Path:
    """The 'put at' path `weights check` printed for the file ``name``."""
    m = re.search(rf"{re.escape(name)}\n\s+put at (\S+)", out)
    assert m, out
    return Path(m.group(1))


def test_check_names_every_file_and_the_exit_status_follows(tmp_path, capsys, no_network):
    from ggt_ir.testing.weights import write_random_weights

    w = tmp_path / "w"
    assert weights_main(["check", "--metric", "lpips", "--metric", "psnr", "--weights-dir", str(w)]) == 1
    out = capsys.readouterr().out
    assert "psnr: built in (no weight files)" in out
    assert put_at(out, "checkpoints/alexnet-owt-7be5be79.pth") == w / "checkpoints/alexnet-owt-7be5be79.pth"
    assert "from   https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in out
    assert f"curl -L --create-dirs -o {w / 'pyiqa/LPIPS_v0.1_alex-df73285e.pth'} " \
           "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/LPIPS_v0.1_alex-df73285e.pth" in out
    write_random_weights("lpips", w)
    assert weights_main(["check", "--metric", "lpips", "--weights-dir", str(w)]) == 0
    assert "all 2 weight file(s) / model(s) are on this machine" in capsys.readouterr().out


def test_a_timm_backbone_put_where_check_says_makes_the_metric_load_offline(tmp_path, capsys, no_network,
                                                                            monkeypatch):
    """The old check printed <weights>/huggingface/models--.../snapshots/<revision>/model.safetensors, which the
    loader never found (no refs/main). Now the printed path is what the loader reads."""
    import timm
    from pyiqa.archs.topiq_arch import CFANet
    from safetensors.torch import save_file

    from ggt_ir.eval.metrics import MetricSuite
    from ggt_ir.eval.weights import offline_weights

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    w = tmp_path / "w"
    assert weights_main(["check", "--metric", "topiq_nr", "--weights-dir", str(w)]) == 1
    out = capsys.readouterr().out
    backbone = put_at(out, "timm/resnet50.a1_in1k/model.safetensors")
    head = put_at(out, "pyiqa/cfanet_nr_koniq_res50-9a73138b.pth")
    assert "hf download timm/resnet50.a1_in1k model.safetensors --local-dir " + str(backbone.parent) in out

    torch.manual_seed(0)  # random weights (fp16 keeps the files small); the scores are meaningless
    backbone.parent.mkdir(parents=True)
    save_file({k: v.half() for k, v in timm.create_model("resnet50").state_dict().items()}, str(backbone))
    with offline_weights("topiq_nr", w):  # the head's shapes; building it reads the backbone just placed
        net = CFANet(semantic_model_name="resnet50", model_name="cfanet_nr_koniq_res50", use_ref=False,
                     pretrained=False)
    head.parent.mkdir(parents=True)
    torch.save({"params": {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}}, head)

    assert weights_main(["check", "--metric", "topiq_nr", "--weights-dir", str(w)]) == 0
    suite = MetricSuite(["topiq_nr"], weights_dir=w, strict=True)
    score = suite.score(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)), None, ["x"])
    assert torch.isfinite(torch.tensor(score["topiq_nr"])).all()


def test_training_files_need_lpips_and_the_base_model(tmp_path, capsys, no_network):
    opt = yaml.safe_load((ROOT / "options/train/OneStepSD/onestep_sd_ggt100k.yml").read_text())
    opt["train"]["lpips_opt"]["lin_path"] = str(tmp_path / "my_lin.pth")
    opt["network_g"]["pretrained"] = str(tmp_path / "pretrained" / "sd21-base")
    f = tmp_path / "train.yml"
    f.write_text(yaml.safe_dump(opt))
    assert weights_main(["list", "-opt", str(f), "--weights-dir", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert f"to   {tmp_path / 'w/checkpoints/vgg16-397923af.pth'}" in out
    assert f"to   {tmp_path / 'my_lin.pth'}" in out  # an explicit path wins over the folder
    assert "stabilityai/stable-diffusion-2-1-base" in out and str(tmp_path / "pretrained/sd21-base") in out
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (tmp_path / "pretrained/sd21-base" / sub).mkdir(parents=True)
    (tmp_path / "my_lin.pth").write_bytes(b"x")
    assert weights_main(["check", "-opt", str(f), "--weights-dir", str(tmp_path / "w")]) == 1
    out = capsys.readouterr().out
    assert "1 of 3 missing" in out and "vgg16-397923af.pth" in out.split("by hand:")[1]


def test_eval_check_weights_is_weights_check(tmp_path, capsys, no_network):
    from ggt_ir.eval.cli import main as eval_main

    args = ["-opt", str(ROOT / "options/eval/ggt100k.yml"), "--weights-dir", str(tmp_path)]
    assert eval_main(args + ["--check-weights"]) == 1
    via_eval = capsys.readouterr().out
    assert weights_main(["check"] + args) == 1
    assert capsys.readouterr().out == via_eval
    assert "maniqa-pipal" in via_eval and "timm/vit_base_patch8_224.augreg2_in21k_ft_in1k/model.safetensors" in via_eval


def test_fetch_from_local_servers_puts_files_where_the_loaders_read_them(online, tmp_path, capsys):
    """pyiqa files from pyiqa's URL on $HF_ENDPOINT, a timm backbone through the Hub API, a torchvision file
    through --mirror (its sha256 prefix is checked: random bytes are refused)."""
    from ggt_ir.eval.metrics import MetricSuite
    from ggt_ir.testing.weights import write_random_weights

    src = tmp_path / "src"
    write_random_weights("musiq", src)
    write_random_weights("lpips", src)
    online.add_repo("chaofengc/IQA-PyTorch-Weights", {
        "musiq_koniq_ckpt-e95806b9.pth": (src / "pyiqa/musiq_koniq_ckpt-e95806b9.pth").read_bytes(),
        "LPIPS_v0.1_alex-df73285e.pth": (src / "pyiqa/LPIPS_v0.1_alex-df73285e.pth").read_bytes()}, "model")
    online.add_repo("timm/resnet50.a1_in1k", {"model.safetensors": b"weights", "config.json": b"{}"}, "model")
    online.plain["tv/alexnet-owt-7be5be79.pth"] = (src / "checkpoints/alexnet-owt-7be5be79.pth").read_bytes()
    w = tmp_path / "w"
    mirror = f"https://download.pytorch.org/models/={online.url}/plain/tv/"
    rc = weights_main(["fetch", "--metric", "musiq", "--metric", "lpips", "--metric", "topiq_nr",
                       "--weights-dir", str(w), "--mirror", mirror])
    out = capsys.readouterr().out
    assert rc == 1  # alexnet (wrong hash) and the topiq head (not served) failed, the rest arrived
    assert (w / "pyiqa/musiq_koniq_ckpt-e95806b9.pth").read_bytes() == \
        (src / "pyiqa/musiq_koniq_ckpt-e95806b9.pth").read_bytes()
    assert (w / "huggingface/timm/resnet50.a1_in1k/model.safetensors").read_bytes() == b"weights"
    assert not (w / "huggingface/timm/resnet50.a1_in1k/config.json").exists()  # only the file timm reads
    assert "FAILED checkpoints/alexnet-owt-7be5be79.pth" in out and "does not match the expected 7be5be79" in out
    assert not (w / "checkpoints/alexnet-owt-7be5be79.pth").exists()
    assert "FAILED pyiqa/cfanet_nr_koniq_res50-9a73138b.pth" in out and "HTTP 404" in out
    assert any(r[1] == "/plain/tv/alexnet-owt-7be5be79.pth" for r in online.requests)
    suite = MetricSuite(["musiq"], weights_dir=w, strict=True)  # what was fetched loads offline
    assert suite.score(torch.rand(1, 3, 64, 64), None, ["x"])["musiq"]
    assert weights_main(["check", "--metric", "musiq", "--weights-dir", str(w)]) == 0


def test_fetch_a_base_model_takes_only_what_the_loader_reads(online, tmp_path, capsys):
    files = {"model_index.json": b"{}", "v1-5.ckpt": b"c" * 50, "README.md": b"r",
             "unet/config.json": b"{}", "unet/diffusion_pytorch_model.safetensors": b"u" * 20,
             "unet/diffusion_pytorch_model.bin": b"b" * 20, "unet/diffusion_pytorch_model.fp16.safetensors": b"h",
             "safety_checker/model.safetensors": b"s"}
    for sub in ("vae", "text_encoder", "tokenizer", "scheduler"):
        files[f"{sub}/config.json"] = b"{}"
    online.add_repo("stabilityai/stable-diffusion-2-1-base", files, "model")
    opt = yaml.safe_load((ROOT / "options/train/OneStepSD/onestep_sd_ggt100k.yml").read_text())
    del opt["train"]["lpips_opt"]
    opt["network_g"]["pretrained"] = str(tmp_path / "pretrained/sd21-base")
    f = tmp_path / "t.yml"
    f.write_text(yaml.safe_dump(opt))
    assert weights_main(["fetch", "-opt", str(f)]) == 0, capsys.readouterr().out
    got = sorted(str(p.relative_to(tmp_path / "pretrained/sd21-base")) for p in
                 (tmp_path / "pretrained/sd21-base").rglob("*") if p.is_file() and ".cache" not in p.parts)
    assert got == ["model_index.json", "scheduler/config.json", "text_encoder/config.json", "tokenizer/config.json",
                   "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json"]
    assert weights_main(["check", "-opt", str(f)]) == 0


def test_fetch_offline_prints_files_urls_and_commands(tmp_path, capsys, no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights_main(["fetch", "--metric", "dists", "--metric", "maniqa-pipal", "--weights-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "HF_HUB_OFFLINE is set: nothing downloaded" in out
    assert f"curl -L --create-dirs -o {tmp_path / 'checkpoints/vgg16-397923af.pth'} " \
           "https://download.pytorch.org/models/vgg16-397923af.pth" in out
    assert "hf download timm/vit_base_patch8_224.augreg2_in21k_ft_in1k model.safetensors --local-dir" in out
    assert not any(tmp_path.iterdir())


def test_a_killed_weight_download_continues_with_a_range_request(tmp_path, local_only):
    data = os.urandom(3 << 20)
    with FakeHub() as server:
        server.add_repo("chaofengc/IQA-PyTorch-Weights", {"musiq_koniq_ckpt-e95806b9.pth": data}, "model")
        server.delay_per_chunk = 0.01  # 192 chunks of 16 KiB: ~2 s
        env = dict(os.environ, HF_ENDPOINT=server.url, HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf"),
                   PYTHONPATH=str(ROOT))
        cmd = [sys.executable, "-m", "ggt_ir", "weights", "fetch", "--metric", "musiq", "--weights-dir",
               str(tmp_path / "w")]
        part = tmp_path / "w/pyiqa/musiq_koniq_ckpt-e95806b9.pth.part"
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and not (part.is_file() and part.stat().st_size >= 1 << 20):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        have = part.stat().st_size
        assert 0 < have < len(data), "the download finished before the kill; slow the server down"
        server.delay_per_chunk = 0
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"bytes={have}-" in [x[2] for x in server.gets("musiq_koniq_ckpt")]
        assert (tmp_path / "w/pyiqa/musiq_koniq_ckpt-e95806b9.pth").read_bytes() == data and not part.exists()
