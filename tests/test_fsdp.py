"""FSDP2 with LoRA-only training, 2 real processes on CPU (gloo), through accelerate's FSDP2 code path
(tests/dist_fsdp_train.py turns the launcher's MULTI_CPU accelerator into an FSDP2 one with the shipped
config's plugin; everything after that is the GPU code path). Both editors and OneStepSD without VSD:
the shipped config (RAM-efficient loading on) loads, frozen weights end up sharded (ranks > 0 never read
them), validation runs through the FSDP root with padded, equal counts, and save_state/load_state resume
exactly. What only a GPU shows: NCCL, bf16 mixed-precision policies on CUDA, the per-GPU memory figures."""
import json

import pytest
from safetensors.torch import load_file

from helpers import ROOT, check_two_processes, launch_two_processes, write_options
from test_editor import editor_options, tiny_kontext, tiny_qwen_edit  # noqa: F401 - fixtures
from test_generative import sd_options, tiny_sd  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow

DRIVER = str(ROOT / "tests" / "dist_fsdp_train.py")
LOGGER = {"print_freq": 1, "save_checkpoint_freq": 2, "keep_last": 0, "trackers": []}
VAL = {"val_freq": 2, "num_save_img": 1, "metrics": {"psnr": {"type": "psnr"}}}
THREE_VAL_IMAGES = ["rain", "haze", "snow"]  # 3 images on 2 ranks: the second rank's slice is padded


def run_fsdp(opt, option_file, *args):
    check_two_processes(launch_two_processes([DRIVER, "-opt", str(write_options(option_file, opt)), *args],
                                             timeout=600))


def reports(stem):
    return [json.loads((stem.parent / f"{stem.name}.rank{r}.json").read_text()) for r in (0, 1)]


def check_sharded(reps, meta_on_rank1=True):
    for r in reps:
        assert r["distributed_type"] == "DistributedType.FSDP"
        assert r["frozen"] > 0 and r["frozen_sharded"] == r["frozen"], r  # every frozen weight is a DTensor shard
        assert r["frozen_on_meta"] == 0 and r["helpers_on_meta"] == 0, r  # ... materialised, helpers untouched
        assert r["local_elements"] < 0.6 * r["elements"], r  # this rank holds about half of the elements
    assert reps[0]["built_on_meta"] == []
    assert reps[1]["built_on_meta"] == (["transformer"] if meta_on_rank1 else [])  # rank 1 read no weights


def test_fsdp_flux_kontext_shipped_config_validation_and_exact_resume(demo_root, tmp_path, tiny_kontext):  # noqa: F811
    def opt(name, total):
        o = editor_options(demo_root, tmp_path / "exp", tiny_kontext, name=name, train__total_iter=total,
                           train__ema_decay=0.0, logger=LOGGER, val=VAL)
        o["datasets"]["val"]["categories"] = THREE_VAL_IMAGES
        return o

    run_fsdp(opt("straight", 3), tmp_path / "s.yml", "--report", str(tmp_path / "rep"))
    check_sharded(reports(tmp_path / "rep"))
    run = tmp_path / "exp" / "straight"
    res = json.loads((run / "results.json").read_text())
    assert res["iter"] == 3 and "val/psnr" in res["last"]
    log = next(run.glob("train_straight_*.log")).read_text()
    assert "val sets              : val (3 images)" in log and "distributed           : fsdp" in log
    ck = run / "checkpoints" / "checkpoint-2"
    assert any(p.name.startswith("pytorch_model_fsdp") for p in ck.iterdir())  # DCP shards
    # resume: stopped after the checkpoint at 2, resumed for the last iteration; the export equals the straight run's
    run_fsdp(opt("resumed", 3), tmp_path / "r.yml", "--stop-after", "2")
    assert not (tmp_path / "exp" / "resumed" / "models" / "net_g_3").exists()
    run_fsdp(opt("resumed", 3), tmp_path / "r.yml", "--resume", "latest")
    a = load_file(str(run / "models" / "net_g_3" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "exp" / "resumed" / "models" / "net_g_3" / "pytorch_lora_weights.safetensors"))
    mid = load_file(str(run / "models" / "net_g_2" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and a
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert max((a[k] - mid[k]).abs().max().item() for k in a) > 1e-6  # it trained after the checkpoint


def test_fsdp_qwen_image_edit_trains_validates_exports(demo_root, tmp_path, tiny_qwen_edit):  # noqa: F811
    o = editor_options(demo_root, tmp_path / "exp", tiny_qwen_edit, name="qwen", train__total_iter=2,
                       train__ema_decay=0.0, logger=LOGGER, val=VAL)
    o["network_g"].update(family="qwen_image_edit", buckets="none", guidance_scale=None, true_cfg_scale=2.0)
    o["network_g"].pop("max_sequence_length")
    o["datasets"]["val"]["categories"] = THREE_VAL_IMAGES
    run_fsdp(o, tmp_path / "q.yml", "--report", str(tmp_path / "rep"))
    check_sharded(reports(tmp_path / "rep"))
    res = json.loads((tmp_path / "exp" / "qwen" / "results.json").read_text())
    assert res["iter"] == 2 and "val/psnr" in res["last"]
    lora = load_file(str(tmp_path / "exp" / "qwen" / "models" / "net_g_2" / "pytorch_lora_weights.safetensors"))
    assert lora and all("lora" in k for k in lora)


def test_fsdp_onestep_sd_without_vsd(demo_root, tmp_path, tiny_sd):  # noqa: F811
    o = sd_options(demo_root, tmp_path / "exp", tiny_sd, name="sd", train__total_iter=2, train__ema_decay=0.0,
                   logger=LOGGER, val=VAL)
    o["datasets"]["val"]["categories"] = THREE_VAL_IMAGES
    run_fsdp(o, tmp_path / "sd.yml", "--report", str(tmp_path / "rep"))
    check_sharded(reports(tmp_path / "rep"), meta_on_rank1=False)  # SD components are read on every rank
    res = json.loads((tmp_path / "exp" / "sd" / "results.json").read_text())
    assert res["iter"] == 2 and "val/psnr" in res["last"]
    export = tmp_path / "exp" / "sd" / "models" / "net_g_2"
    assert (export / "unet_conv_in.safetensors").is_file() and (export / "pytorch_lora_weights.safetensors").is_file()
