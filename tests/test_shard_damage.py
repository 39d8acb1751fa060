"""Damaged shards: every damaged sample is reported once per pass (key, shard, reason), by the loader, by the
trainer's summary (distinct samples) and by ``ggt-ir shards verify``; a damaged tar loses only that sample."""
import json
import logging

import pytest

from ggt_ir.data.shard_io import open_shard, scan_local_tar
from ggt_ir.data.shards import main as shards_main
from ggt_ir.data.stream import GGTShardsDataset
from shard_fixtures import encode, good_sample, image, tar_shard, write_manifest

PREFIX = "stu"  # the keys of shard i are PREFIX[i] + 0..5
INJECTED = {  # (shard, key): what is wrong with it
    (0, "s1"): "lq bytes overwritten",
    (0, "s3"): "hq member is empty",
    (0, "s5"): "no hq member",
    (1, "t2"): "lq and hq sizes do not match",
    (1, "t4"): "the tar header of its lq member is damaged",
    (2, "u1"): "hq is not an image",
    (2, "u5"): "the shard is cut inside its hq member",
}
GOOD = {f"{PREFIX[si]}{k}" for si in range(3) for k in range(6)} - {k for _, k in INJECTED}


def _damaged_set(d):
    """3 shards x 6 samples with a manifest; the 7 samples of INJECTED are damaged, each in its own way."""
    for si in range(3):
        samples = []
        for k in range(6):
            key = f"{PREFIX[si]}{k}"
            s = good_sample(key, 100 * si + k, category=("rain", "snow")[k % 2])
            what = INJECTED.get((si, key), "")
            if what == "lq bytes overwritten":
                s["lq.png"] = s["lq.png"][:60] + bytes(len(s["lq.png"]) - 60)
            elif what == "hq member is empty":
                s["hq.png"] = b""
            elif what == "no hq member":
                del s["hq.png"]
            elif what == "lq and hq sizes do not match":
                s["hq.png"] = encode(image(7, 32, 40))
            elif what == "hq is not an image":
                s["hq.png"] = b"this is not an image " * 20
            samples.append(s)
        tar_shard(d / f"dmg-train-{si:06d}.tar", samples)
    # damage the header of shard 1's s4.lq.png (checksum no longer matches)
    p1 = d / "dmg-train-000001.tar"
    off = dict(scan_local_tar(str(p1)))["t4"]["lq.png"][0] - 512
    data = bytearray(p1.read_bytes())
    data[off + 100:off + 108] = b"garbage!"
    p1.write_bytes(bytes(data))
    # cut shard 2 inside the data of its last sample's hq member
    p2 = d / "dmg-train-000002.tar"
    cut = dict(scan_local_tar(str(p2)))["u5"]["hq.png"][0] + 20
    p2.write_bytes(p2.read_bytes()[:cut])
    write_manifest(d, "dmg", [(f"dmg-train-{i:06d}.tar", 6) for i in range(3)])
    return str(d / "dmg-train-{000000..000002}.tar")


def _expected_ids(d) -> set:
    return {f"{d}/dmg-train-{si:06d}.tar:{k}" for si, k in INJECTED}


@pytest.fixture()
def damaged(tmp_path):
    return tmp_path, _damaged_set(tmp_path)


def test_seven_damaged_samples_are_reported_once_per_pass(damaged, caplog):
    d, urls = damaged
    o = GGTShardsDataset.Options(urls=urls, gt_size=16, batch_size_per_gpu=1, num_worker_per_gpu=0,
                                 shuffle_buffer=4, resampled=False, open_retries=0)
    it = GGTShardsDataset(o).train_loader(seed=0, rank=0, world_size=1, start_iter=0)
    with caplog.at_level(logging.WARNING, logger="ggt_ir.data.stream"):
        passes = [[next(it) for _ in range(18)] for _ in range(2)]  # 18 samples, 1 crop each: a pass is 18 batches
    for batches in passes:
        reports = [rid for b in batches for rid in b["skipped"]]
        assert sorted(reports) == sorted(_expected_ids(d))  # each exactly once in the pass
        keys = [k for b in batches for k in b["key"]]
        assert len(keys) == 18 and set(keys) == GOOD  # every good sample; holes filled with copies of good crops
    text = caplog.text
    assert "'s1'" in text and "cannot decode lq.png" in text and "no hq member" in text
    assert "damaged tar header" in text and "pair size mismatch" in text
    assert "dmg-train-000002.tar: truncated or corrupt after sample 'u4'" in text and "1 sample(s) skipped" in text


def test_damaged_samples_through_worker_processes(damaged):
    d, urls = damaged
    o = GGTShardsDataset.Options(urls=urls, gt_size=16, batch_size_per_gpu=2, num_worker_per_gpu=2,
                                 shuffle_buffer=4, open_retries=0)
    it = GGTShardsDataset(o).train_loader(seed=0, rank=0, world_size=1, start_iter=0)
    batches = [next(it) for _ in range(30)]
    assert {rid for b in batches for rid in b["skipped"]} == _expected_ids(d)
    assert {k for b in batches for k in b["key"]} == GOOD and all(len(b["key"]) == 2 for b in batches)


def test_verify_finds_the_seven_damaged_samples_by_default(damaged, capsys):
    d, _ = damaged
    assert shards_main(["verify", str(d), "--jobs", "1"]) == 1
    out = capsys.readouterr().out
    assert "18 samples, 11 decoded, 7 damaged sample(s)" in out
    for _, k in INJECTED:
        assert f"damaged sample {k}:" in out
    assert "damaged tar header at byte" in out and "truncated" in out
    assert shards_main(["verify", str(d), "--jobs", "1", "--fast"]) == 1  # structure only: 4 of the 7
    assert "0 decoded, 4 damaged sample(s)" in capsys.readouterr().out


def test_a_damaged_tar_header_costs_only_its_sample(damaged):
    d, _ = damaged
    samples = list(open_shard(str(d / "dmg-train-000001.tar"), retries=0).samples())
    assert [s.key for s in samples] == [f"t{k}" for k in range(6)]
    t4 = samples[4]
    assert "lq.png" not in t4.members and {"hq.png", "json"} <= set(t4.members) and "damaged" in t4.problem
    assert all({"lq.png", "hq.png", "json"} <= set(s.members) for s in samples if s.key != "t4")


def test_the_trainer_counts_distinct_damaged_samples(damaged, demo_root, tmp_path):
    from ggt_ir.train.options import load_options
    from ggt_ir.train.trainer import Trainer
    from helpers import tiny_options, write_options

    d, urls = damaged
    opt = tiny_options(demo_root, tmp_path / "exp", name="dmg", train__total_iter=20, val__val_freq=20,
                       logger__save_checkpoint_freq=20)
    opt["datasets"]["train"] = {"type": "GGTShards", "urls": urls, "gt_size": 16, "batch_size_per_gpu": 2,
                                "num_worker_per_gpu": 0, "shuffle_buffer": 4, "resampled": False}
    del opt["datasets"]["val"]
    summary = Trainer(load_options(write_options(tmp_path / "dmg.yml", opt)), command="pytest").fit()
    assert summary["skipped_samples"] == 7  # 20 batches of 2 = 2 passes and a bit: 7 distinct, not 14+
    results = json.loads((tmp_path / "exp" / "dmg" / "results.json").read_text())
    assert results["skipped_samples"] == 7
