"""OneStepSD + VSD (two prepared modules, two optimizers) in two real processes on CPU (gloo)."""
import json

import pytest
from safetensors.torch import load_file

from helpers import train_two_processes
from test_generative import lpips_dir, sd_options, tiny_sd  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow


def test_two_process_onestep_sd_vsd_train_and_resume(demo_root, tmp_path, tiny_sd):  # noqa: F811
    logger = {"print_freq": 1, "save_checkpoint_freq": 2, "keep_last": 0, "trackers": []}
    val = {"val_freq": 2, "num_save_img": 1, "metrics": {"psnr": {"type": "psnr"}}}
    opt = sd_options(demo_root, tmp_path / "exp", tiny_sd, name="sd_ddp", vsd=True, train__total_iter=2,
                     logger=logger, val=val)
    train_two_processes(opt, tmp_path / "a.yml")
    run = tmp_path / "exp" / "sd_ddp"
    assert json.loads((run / "results.json").read_text())["iter"] == 2
    assert "processes" in next(run.glob("train_sd_ddp_*.log")).read_text()
    ck = run / "checkpoints" / "checkpoint-2"
    assert all(".lora_" in k for k in load_file(str(ck / "model_1.safetensors")))
    assert (ck / "optimizer_1.bin").is_file()
    opt2 = {**opt, "train": {**opt["train"], "total_iter": 3}}
    train_two_processes(opt2, tmp_path / "b.yml", "--resume", "latest")
    assert json.loads((run / "results.json").read_text())["iter"] == 3
    assert (run / "models" / "net_g_3" / "ggt_ir_adapter.json").is_file()
