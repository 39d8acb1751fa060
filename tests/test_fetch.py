"""`ggt-ir data fetch` against a local server that speaks the Hub's API (tests/fake_hub.py): selection, disk check,
pairing report, a dropped connection resumed with a Range request, a SIGKILLed download that continues, the
benchmark archives, the manual sets, offline mode. No network other than 127.0.0.1."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from fake_hub import FakeHub, serve_as_hub
from helpers import ROOT

from ggt_ir.assets import datasets as D
from ggt_ir.assets import hub as H

GGT = "VCLab-PolyU/GGT-100K"


def png(h: int, w: int, seed: int) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


def ggt_files() -> dict[str, bytes]:
    files, seed = {}, 0
    for split, cats in (("train", ("rain", "Snow", "old_photo")), ("test", ("rain", "haze"))):
        for cat in cats:
            for i in range(2):
                seed += 1
                files[f"GGT-100K/{split}/{cat}/LQ/{i:04d}.png"] = png(8, 8, seed)
                files[f"GGT-100K/{split}/{cat}/GT/{i:04d}.png"] = png(8, 8, seed + 1000)
    files["GGT-100K/test/haze/LQ/lonely.png"] = png(8, 8, 99)  # no GT partner
    files["Existing-dataset/RealRain/LQ/x.png"] = png(8, 8, 7)
    files["README.md"] = b"# GGT-100K\n"
    return files


@pytest.fixture
def online(monkeypatch, tmp_path, local_only):
    """A fake Hub on 127.0.0.1, huggingface_hub pointed at it and allowed online, its cache in tmp_path."""
    server = serve_as_hub(monkeypatch, tmp_path, page_size=4)
    monkeypatch.chdir(tmp_path)
    yield server
    server.stop()


def resolve_gets(server: FakeHub) -> list:
    return [r for r in server.requests if r[0] == "GET" and "/resolve/" in r[1]]


def test_ggt100k_fetch_downloads_the_selection_pairs_it_and_says_what_next(online, tmp_path, capsys):
    files = ggt_files()
    online.add_repo(GGT, files)
    rc = D.main(["fetch", "ggt100k", "--local-dir", str(tmp_path / "datasets")])
    out = capsys.readouterr().out
    assert rc == 2  # downloaded, but 6 + 4 pairs are not the paper's 103,707 + 500
    for path, data in files.items():
        local = tmp_path / "datasets" / path
        if path.startswith("GGT-100K/"):
            assert local.read_bytes() == data
        else:
            assert not local.exists()  # Existing-dataset/ and README.md are not in the default selection
    assert "selected 21 files" in out and "fits" in out
    assert "pairing" in out and "10 pairs, 1 unpaired files" in out
    assert "train          6  (old-photo 2, rain 2, snow 2)" in out and "test           4  (haze 2, rain 2)" in out
    assert "lonely.png" in out and "no HQ partner" in out
    assert "the paper's count is 103707" in out
    assert f"ggt-ir shards build {tmp_path / 'datasets' / 'GGT-100K'} --out datasets/shards --name ggt100k" in out
    assert (tmp_path / "datasets/.cache/ggt-ir/fetch-ggt100k.json").is_file()
    unpaired = (tmp_path / "datasets/.cache/ggt-ir/ggt100k-unpaired.tsv").read_text()
    assert "lonely.png" in unpaired
    # the tree listing is paginated (4 entries a page): every page was followed
    assert sum(1 for r in online.requests if "/tree/" in r[1]) > 5
    # a second run downloads nothing
    n = len(resolve_gets(online))
    assert D.main(["fetch", "ggt100k", "--local-dir", str(tmp_path / "datasets")]) == 2
    assert "to download: 0 files" in capsys.readouterr().out and len(resolve_gets(online)) == n


def test_split_and_category_take_only_their_folders_and_dry_run_downloads_nothing(online, tmp_path, capsys):
    online.add_repo(GGT, ggt_files())
    assert D.main(["fetch", "ggt100k", "--split", "test", "--dry-run", "--local-dir", "ds"]) == 0
    out = capsys.readouterr().out
    assert "--allow GGT-100K/test/*" in out and "selected 9 files" in out
    assert "hf download VCLab-PolyU/GGT-100K --repo-type dataset --revision" in out
    assert resolve_gets(online) == [] and not (tmp_path / "ds").exists()

    assert D.main(["fetch", "ggt100k", "--split", "test", "--category", "rain", "--local-dir", "ds"]) == 0
    got = sorted(str(p.relative_to(tmp_path / "ds")) for p in (tmp_path / "ds").rglob("*.png"))
    assert got == [f"GGT-100K/test/rain/{r}/{i:04d}.png" for r in ("GT", "LQ") for i in range(2)]


@pytest.mark.filterwarnings("ignore:Not enough free disk space")  # huggingface_hub's own check sees the fake too
def test_disk_space_is_checked_before_anything_is_downloaded(online, tmp_path, capsys, monkeypatch):
    online.add_repo(GGT, ggt_files())
    usage = type("U", (), {"free": 100, "total": 1000, "used": 900})
    monkeypatch.setattr(H.shutil, "disk_usage", lambda path: usage)
    assert D.main(["fetch", "ggt100k", "--local-dir", "ds"]) == 1
    out = capsys.readouterr().out
    assert "does NOT fit" in out and "100 B free" in out and "not enough free disk" in out
    assert resolve_gets(online) == []
    assert D.main(["fetch", "ggt100k", "--local-dir", "ds", "--ignore-space"]) == 2
    assert (tmp_path / "ds/GGT-100K/test/rain/LQ/0000.png").is_file()


def test_a_dropped_connection_is_resumed_with_a_range_request(online, tmp_path):
    big = np.random.default_rng(0).integers(0, 256, 12 << 20, dtype=np.uint8).tobytes()
    files = {"GGT-100K/test/rain/LQ/big.png": big, "GGT-100K/test/rain/GT/big.png": b"gt"}
    online.add_repo(GGT, files)
    online.cut_once["GGT-100K/test/rain/LQ/big.png"] = 11 << 20  # the first GET stops after 11 MiB
    D.main(["fetch", "ggt100k", "--local-dir", "ds", "--workers", "1"])
    assert (tmp_path / "ds/GGT-100K/test/rain/LQ/big.png").read_bytes() == big
    ranges = [r[2] for r in online.gets("LQ/big.png")]
    # huggingface_hub writes in 10 MiB chunks: it continues from the last whole chunk, not from 0
    assert ranges == [None, f"bytes={10 << 20}-"]


def _fetch_cmd(tmp_path: Path, server: FakeHub, *extra: str) -> tuple[list[str], dict]:
    env = dict(os.environ, HF_ENDPOINT=server.url, HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf-home"),
               PYTHONPATH=str(ROOT), HF_HUB_DISABLE_TELEMETRY="1")
    return [sys.executable, "-m", "ggt_ir", "data", "fetch", "ggt100k", "--local-dir", str(tmp_path / "ds"),
            *extra], env


def test_a_killed_fetch_continues_where_it_stopped(tmp_path, local_only):
    """SIGKILL in the middle of the download; the rerun keeps every finished file, downloads the rest, and
    removes the partial file the killed run left."""
    files = {f"GGT-100K/test/rain/{role}/{i}.png": np.random.default_rng(i + (role == "GT") * 10)
             .integers(0, 256, 400_000, dtype=np.uint8).tobytes() for i in range(4) for role in ("LQ", "GT")}
    with FakeHub() as server:
        server.add_repo(GGT, files)
        server.delay_per_chunk = 0.02  # ~0.5 s per file
        cmd, env = _fetch_cmd(tmp_path, server, "--workers", "1")
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        local = tmp_path / "ds"
        deadline = time.time() + 120
        while time.time() < deadline:
            done = [p for p in files if (local / p).is_file()]
            if len(done) >= 3:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        done = [p for p in files if (local / p).is_file()]
        assert 3 <= len(done) < len(files), "the download finished before the kill; slow the server down"
        partial = list((local / ".cache/huggingface/download").rglob("*.incomplete"))
        assert partial, "a killed run leaves its in-flight file behind"

        server.delay_per_chunk = 0
        before = {p: len(server.gets(p)) for p in files}
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]  # complete; 4 pairs are not the paper's count
        assert f"already in {local}: {len(done)} files" in r.stdout
        assert "removed 1 partial file(s)" in r.stdout
        for p, data in files.items():
            assert (local / p).read_bytes() == data
            assert len(server.gets(p)) == before[p] + (0 if p in done else 1)  # finished files are not fetched again
        assert not list((local / ".cache/huggingface/download").rglob("*.incomplete"))


def test_offline_says_what_to_run_and_touches_nothing(online, tmp_path, capsys, monkeypatch):
    online.add_repo(GGT, ggt_files())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert D.main(["fetch", "ggt100k", "--split", "test"]) == 1
    out = capsys.readouterr().out
    assert "HF_HUB_OFFLINE is set" in out and "CC-BY-NC-ND-4.0" in out
    assert "hf download VCLab-PolyU/GGT-100K --repo-type dataset --include 'GGT-100K/*' --local-dir datasets" in out
    assert online.requests == []


# ----------------------------------------------------------------------------- benchmarks
def stablesr_zip() -> tuple[bytes, dict]:
    buf, lrs = io.BytesIO(), {}
    with zipfile.ZipFile(buf, "w") as z:
        for folder in ("RealSRVal_crop128", "DrealSRVal_crop128"):
            for i in range(3):
                lr = png(8, 8, i)
                lrs[(folder, i)] = lr
                z.writestr(f"StableSR_testsets/{folder}/test_LR/img{i}.png", lr)
                z.writestr(f"StableSR_testsets/{folder}/test_HR/img{i}.png", png(32, 32, 50 + i))
        z.writestr("StableSR_testsets/DIV2K_V2_val/lq/0.png", png(8, 8, 3))
    return buf.getvalue(), lrs


def test_realsr_and_drealsr_come_from_one_hub_zip_extracted_and_upsampled(online, tmp_path, capsys):
    from PIL import Image

    data, lrs = stablesr_zip()
    online.add_repo("Iceclear/StableSR-TestSets", {"StableSR_testsets.zip": data, "README.md": b"card"})
    rc = D.main(["fetch", "realsr", "--local-dir", "bench/RealSR", "--download-dir", "dl"])
    out = capsys.readouterr().out
    assert rc == 2 and "3 images, expected 100" in out  # the real set has 100 pairs
    root = tmp_path / "bench/RealSR"
    assert sorted(p.name for p in (root / "test_HR").iterdir()) == ["img0.png", "img1.png", "img2.png"]
    up = np.asarray(Image.open(root / "test_LR_bicubic_x4/img1.png"))
    ref = np.asarray(Image.open(io.BytesIO(lrs[("RealSRVal_crop128", 1)])).convert("RGB").resize((32, 32),
                                                                                             Image.BICUBIC))
    assert up.shape == (32, 32, 3) and np.array_equal(up, ref)
    assert not (root / "DIV2K_V2_val").exists() and not (tmp_path / "bench/RealSR/StableSR_testsets").exists()
    zip_gets = len(online.gets("StableSR_testsets.zip"))
    assert D.main(["fetch", "drealsr", "--local-dir", "bench/DRealSR", "--download-dir", "dl"]) == 2
    assert len(online.gets("StableSR_testsets.zip")) == zip_gets  # the shared zip is downloaded once
    assert len(list((tmp_path / "bench/DRealSR/test_LR_bicubic_x4").glob("*.png"))) == 3


def test_manual_sets_say_where_they_live_and_check_counts_what_is_there(online, tmp_path, capsys):
    assert D.main(["fetch", "reallq250"]) == 1
    out = capsys.readouterr().out
    assert "drive.google.com/file/d/16uWuJOyGMw5fbXHGcl6GOmxYJb_Szrqe" in out and "licence: unknown" in out
    assert "put it in datasets/RealLQ250" in out and "ggt-ir data check reallq250" in out
    assert online.requests == []
    for i in range(3):
        (tmp_path / "mine" / "lq").mkdir(parents=True, exist_ok=True)
        (tmp_path / "mine" / "lq" / f"{i}.png").write_bytes(png(8, 8, i))
    assert D.main(["check", "reallq250", "--local-dir", "mine"]) == 2
    out = capsys.readouterr().out
    assert "3 images, expected 250" in out and "expected_images: null" in out


def test_div2k_continues_a_partial_zip_with_a_range_request(online, tmp_path, capsys, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        for i in range(801, 804):
            z.writestr(f"DIV2K_valid_HR/0{i}.png", png(16, 16, i))
    data = buf.getvalue()
    online.plain["DIV2K_valid_HR.zip"] = data
    monkeypatch.setenv("GGT_IR_MIRRORS", f"http://data.vision.ee.ethz.ch/cvl/DIV2K/={online.url}/plain/")
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl/DIV2K_valid_HR.zip.part").write_bytes(data[:1000])  # what a killed download leaves
    assert D.main(["fetch", "div2k-val", "--download-dir", "dl"]) == 2  # 3 of DIV2K's 100 images
    out = capsys.readouterr().out
    assert "resuming DIV2K_valid_HR.zip at 1.0 KB" in out and "3 images, expected 100" in out
    assert online.gets("/plain/DIV2K_valid_HR.zip")[-1][2] == "bytes=1000-"
    assert (tmp_path / "dl/DIV2K_valid_HR.zip").read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "datasets/DIV2K/DIV2K_valid_HR").iterdir()) == [
        "0801.png", "0802.png", "0803.png"]


def test_a_corrupt_plain_download_is_refused(online, tmp_path):
    online.plain["f-0123abcd.pth"] = b"not what was promised"
    with pytest.raises(H.FetchError, match="sha256 .* does not match"):
        H.download_url(f"{online.url}/plain/f-0123abcd.pth", tmp_path / "f.pth", sha256_prefix="0123abcd")
    assert not (tmp_path / "f.pth").exists() and not (tmp_path / "f.pth.part").exists()
    import hashlib

    good = b"promised bytes"
    online.plain["g.pth"] = good
    H.download_url(f"{online.url}/plain/g.pth", tmp_path / "g.pth", sha256=hashlib.sha256(good).hexdigest())
    assert (tmp_path / "g.pth").read_bytes() == good


def test_catalogue_and_benchmark_option_files_agree():
    """Each benchmark's option file exists, loads, and expects the count the catalogue states."""
    from ggt_ir.eval.options import load_eval_options

    for d in D.CATALOGUE.values():
        assert d.source.startswith("https://") and d.licence and d.protocol
        opt = load_eval_options(ROOT / d.option_file, check_paths=False)
        (name, spec), = opt.expected_images.items()
        want = d.files["test"] if isinstance(d.files, dict) else d.files
        assert spec == want, d.name
        assert d.hub or d.url or d.manual


def test_archives_in_the_download_are_reported_and_extracted_on_request(online, tmp_path, capsys):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for cat in ("rain", "snow"):
            z.writestr(f"{cat}/LQ/0.png", png(8, 8, 1))
            z.writestr(f"{cat}/GT/0.png", png(8, 8, 2))
        z.writestr("../evil.png", b"outside")  # never written outside the target
    online.add_repo(GGT, {"GGT-100K/test.zip": buf.getvalue()})
    assert D.main(["fetch", "ggt100k", "--local-dir", "ds"]) == 2
    out = capsys.readouterr().out
    assert "1 archive(s) in the selection (GGT-100K/test.zip)" in out and "run again with --extract" in out
    assert D.main(["fetch", "ggt100k", "--local-dir", "ds", "--extract"]) == 2  # 2 pairs are not 500
    out = capsys.readouterr().out
    assert "extracted 4 file(s) from test.zip" in out and "pairing ds/GGT-100K: 2 pairs, 0 unpaired" in out
    assert (tmp_path / "ds/GGT-100K/test/rain/GT/0.png").is_file()
    assert not (tmp_path / "ds/GGT-100K/evil.png").exists() and not (tmp_path / "ds/evil.png").exists()
