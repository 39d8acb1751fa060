"""GGTShards under two real processes (gloo): disjoint shards per rank, and training from shards with resume."""
import json

import pytest

from ggt_ir.data.demo import build_demo_shards
from helpers import ROOT, launch_two_processes, tiny_options, write_options

pytestmark = pytest.mark.slow


def _check(proc):
    assert proc.returncode == 0, f"2-process run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


@pytest.fixture(scope="module")
def demo_shards(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_shards")
    m = build_demo_shards(demo_root, out, per_shard=2)  # 12 train pairs -> 6 shards, 6 test pairs -> 3 shards
    return out, m


def test_two_ranks_read_disjoint_shards(demo_shards, tmp_path):
    out, m = demo_shards
    keys_file = tmp_path / "keys.json"
    _check(launch_two_processes([str(ROOT / "tests" / "dist_shards_probe.py"), str(out / m["urls"]["train"]),
                                 str(keys_file)]))
    ranks = sorted(json.loads(keys_file.read_text()), key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1]
    for kind in ("eval", "train"):
        k0, k1 = set(ranks[0][kind]), set(ranks[1][kind])
        assert k0 and k1 and not k0 & k1, kind
        assert len(k0 | k1) == 12 and len(ranks[0][kind]) + len(ranks[1][kind]) == 12, kind


def test_two_process_training_from_shards_and_resume(demo_root, demo_shards, tmp_path):
    out, m = demo_shards
    opt = tiny_options(demo_root, tmp_path / "exp", name="shards", train__total_iter=4, val__val_freq=2,
                       logger__save_checkpoint_freq=2)
    opt["datasets"]["train"] = {"type": "GGTShards", "urls": str(out / m["urls"]["train"]), "gt_size": 16,
                                "crops_per_image": 2, "batch_size_per_gpu": 2, "num_worker_per_gpu": 1}
    opt["datasets"]["val"] = {"type": "GGTShards", "urls": str(out / m["urls"]["test"])}  # map-style
    path = write_options(tmp_path / "shards.yml", opt)
    _check(launch_two_processes([str(ROOT / "train.py"), "-opt", str(path)]))
    run = tmp_path / "exp" / "shards"
    results = json.loads((run / "results.json").read_text())
    assert results["iter"] == 4 and results["skipped_samples"] == 0
    log = next(run.glob("train_shards_*.log")).read_text()
    assert "processes             : 2 (MULTI_CPU" in log and "GGTShards" in log and "val (6 images)" in log
    path2 = write_options(tmp_path / "shards2.yml", {**opt, "train": {**opt["train"], "total_iter": 6}})
    _check(launch_two_processes([str(ROOT / "train.py"), "-opt", str(path2), "--resume", "latest"]))
    assert json.loads((run / "results.json").read_text())["iter"] == 6
