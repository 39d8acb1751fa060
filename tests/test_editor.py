"""Instruction-editor LoRA finetuning (EditorLoRA + editor_lora step) on a tiny random FLUX.1-Kontext, CPU, no hub.

The tiny transformer / VAE / CLIP / T5 (tokenizers written locally) are saved with
``FluxKontextPipeline.save_pretrained`` and loaded through the same from_pretrained path users use.
"""
import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import ROOT, tiny_options, train_run, train_straight_killed_resumed

pytest.importorskip("diffusers")
pytest.importorskip("peft")

PROMPT = "remove the rain"


@pytest.fixture(scope="session")
def tiny_kontext(tmp_path_factory):
    from ggt_ir.testing.pipelines import save_tiny_flux_kontext

    return save_tiny_flux_kontext(tmp_path_factory.mktemp("tiny_kontext") / "kontext")


def editor_options(demo_root, exp_root, model_dir, name="ed", **over):
    opt = tiny_options(demo_root, exp_root, name=name, **over)
    opt["model_type"] = "editor_lora"
    opt["network_g"] = {"type": "EditorLoRA", "pretrained": str(model_dir), "family": "flux_kontext",
                        "prompt_mode": "batch", "prompt": PROMPT, "lora_rank": 4, "max_sequence_length": 16,
                        "buckets": "none", "num_inference_steps": 2, "guidance_scale": 2.5,
                        "weighting_scheme": "logit_normal"}
    opt["datasets"]["train"]["prompt"] = PROMPT
    opt["datasets"]["val"]["categories"] = ["rain"]
    opt["train"].update({"optim_g": {"type": "AdamW", "lr": 1e-3}, "warmup_iter": 0, "grad_clip": 1.0,
                         "ema_decay": 0.5})
    opt["train"].pop("pixel_opt")
    for k, v in over.items():
        if k.startswith("train__"):
            opt["train"][k[7:]] = v
    return opt


def test_train_only_lora_and_export_loads_with_diffusers_pipeline(demo_root, tmp_path, tiny_kontext):
    """Trainer run: frozen weights untouched, LoRA-only checkpoint; the exported file loaded by
    FluxKontextPipeline.load_lora_weights gives the same image as our sampler (same seed, N steps, guidance)."""
    from diffusers import FluxKontextPipeline, FluxTransformer2DModel

    from ggt_ir.generative.editor import EditorLoRA

    opt = editor_options(demo_root, tmp_path / "exp", tiny_kontext, train__total_iter=2,
                         logger={"print_freq": 1, "save_checkpoint_freq": 2, "keep_last": 1, "trackers": []},
                         val={"val_freq": 2, "num_save_img": 1, "metrics": {"psnr": {"type": "psnr"}}})
    tr, summary = train_run(opt, tmp_path)
    assert summary["iter"] == 2 and "val/psnr" in summary["last"]
    net = tr.step.acc.unwrap_model(tr.step.net_g)

    ref = FluxTransformer2DModel.from_pretrained(tiny_kontext, subfolder="transformer").state_dict()
    n_lora = 0
    for name, p in net.transformer.named_parameters():
        if ".lora_" in name:
            n_lora += 1
            continue
        assert torch.equal(p.detach(), ref[name.replace(".base_layer", "")]), name
    assert n_lora > 0
    ck = load_file(str(tmp_path / "exp" / "ed" / "checkpoints" / "checkpoint-2" / "model.safetensors"))
    assert ck and all(".lora_" in k for k in ck) and len(ck) == n_lora

    export = tmp_path / "exp" / "ed" / "models" / "net_g_2"
    info = json.loads((export / "ggt_ir_adapter.json").read_text())
    assert info["network"] == "EditorLoRA" and info["family"] == "flux_kontext" and info["step"] == 2
    assert info["ema"] is True and info["base_model"] == str(tiny_kontext)
    assert info["ranks_targets"]["transformer"]["default"]["rank"] == 4
    assert info["inference"]["num_inference_steps"] == 2

    lq = torch.rand(1, 3, 32, 32)
    want = tr.step.restore(lq, {"prompt": PROMPT})  # the EMA LoRA weights, as exported
    pipe = FluxKontextPipeline.from_pretrained(str(tiny_kontext))
    pipe.load_lora_weights(str(export))
    got = pipe(image=lq, prompt=PROMPT, num_inference_steps=2, guidance_scale=2.5, height=32, width=32,
               max_area=32 * 32, _auto_resize=False, max_sequence_length=16, output_type="pt",
               generator=torch.Generator().manual_seed(0)).images
    assert (got - want).abs().max() < 1e-4
    # our loader (peft folder + recorded options) in a fresh model gives the same too
    again = EditorLoRA.from_export(export).restore(lq, [PROMPT])
    assert (again - want).abs().max() < 1e-5


def test_resume_is_exact(demo_root, tmp_path, tiny_kontext, monkeypatch):
    common = dict(train__total_iter=3, logger={"print_freq": 1, "save_checkpoint_freq": 2, "keep_last": 0,
                                               "trackers": []}, val={"val_freq": 100, "metrics": {}})
    summary = train_straight_killed_resumed(
        lambda name: editor_options(demo_root, tmp_path / "exp", tiny_kontext, name=name, **common), tmp_path,
        monkeypatch)
    assert summary["iter"] == 3
    root = tmp_path / "exp"
    a = load_file(str(root / "straight" / "checkpoints" / "checkpoint-3" / "model.safetensors"))
    b = load_file(str(root / "killed" / "checkpoints" / "checkpoint-3" / "model.safetensors"))
    mid = load_file(str(root / "straight" / "checkpoints" / "checkpoint-2" / "model.safetensors"))
    assert a.keys() == b.keys() and a
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert max((a[k] - mid[k]).abs().max().item() for k in a) > 1e-6  # it did train after the kill
    sa = torch.load(root / "straight" / "checkpoints" / "checkpoint-3" / "optimizer.bin", weights_only=False)["state"]
    sb = torch.load(root / "killed" / "checkpoints" / "checkpoint-3" / "optimizer.bin", weights_only=False)["state"]
    assert all(torch.allclose(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"], atol=1e-9) for i in sa)
    ea = load_file(str(root / "straight" / "models" / "net_g_3" / "pytorch_lora_weights.safetensors"))
    eb = load_file(str(root / "killed" / "models" / "net_g_3" / "pytorch_lora_weights.safetensors"))
    assert ea.keys() == eb.keys() and max((ea[k] - eb[k]).abs().max().item() for k in ea) <= 1e-6


def test_inference_steps_guidance_and_buckets(tiny_kontext):
    from ggt_ir.generative.editor import EditorLoRA

    torch.manual_seed(0)
    net = EditorLoRA(str(tiny_kontext), prompt=PROMPT, lora_rank=2, max_sequence_length=16, buckets="model",
                     bucket_area=16 * 16, num_inference_steps=2)
    # FLUX.1-Kontext's own buckets (PREFERRED_KONTEXT_RESOLUTIONS) at the native area and scaled down
    net.bucket_area, net.multiple = 1024 * 1024, 16  # the real model's area and multiple
    b = net.bucket_for
    assert b(1024, 1024) == (1024, 1024) and b(800, 1200) == (832, 1248) and b(1500, 700) == (1504, 688)
    net.bucket_area, net.multiple = 16 * 16, 4
    assert net.bucket_for(16, 16) == (16, 16) and net.bucket_for(14, 21) == (12, 16)
    lq = torch.rand(1, 3, 14, 21)
    out = net.restore(lq)
    assert out.shape == lq.shape and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out, net.restore(lq))  # seeded
    assert not torch.equal(out, net.restore(lq, num_inference_steps=1))
    assert not torch.equal(out, net.restore(lq, guidance_scale=7.0))
    cfg = net.restore(lq, true_cfg_scale=3.0, negative_prompt="blurry")
    assert cfg.shape == lq.shape and not torch.equal(cfg, out)
    assert net.restore(lq, output_size="model").shape[-2:] == (12, 16)


def test_offline_error_and_option_files(monkeypatch, tmp_path):
    from ggt_ir.train.options import load_options
    from ggt_ir.generative.editor import EditorLoRA
    from ggt_ir.generative.pretrained import PretrainedNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(PretrainedNotFoundError) as e:
        EditorLoRA("black-forest-labs/FLUX.1-Kontext-dev", revision="main")
    assert "black-forest-labs/FLUX.1-Kontext-dev" in str(e.value) and "hf download" in str(e.value)
    assert "text_encoder_2/" in str(e.value)
    with pytest.raises(ValueError, match="family"):
        EditorLoRA(str(tmp_path), family="sdxl")

    opt = load_options(ROOT / "options/train/EditorLoRA/flux_kontext_ggt100k.yml", check_paths=False)
    assert opt.model_type == "editor_lora" and opt.network_g["family"] == "flux_kontext"
    assert opt.train.optim_g.lr == 1e-4 and opt.network_g["train_guidance"] == 1.0
    opt = load_options(ROOT / "options/train/EditorLoRA/qwen_image_edit_ggt100k.yml", check_paths=False)
    assert opt.network_g["family"] == "qwen_image_edit"
    opt = load_options(ROOT / "options/demo/editor_lora_tiny.yml", check_paths=False)
    assert opt.network_g["type"] == "EditorLoRA"


@pytest.fixture(scope="session")
def tiny_qwen_edit(tmp_path_factory):
    from ggt_ir.testing.pipelines import save_tiny_qwen_image_edit

    return save_tiny_qwen_image_edit(tmp_path_factory.mktemp("tiny_qwen") / "qwen_edit")


def test_qwen_image_edit_train_export_and_pipeline_match(demo_root, tmp_path, tiny_qwen_edit, monkeypatch):
    """family qwen_image_edit: Trainer run changes only LoRA; QwenImageEditPipeline.load_lora_weights + the
    pipeline (true CFG, N steps) reproduce our sampler. The pipeline always targets ~1 MP; its
    calculate_dimensions is pointed at 32x32 here so the tiny run stays fast."""
    import numpy as np
    from diffusers import QwenImageEditPipeline, QwenImageTransformer2DModel
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as qpipe
    from PIL import Image

    opt = editor_options(demo_root, tmp_path / "exp", tiny_qwen_edit, name="qwen", train__total_iter=2,
                         train__ema_decay=0.0, logger={"print_freq": 1, "save_checkpoint_freq": 2, "keep_last": 1,
                                                       "trackers": []}, val={"val_freq": 100, "metrics": {}})
    opt["network_g"].update(family="qwen_image_edit", buckets="model", bucket_area=32 * 32, bucket_train=True,
                            guidance_scale=None, true_cfg_scale=4.0, negative_prompt=" ")
    opt["network_g"].pop("max_sequence_length")
    tr, summary = train_run(opt, tmp_path)
    assert summary["iter"] == 2
    net = tr.step.acc.unwrap_model(tr.step.net_g)
    ref = QwenImageTransformer2DModel.from_pretrained(tiny_qwen_edit, subfolder="transformer").state_dict()
    for name, p in net.transformer.named_parameters():
        if ".lora_" not in name:
            assert torch.equal(p.detach(), ref[name.replace(".base_layer", "")]), name
    export = tmp_path / "exp" / "qwen" / "models" / "net_g_2"
    assert json.loads((export / "ggt_ir_adapter.json").read_text())["diffusers_pipeline"] == "QwenImageEditPipeline"

    rng = np.random.default_rng(0)
    img = Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8"))
    lq = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255
    want = net.restore(lq, [PROMPT])
    monkeypatch.setattr(qpipe, "calculate_dimensions", lambda area, ratio: (32, 32, None))
    pipe = QwenImageEditPipeline.from_pretrained(str(tiny_qwen_edit))
    pipe.load_lora_weights(str(export))
    got = pipe(image=img, prompt=PROMPT, negative_prompt=" ", true_cfg_scale=4.0, num_inference_steps=2, height=32,
               width=32, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert (got - want).abs().max() < 1e-4


def test_every_family_is_one_class_with_the_whole_interface():
    """editors.FAMILIES: each entry imports, subclasses EditorFamily and fills in every family-specific member
    (what EditorLoRA asks a family for), and names a diffusers pipeline that exists."""
    import diffusers

    from ggt_ir.generative.editors import FAMILIES
    from ggt_ir.generative.editors.base import EditorFamily

    assert FAMILIES.names() == ["flux_kontext", "qwen_image_edit"]
    required = ("load_components", "encode_image", "decode_latents", "encode_text", "predict", "bucket")
    for name in FAMILIES.names():
        cls = FAMILIES.get(name)
        assert issubclass(cls, EditorFamily), name
        assert [m for m in required if getattr(cls, m) is getattr(EditorFamily, m)] == [], name
        assert hasattr(diffusers, cls.pipeline), name
        assert {"transformer", "vae", "text_encoder", "scheduler"} <= set(cls.subfolders) and cls.lora_targets, name
    with pytest.raises(NotImplementedError):
        EditorFamily(torch.float32).encode_image(torch.zeros(1, 3, 8, 8))
