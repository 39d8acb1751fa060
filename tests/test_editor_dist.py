"""EditorLoRA (tiny FLUX.1-Kontext) in two real processes on CPU (gloo): train, checkpoint, resume, export."""
import json

import pytest
from safetensors.torch import load_file

from helpers import train_two_processes
from test_editor import editor_options, tiny_kontext  # noqa: F401 - fixture

pytestmark = pytest.mark.slow


def test_two_process_editor_lora_train_and_resume(demo_root, tmp_path, tiny_kontext):  # noqa: F811
    logger = {"print_freq": 1, "save_checkpoint_freq": 2, "keep_last": 0, "trackers": []}
    val = {"val_freq": 2, "num_save_img": 1, "metrics": {"psnr": {"type": "psnr"}}}
    opt = editor_options(demo_root, tmp_path / "exp", tiny_kontext, name="ed_ddp", train__total_iter=2,
                         logger=logger, val=val)
    train_two_processes(opt, tmp_path / "a.yml")
    run = tmp_path / "exp" / "ed_ddp"
    res = json.loads((run / "results.json").read_text())
    assert res["iter"] == 2 and "val/psnr" in res["last"]
    log = next(run.glob("train_ed_ddp_*.log")).read_text()
    assert "processes             : 2 (" in log
    ck = run / "checkpoints" / "checkpoint-2"
    assert all(".lora_" in k for k in load_file(str(ck / "model.safetensors")))
    assert (ck / "random_states_1.pkl").is_file()  # one RNG state per rank
    opt2 = {**opt, "train": {**opt["train"], "total_iter": 3}}
    train_two_processes(opt2, tmp_path / "b.yml", "--resume", "latest")
    assert json.loads((run / "results.json").read_text())["iter"] == 3
    info = json.loads((run / "models" / "net_g_3" / "ggt_ir_adapter.json").read_text())
    assert info["step"] == 3 and (run / "models" / "net_g_3" / "pytorch_lora_weights.safetensors").is_file()
