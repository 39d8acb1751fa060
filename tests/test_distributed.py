"""Two real processes on CPU (gloo): disjoint data per rank, sharded validation, checkpoints that load back."""
import json

import pytest
import torch

from helpers import ROOT, launch_two_processes, tiny_options, write_options

pytestmark = pytest.mark.slow


def _check(proc):
    assert proc.returncode == 0, f"2-process run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


def test_two_ranks_draw_disjoint_samples(demo_root, tmp_path):
    out = tmp_path / "keys.json"
    _check(launch_two_processes([str(ROOT / "tests" / "dist_data_probe.py"), str(demo_root), str(out)]))
    ranks = json.loads(out.read_text())
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    k0, k1 = (set(r["keys"]) for r in sorted(ranks, key=lambda r: r["rank"]))
    assert k0 and k1 and not (k0 & k1)
    assert len(k0 | k1) == 12  # one epoch over the 12 training pairs, split between the ranks


def test_two_process_training_validation_and_resume(demo_root, tmp_path):
    from ggt_ir.archs.swinir_arch import SwinIR
    from ggt_ir.archs.weights import load_weights
    from ggt_ir.data.paired_folder import PairedFolderDataset
    from ggt_ir.eval.psnr_ssim import psnr, quantize

    opt = tiny_options(demo_root, tmp_path / "exp", name="ddp", train__total_iter=4, val__val_freq=2,
                       logger__save_checkpoint_freq=2)
    path = write_options(tmp_path / "ddp.yml", opt)
    proc = launch_two_processes([str(ROOT / "train.py"), "-opt", str(path)])
    _check(proc)
    run = tmp_path / "exp" / "ddp"
    results = json.loads((run / "results.json").read_text())
    assert results["iter"] == 4
    assert "processes             : 2 (MULTI_CPU" in (next(run.glob("train_ddp_*.log")).read_text())

    # sharded validation (each rank half of the val set, sums reduced) == scoring the whole set in one process
    cfg = {k: v for k, v in opt["network_g"].items() if k != "type"}
    net = SwinIR(**cfg).eval()
    load_weights(net, run / "models" / "net_g_4.safetensors", "params_ema")
    val = PairedFolderDataset(PairedFolderDataset.Options(dataroot=str(demo_root), split="test"))
    with torch.no_grad():
        scores = [psnr(quantize(net(val[i]["lq"][None]).clamp(0, 1)), val[i]["gt"][None]).item()
                  for i in range(len(val))]
    assert results["last"]["val/psnr"] == pytest.approx(sum(scores) / len(scores), abs=1e-4)

    # the 2-process checkpoint loads back: resume both ranks for two more iterations
    path2 = write_options(tmp_path / "ddp2.yml", {**opt, "train": {**opt["train"], "total_iter": 6}})
    _check(launch_two_processes([str(ROOT / "train.py"), "-opt", str(path2), "--resume", "latest"]))
    results = json.loads((run / "results.json").read_text())
    assert results["iter"] == 6
    log = "\n".join(p.read_text() for p in run.glob("train_ddp_*.log"))
    assert "resumed from" in log and "checkpoint-4" in log
