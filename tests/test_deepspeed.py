"""DeepSpeed ZeRO-2 / ZeRO-3 running the instruction editors, 2 real processes on CPU (gloo), through accelerate's
DeepSpeed code path (tests/dist_deepspeed_train.py turns the launcher's MULTI_CPU accelerator into a DeepSpeed one
with the shipped config's plugin). Needs deepspeed (pip install 'ggt-ir[deepspeed]'); skipped without it.
What only a GPU shows: NCCL, DeepSpeed's bf16 engine, the per-GPU memory of a partitioned base."""
import json

import pytest
from safetensors.torch import load_file

from helpers import ROOT, check_two_processes, launch_two_processes, write_options
from test_editor import editor_options, tiny_kontext  # noqa: F401 - fixture

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow

DRIVER = str(ROOT / "tests" / "dist_deepspeed_train.py")
LOGGER = {"print_freq": 1, "save_checkpoint_freq": 2, "keep_last": 0, "trackers": []}
VAL = {"val_freq": 2, "num_save_img": 1, "metrics": {"psnr": {"type": "psnr"}}}


def run_ds(opt, option_file, zero, *args):
    check_two_processes(launch_two_processes([DRIVER, "-opt", str(write_options(option_file, opt)), "--zero", str(zero),
                                              *args], timeout=600))


def options(demo_root, tmp_path, model, name):
    o = editor_options(demo_root, tmp_path / "exp", model, name=name, train__total_iter=3, train__ema_decay=0.0,
                       logger=LOGGER, val=VAL)
    o["datasets"]["val"]["categories"] = ["rain", "haze", "snow"]  # 3 images on 2 ranks: padded
    return o


def lora(tmp_path, name, it):
    return load_file(str(tmp_path / "exp" / name / "models" / f"net_g_{it}" / "pytorch_lora_weights.safetensors"))


def test_zero2_and_zero3_train_the_editor_alike_and_zero3_resumes_exactly(demo_root, tmp_path, tiny_kontext):  # noqa: F811
    run_ds(options(demo_root, tmp_path, tiny_kontext, "z2"), tmp_path / "z2.yml", 2, "--report", str(tmp_path / "r2"))
    run_ds(options(demo_root, tmp_path, tiny_kontext, "z3"), tmp_path / "z3.yml", 3, "--report", str(tmp_path / "r3"))
    for stage, stem in ((2, "r2"), (3, "r3")):
        for rank in (0, 1):
            r = json.loads((tmp_path / f"{stem}.rank{rank}.json").read_text())
            assert r["engine"] == "DeepSpeedEngine" and r["zero_stage"] == stage
            # the batch figures come from the options (the configs say "auto")
            assert r["batch"] == {"train_micro_batch_size_per_gpu": 2, "train_batch_size": 4,
                                  "gradient_accumulation_steps": 1, "gradient_clipping": 1.0}
            if stage == 3:  # the frozen base is partitioned: each rank holds half of it
                assert r["frozen_partitioned"] == r["frozen"] > 0
                assert r["frozen_local_elements"] * 2 == r["frozen_elements"]
            else:
                assert r["frozen_partitioned"] == 0
    for name in ("z2", "z3"):
        res = json.loads((tmp_path / "exp" / name / "results.json").read_text())
        assert res["iter"] == 3 and "val/psnr" in res["last"]
    a, b = lora(tmp_path, "z2", 3), lora(tmp_path, "z3", 3)  # ZeRO-3's LoRA-only gather exports the same tensors
    assert a.keys() == b.keys() and a and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    # ZeRO-3 resume: stopped after the checkpoint at 2, resumed for the last iteration
    o = options(demo_root, tmp_path, tiny_kontext, "z3r")
    run_ds(o, tmp_path / "z3r.yml", 3, "--stop-after", "2")
    run_ds(o, tmp_path / "z3r.yml", 3, "--resume", "latest")
    c = lora(tmp_path, "z3r", 3)
    assert max((b[k] - c[k]).abs().max().item() for k in b) <= 1e-6
    assert max((b[k] - lora(tmp_path, "z3", 2)[k]).abs().max().item() for k in b) > 1e-6  # it trained after 2
