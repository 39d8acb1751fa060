"""The GGTShards streaming loader: rank/worker splitting, skipping bad samples, resume, crops, URL schemes."""
import functools
import http.server
import json
import logging
import threading
from collections import Counter

import numpy as np
import pytest
import torch

from ggt_ir.config import OptionsError
from ggt_ir.train.options import load_options
from ggt_ir.data.shard_io import (ShardOpenError, hf_filesystem_path, hf_to_resolve_url, parse_hf_url,
                                  scan_local_tar)
from ggt_ir.data.shards import main as shards_main
from ggt_ir.data.stream import GGTShardsDataset
from helpers import tiny_options, write_options
from shard_fixtures import encode, good_sample, image, layout_a, layout_b, tar_shard, write_manifest

Opt = GGTShardsDataset.Options


def _ds(**kw) -> GGTShardsDataset:
    o = Opt(**{"gt_size": 16, "batch_size_per_gpu": 2, "num_worker_per_gpu": 0, "shuffle_buffer": 4,
               "open_retries": 0, "retry_delay": 0.01, **kw})
    o.check("test", "datasets.train")
    return GGTShardsDataset(o)


def _take(it, n):
    return [next(it) for _ in range(n)]


@pytest.fixture(scope="module")
def uniform_shards(tmp_path_factory):
    """24 hand-made shards of 2 samples (48 keys) with a manifest; categories cycle rain/snow/haze."""
    d = tmp_path_factory.mktemp("uniform")
    names = []
    for i in range(24):
        samples = [good_sample(f"k{2 * i + j:02d}", 2 * i + j, ("rain", "snow", "haze")[(2 * i + j) % 3],
                               prompt=f"prompt {2 * i + j}") for j in range(2)]
        names.append((tar_shard(d / f"u-train-{i:06d}.tar", samples).name, 2))
    write_manifest(d, "u", names)
    return d


def test_exact_pass_two_layouts_two_ranks_two_workers_each_pair_once(tmp_path):
    keys = {k for k in layout_a(tmp_path / "A") if k.startswith("train/")} | layout_b(tmp_path / "B")
    out = tmp_path / "shards"
    assert shards_main(["build", str(tmp_path / "A"), "--out", str(out), "--name", "a", "--split", "train",
                        "--max-samples-per-shard", "2", "--no-progress", "--jobs", "1"]) == 0
    assert shards_main(["build", str(tmp_path / "B"), "--out", str(out), "--name", "b",
                        "--max-samples-per-shard", "1", "--no-progress", "--jobs", "1"]) == 0
    # 5 + 6 = 11 shards for 2 ranks x 2 workers: does not divide evenly, must not hang or duplicate
    ds = _ds(urls=[str(out / "a-train-{000000..000004}.tar"), str(out / "b-train-{000000..000005}.tar")],
             num_worker_per_gpu=2)
    assert len(ds.sources[0].urls) == 11 and ds.num_samples() == 15
    seen, per_rank = Counter(), []
    for rank in (0, 1):
        ks = [k for b in ds.eval_loader(rank=rank, world_size=2, batch_size=2) for k in b["key"]]
        per_rank.append(set(ks))
        seen.update(ks)
    assert set(seen) == keys and set(seen.values()) == {1}
    assert not per_rank[0] & per_rank[1] and all(per_rank)
    b = next(ds.eval_loader(rank=0, world_size=1, batch_size=1, num_workers=0))
    assert b["lq"].shape == (1, 3, 32, 32) and b["category"][0] in {"rain", "snow", "low-light", "old-photo", "general"}


def test_resampled_stream_splits_each_pass_over_ranks_and_workers(uniform_shards):
    # one sample per batch and no shuffle buffer, so every batch names its shard; 12 shards of 2 samples
    urls = str(uniform_shards / "u-train-{000000..000011}.tar")
    first_pass = Counter()
    for rank in (0, 1):
        ds = _ds(urls=urls, num_worker_per_gpu=2, batch_size_per_gpu=1, shuffle_buffer=0)
        it = ds.train_loader(seed=3, rank=rank, world_size=2, start_iter=0)
        first_pass.update(k for b in _take(it, 12) for k in b["key"])  # 4 readers x 3 shards x 2 samples / 2 ranks
    assert set(first_pass.values()) == {1} and len(first_pass) == 24
    with pytest.raises(ValueError, match="at least one shard per reader"):
        _ds(urls=str(uniform_shards / "u-train-{000000..000002}.tar"), num_worker_per_gpu=2,
            resampled=False).train_loader(0, rank=0, world_size=2, start_iter=0)
    with pytest.raises(ValueError, match="3 shard\\(s\\) for 2 rank\\(s\\) x 2 worker\\(s\\) = 4 readers"):
        _ds(urls=str(uniform_shards / "u-train-{000000..000002}.tar")).eval_loader(0, 2, num_workers=2)


def test_bad_samples_are_skipped_named_and_counted(tmp_path, caplog):
    d = tmp_path / "bad"
    good = [good_sample(f"a{i}", i) for i in range(4)]
    corrupt = dict(good[1], **{"lq.png": good[1]["lq.png"][:40] + b"\x00" * 60})
    no_hq = {k: v for k, v in good[2].items() if k != "hq.png"}
    tar_shard(d / "x-train-000000.tar", [good[0], corrupt, no_hq, good[3]])
    full = tar_shard(d / "x-train-000001.tar", [good_sample(f"b{i}", 10 + i) for i in range(4)])
    cut = dict(scan_local_tar(str(full)))["b2"]["hq.png"][0] + 10
    full.write_bytes(full.read_bytes()[:cut])  # truncated in the middle of sample b2
    write_manifest(d, "x", [("x-train-000000.tar", 4), ("x-train-000001.tar", 4)])
    urls = str(d / "x-train-{000000..000001}.tar")

    with caplog.at_level(logging.WARNING, logger="ggt_ir.data.stream"):
        batches = list(_ds(urls=urls).eval_loader(batch_size=1, num_workers=0))
    assert sorted(k for b in batches for k in b["key"]) == ["a0", "a3", "b0", "b1"]
    assert sum(len(b["skipped"]) for b in batches) == 4  # a1 corrupt, a2 without hq, b2 + b3 cut off
    text = caplog.text
    assert "'a1'" in text and "x-train-000000.tar" in text and "cannot decode lq.png" in text
    assert "'a2'" in text and "no hq member" in text
    assert "x-train-000001.tar: truncated or corrupt" in text and "2 sample(s) skipped" in text
    # the same counts arrive through worker processes and the training stream
    assert sum(len(b["skipped"]) for b in _ds(urls=urls).eval_loader(batch_size=1, num_workers=2)) == 4
    it = _ds(urls=urls, batch_size_per_gpu=1, shuffle_buffer=0).train_loader(0, 0, 1, 0)
    got = _take(it, 8)  # two passes
    assert sum(len(b["skipped"]) for b in got) >= 4 and {k for b in got for k in b["key"]} == {"a0", "a3", "b0", "b1"}


def test_unopenable_shard_is_an_error_after_retries(tmp_path):
    d = tmp_path / "s"
    tar_shard(d / "y-train-000000.tar", [good_sample("ok", 1)])
    (d / "y-train-000001.tar").write_bytes(b"this is not a tar file at all" * 40)
    ds = _ds(urls=str(d / "y-train-{000000..000001}.tar"), open_retries=2, retry_delay=0.001, shard_shuffle=False)
    with pytest.raises(ShardOpenError, match=r"y-train-000001.tar after 3 attempt"):
        list(ds.eval_loader(batch_size=1, num_workers=0))
    with pytest.raises(OptionsError, match="1 of 2 shard\\(s\\) not found"):
        Opt(urls=str(d / "y-train-{000001..000002}.tar")).check("opt.yml", "datasets.train")


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x["key"] == y["key"] and torch.equal(x["gt"], y["gt"]) and
                                    torch.equal(x["lq"], y["lq"]) for x, y in zip(a, b))


@pytest.mark.parametrize("kw", [
    dict(num_worker_per_gpu=2, shuffle_buffer=4),
    dict(num_worker_per_gpu=0, shuffle_buffer=8, crops_per_image=2, category_weights={"snow": 1.5}),
    dict(num_worker_per_gpu=2, shuffle_buffer=4, resampled=False),
], ids=["resampled-2workers", "in-process-weights", "exact-passes"])
def test_resume_continues_with_the_exact_next_batch(uniform_shards, kw):
    urls = str(uniform_shards / "u-train-{000000..000023}.tar")
    straight = _take(_ds(urls=urls, **kw).train_loader(seed=7, rank=0, world_size=1, start_iter=0), 33)
    for start in (1, 4, 11, 25):  # 24 batches a pass: 25 is in the second pass
        resumed = _take(_ds(urls=urls, **kw).train_loader(seed=7, rank=0, world_size=1, start_iter=start), 8)
        assert _same(resumed, straight[start:start + 8]), f"resumed at {start}"
    served = {k for b in straight[:4] for k in b["key"]}
    if kw.get("resampled") is False:  # an exact pass: nothing served before comes back within the pass
        assert not served & {k for b in straight[4:24] for k in b["key"]}
    ds = _ds(urls=urls, **kw)
    ds.train_loader(seed=7, rank=0, world_size=1, start_iter=0)
    assert ds.batches_per_epoch == 24 * kw.get("crops_per_image", 1)  # the epoch in the log: one pass (48 samples)


def test_crops_per_image_category_weights_and_prompts(uniform_shards):
    urls = str(uniform_shards / "u-train-{000000..000008}.tar")  # 18 samples: 6 rain, 6 snow, 6 haze
    ds = _ds(urls=urls, crops_per_image=3, resampled=False, batch_size_per_gpu=1, shuffle_buffer=8)
    batches = _take(ds.train_loader(0, 0, 1, 0), 54)  # exactly one pass: 18 samples x 3 crops
    counts = Counter(b["key"][0] for b in batches)
    assert len(counts) == 18 and set(counts.values()) == {3}
    crops = {}
    for b in batches:
        crops.setdefault(b["key"][0], []).append(b["gt"])
    assert any(not torch.equal(c[0], c[1]) for c in crops.values())  # different windows of one decoded pair
    assert all(b["prompt"] == [f"prompt {int(b['key'][0][1:])}"] for b in batches)

    ds = _ds(urls=urls, crops_per_image=2, category_weights={"snow": 2.0, "rain": 0.0}, resampled=False,
             batch_size_per_gpu=1, shuffle_buffer=0)
    batches = _take(ds.train_loader(0, 0, 1, 0), 36)  # 6 snow x 4 + 6 haze x 2
    by_cat = Counter(b["category"][0] for b in batches)
    assert by_cat == {"snow": 24, "haze": 12}
    assert ds.batches_per_epoch == 36


def test_paired_crop_is_the_same_window_at_scale_2(tmp_path):
    rng = np.random.default_rng(0)
    samples = []
    for i in range(4):
        lq = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
        gt = lq.repeat(2, axis=0).repeat(2, axis=1)  # each LQ pixel is a 2x2 GT block
        samples.append({"__key__": f"s{i}", "lq.png": encode(lq), "hq.png": encode(gt),
                        "json": json.dumps({"key": f"s{i}"}).encode()})
    tar_shard(tmp_path / "sc-train-000000.tar", samples)
    ds = _ds(urls=str(tmp_path / "sc-train-000000.tar"), scale=2, gt_size=8, crops_per_image=4)
    for b in _take(ds.train_loader(1, 0, 1, 0), 10):
        assert b["lq"].shape == (2, 3, 4, 4) and b["gt"].shape == (2, 3, 8, 8)
        torch.testing.assert_close(b["gt"], b["lq"].repeat_interleave(2, 2).repeat_interleave(2, 3))


def test_mixing_weights_between_sources(uniform_shards):
    ds = _ds(sources=[{"urls": str(uniform_shards / "u-train-{000000..000011}.tar"), "weight": 3.0},
                      {"urls": str(uniform_shards / "u-train-{000012..000023}.tar"), "weight": 1.0}],
             batch_size_per_gpu=4, shuffle_buffer=0)
    keys = [k for b in _take(ds.train_loader(0, 0, 1, 0), 25) for k in b["key"]]
    from_a = sum(int(k[1:]) < 24 for k in keys)
    assert from_a == 75  # deterministic weighted round robin: exactly 3 of every 4


def test_url_schemes_pipe_file_http(uniform_shards, monkeypatch):
    path = uniform_shards / "u-train-000000.tar"
    expected = ["k00", "k01"]

    def keys(url):
        ds = _ds(urls=url, manifest=str(uniform_shards / "u-manifest.json"))
        return [k for b in ds.eval_loader(batch_size=1, num_workers=0) for k in b["key"]]

    assert keys(f"file://{path}") == expected
    assert keys(f"pipe:cat {path}") == expected
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(uniform_shards))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}/u-train-{{000000..000001}}.tar"
        assert keys(url) == ["k00", "k01", "k02", "k03"]
        ds = _ds(urls=url)  # the manifest next to the shards is found over http too
        assert ds.num_samples() == 4
    finally:
        server.shutdown()
    ds = _ds(urls="pipe:exit 3", open_retries=1)
    with pytest.raises(ShardOpenError, match="pipe:exit 3 after 2 attempt"):
        list(ds.eval_loader(num_workers=0))


def test_hub_url_translation():
    p = parse_hf_url("hf://datasets/VCLab-PolyU/GGT-100K/shards/ggt100k-train-000001.tar")
    assert p == {"repo_type": "dataset", "repo_id": "VCLab-PolyU/GGT-100K", "revision": "main",
                 "path": "shards/ggt100k-train-000001.tar"}
    assert hf_to_resolve_url("hf://datasets/VCLab-PolyU/GGT-100K@v1.0/shards/a b.tar") == \
        "https://huggingface.co/datasets/VCLab-PolyU/GGT-100K/resolve/v1.0/shards/a%20b.tar"
    resolve = "https://huggingface.co/datasets/org/x/resolve/refs%2Fpr%2F3/s/y-train-000000.tar"
    assert parse_hf_url(resolve)["revision"] == "refs/pr/3"
    assert hf_filesystem_path(resolve) == "datasets/org/x@refs%2Fpr%2F3/s/y-train-000000.tar"
    assert hf_filesystem_path("hf://org/model/w.tar") == "org/model@main/w.tar"
    assert parse_hf_url("https://example.com/a/b/resolve/main/x.tar") is None
    assert parse_hf_url("/data/shards/x.tar") is None
    from ggt_ir.data.shard_io import expand_urls

    assert expand_urls("hf://datasets/o/r/s-{000000..000002}.tar")[-1] == "hf://datasets/o/r/s-000002.tar"


def test_option_file_and_map_style_validation(uniform_shards, tmp_path, demo_root):
    opt = tiny_options(demo_root, tmp_path / "exp")
    opt["datasets"]["train"] = {"type": "GGTShards", "urls": str(uniform_shards / "u-train-{000000..000023}.tar"),
                                "gt_size": 16, "crops_per_image": 2, "category_weights": {"snow": 2.0},
                                "batch_size_per_gpu": 2, "num_worker_per_gpu": 0}
    opt["datasets"]["val"] = {"type": "GGTShards", "urls": str(uniform_shards / "u-train-{000000..000001}.tar"),
                              "categories": ["rain", "haze"]}
    o = load_options(write_options(tmp_path / "o.yml", opt))
    train = o.datasets["train"]
    assert isinstance(train, Opt) and train.category_weights == {"snow": 2.0} and train.scale == 1
    val = GGTShardsDataset(o.datasets["val"])
    assert len(val) == 3  # k00 rain, k02 haze, k03 rain (k01 is snow)
    s = val[1]
    assert s["lq"].shape == (3, 32, 32) and s["key"] == "k02" and s["category"] == "haze" and s["prompt"] == "prompt 2"
    assert len(GGTShardsDataset(o.datasets["train"])) == 48
    opt["datasets"]["train"]["urls"] = str(tmp_path / "nothing-{000000..000003}.tar")
    with pytest.raises(OptionsError, match="datasets.train.urls: 4 of 4 shard"):
        load_options(write_options(tmp_path / "o2.yml", opt))
    opt["datasets"]["train"]["crops_per_imag"] = 2
    with pytest.raises(OptionsError, match="crops_per_image"):
        load_options(write_options(tmp_path / "o3.yml", opt))


def test_manifest_split_selects_shards(tmp_path):
    root = tmp_path / "A"
    layout_a(root, n_per=2)
    out = tmp_path / "s"
    assert shards_main(["build", str(root), "--out", str(out), "--name", "g", "--max-samples-per-shard", "2",
                        "--no-progress", "--jobs", "1"]) == 0
    ds = _ds(manifest=str(out / "g-manifest.json"), split="test")
    assert ds.num_samples() == 2 and all("-test-" in u for u in ds.sources[0].urls)
    keys = {k for b in ds.eval_loader(batch_size=1, num_workers=0) for k in b["key"]}
    assert keys == {"test/haze/img0", "test/haze/img1"}
    img = image(5)
    assert img.dtype == np.uint8
