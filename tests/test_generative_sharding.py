"""Refusals and plumbing for FSDP / DeepSpeed that need no second process (the runs: test_fsdp.py,
test_deepspeed.py): launches refused at option-load time with the alternative named, DeepSpeed's batch figures
from the options, the LoRA-only state dict switched off around prepare, meta builds that read no weights."""
import types

import pytest
import torch

from helpers import ROOT, write_options
from test_editor import editor_options, tiny_kontext  # noqa: F401 - fixture
from test_generative import sd_options, tiny_sd  # noqa: F401 - fixture

pytest.importorskip("diffusers")


@pytest.mark.parametrize("launch", ["deepspeed", "fsdp"])
def test_onestep_sd_vsd_refused_at_option_load_under_deepspeed_and_fsdp(demo_root, tmp_path, tiny_sd, monkeypatch,  # noqa: F811
                                                                       launch):
    from ggt_ir.config import OptionsError
    from ggt_ir.train.options import load_options

    path = write_options(tmp_path / "o.yml", sd_options(demo_root, tmp_path / "exp", tiny_sd, vsd=True,
                                                        train__ema_decay=0.0))
    monkeypatch.setenv(f"ACCELERATE_USE_{launch.upper()}", "true")  # what `accelerate launch --config_file` exports
    with pytest.raises(OptionsError) as e:
        load_options(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "vsd_opt" in msg and "--multi_gpu" in msg
    assert not (tmp_path / "exp").exists()  # before any folder is touched
    monkeypatch.delenv(f"ACCELERATE_USE_{launch.upper()}")
    load_options(path)  # DDP / one process: fine


def test_onestep_sd_without_vsd_deepspeed_refused_fsdp_allowed(demo_root, tmp_path, tiny_sd, monkeypatch):  # noqa: F811
    from ggt_ir.config import OptionsError
    from ggt_ir.train.options import load_options

    path = write_options(tmp_path / "o.yml", sd_options(demo_root, tmp_path / "exp", tiny_sd, train__ema_decay=0.0))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(OptionsError, match="DDP .* or FSDP"):
        load_options(path)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    load_options(path)


def test_editor_refusals_under_sharding(demo_root, tmp_path, tiny_kontext, monkeypatch):  # noqa: F811
    from ggt_ir.config import OptionsError
    from ggt_ir.train.options import load_options

    opt = editor_options(demo_root, tmp_path / "exp", tiny_kontext)  # ema_decay 0.5
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(OptionsError, match="ema_decay: 0"):
        load_options(write_options(tmp_path / "a.yml", opt))
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    opt["train"]["ema_decay"] = 0.0
    load_options(write_options(tmp_path / "b.yml", opt))
    opt["network_g"]["quantize"] = "int8"
    with pytest.raises(OptionsError, match="quantize with DeepSpeed"):
        load_options(write_options(tmp_path / "c.yml", opt))


def test_deepspeed_batch_figures_come_from_the_options():
    from ggt_ir.generative.sharding import configure_deepspeed

    def acc(cfg, n=4):
        return types.SimpleNamespace(num_processes=n, state=types.SimpleNamespace(
            deepspeed_plugin=types.SimpleNamespace(deepspeed_config=cfg)))

    cfg = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "gradient_clipping": "auto"}
    got = configure_deepspeed(acc(cfg), batch_size=2, accumulation=3, grad_clip=1.0)
    assert got == {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 3, "train_batch_size": 24,
                   "gradient_clipping": 1.0} and cfg["train_batch_size"] == 24
    with pytest.raises(ValueError, match="gradient_accumulation_steps is 1 but the options give 3"):
        configure_deepspeed(acc({"gradient_accumulation_steps": 1}), batch_size=2, accumulation=3, grad_clip=0)
    assert configure_deepspeed(types.SimpleNamespace(state=types.SimpleNamespace(deepspeed_plugin=None)), 1, 1, 0) is None


def test_shipped_accelerate_configs_carry_no_hand_kept_batch_figures():
    import yaml

    fsdp = yaml.safe_load((ROOT / "options/accelerate/fsdp_bf16_8gpu.yaml").read_text())["fsdp_config"]
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_cpu_ram_efficient_loading"] is True
    assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp  # the model's _no_split_modules decide
    for z in (2, 3):
        ds = yaml.safe_load((ROOT / f"options/accelerate/deepspeed_zero{z}_bf16.yaml").read_text())["deepspeed_config"]
        assert ds["zero_stage"] == z and ds["gradient_accumulation_steps"] == "auto" and ds["gradient_clipping"] == "auto"


def test_lora_state_dict_is_complete_inside_full_state_dict_and_meta_builds_read_nothing(tiny_kontext, monkeypatch):  # noqa: F811
    from diffusers import FluxTransformer2DModel

    from ggt_ir.generative import lora as L
    from ggt_ir.generative.editor import EditorLoRA
    from ggt_ir.generative.pretrained import load_component_on_meta

    net = EditorLoRA(str(tiny_kontext), lora_rank=2, max_sequence_length=16)
    lora_only = net.state_dict()
    assert lora_only and all(".lora_" in k for k in lora_only)
    with L.full_state_dict(net):
        full = net.state_dict()
    assert set(full) > set(lora_only) and any("norm_out" in k for k in full)
    assert set(net.state_dict()) == set(lora_only)  # back to LoRA-only
    assert net._no_split_modules == ["FluxTransformerBlock", "FluxSingleTransformerBlock"]

    def no_weights(*a, **k):
        raise AssertionError("weights were read")

    monkeypatch.setattr(FluxTransformer2DModel, "from_pretrained", no_weights)
    meta = load_component_on_meta(FluxTransformer2DModel, str(tiny_kontext), "transformer", torch_dtype=torch.bfloat16)
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in meta.parameters())
    # an editor whose transformer is on meta (FSDP ranks > 0): trained tensors get real storage, helpers are real
    ed = EditorLoRA(str(tiny_kontext), lora_rank=2, max_sequence_length=16, _transformer_on_meta=True)
    assert all(not p.is_meta for p in ed.parameters() if p.requires_grad)
    assert all(p.is_meta for p in ed.parameters() if not p.requires_grad)
    assert not any(p.is_meta for m in ed._frozen_modules() for p in m.parameters())
    ed.to("meta")  # what accelerate's RAM-efficient loading does: the helpers stay where they are
    assert not any(p.is_meta for m in ed._frozen_modules() for p in m.parameters())
