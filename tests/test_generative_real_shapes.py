"""The generative restorers on real-shaped models, on CPU: the published configs of SD-2.1-base, FLUX.1-Kontext-dev
and Qwen-Image-Edit (``ggt_ir/generative/model_configs.py``, inline, no download) at their real width, with few
transformer layers, random weights saved in the real diffusers folder layout (``ggt_ir/testing/real_shapes.py``)
and loaded through the same ``from_pretrained`` path as released weights. Checked: LoRA attaches to exactly the
intended modules (counted; the SD UNet / VAE sets against OSEDiff's own selection rule), one real training step
(the family's ``Step.train_step``) runs and moves only LoRA (and conv_in), and an export reloads to the same output.

The LoRA counts on the full-depth trees run on the meta device (fast); the three end-to-end tests build ~1-2 GB of
bf16 weights each and are marked slow.
"""
import pytest
import torch

from helpers import write_options
from test_editor import PROMPT, editor_options, tiny_kontext  # noqa: F401 - fixture
from test_generative import lpips_dir, sd_options, tiny_sd  # noqa: F401 - fixtures

pytest.importorskip("diffusers")

# diffusers' FLUX / Qwen-Image module trees: LoRA layers per block for the families' default targets
FLUX_PER_DOUBLE = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                   "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                   "ff_context.net.2"]  # 12 per double-stream block
FLUX_PER_SINGLE = ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"]  # pre-only attention: no to_out
QWEN_PER_BLOCK = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"]


def osediff_unet_targets(unet) -> dict[str, list[str]]:
    """OSEDiff's own rule (cswry/OSEDiff osediff.py:39-67, read, not imported): a substring grep over parameter
    names, bias and norm skipped, split into encoder (down blocks + conv_in) / decoder (up blocks + conv_out) /
    others."""
    grep = ["to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut", "conv_out",
            "proj_out", "proj_in", "ff.net.2", "ff.net.0.proj"]
    enc, dec, other = [], [], []
    for n, _ in unet.named_parameters():
        if "bias" in n or "norm" in n:
            continue
        for pattern in grep:
            if pattern in n and ("down_blocks" in n or "conv_in" in n):
                enc.append(n.replace(".weight", ""))
                break
            elif pattern in n and ("up_blocks" in n or "conv_out" in n):
                dec.append(n.replace(".weight", ""))
                break
            elif pattern in n:
                other.append(n.replace(".weight", ""))
                break
    return {"default_encoder": enc, "default_decoder": dec, "default_others": other}


def osediff_vae_targets(vae) -> list[str]:
    """OSEDiff's VAE-encoder rule (osediff.py:20-36)."""
    grep = ["conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out", "to_k", "to_q", "to_v", "to_out.0"]
    out = []
    for n, _ in vae.named_parameters():
        if "bias" in n or "norm" in n:
            continue
        for pattern in grep:
            if pattern in n and "encoder" in n:
                out.append(n.replace(".weight", ""))
            elif "quant_conv" in n and "post_quant_conv" not in n:
                out.append(n.replace(".weight", ""))
    return sorted(set(out))


def lora_layers(model) -> list[str]:
    return sorted({n.split(".lora_A")[0].replace(".base_layer", "") for n, _ in model.named_parameters()
                   if ".lora_A" in n})


def test_lora_targets_on_the_full_depth_real_module_trees():
    """On the meta device, full depth: our SD-2.1 UNet / VAE targets are OSEDiff's (258 = 94 + 148 + 16 UNet
    layers, 32 VAE-encoder layers); FLUX.1-Kontext 19 x 12 + 38 x 4 = 380, Qwen-Image-Edit 60 x 4 = 240."""
    from ggt_ir.generative import lora as L
    from ggt_ir.generative.editors import FAMILIES
    from ggt_ir.generative.model_configs import FLUX1_KONTEXT_DEV, QWEN_IMAGE_EDIT, SD21_BASE, build, config_of

    unet = build(*config_of(SD21_BASE, "unet"))
    ours = L.unet_regions(L.find_targets(unet, L.UNET_TARGETS))
    theirs = osediff_unet_targets(unet)
    assert {k: sorted(v) for k, v in ours.items()} == {k: sorted(v) for k, v in theirs.items()}
    assert [len(ours[k]) for k in ("default_encoder", "default_decoder", "default_others")] == [94, 148, 16]
    vae = build(*config_of(SD21_BASE, "vae"))
    ours_vae = L.find_targets(vae, L.VAE_ENCODER_TARGETS, ("encoder.", "quant_conv"))
    assert sorted(ours_vae) == osediff_vae_targets(vae) and len(ours_vae) == 32

    flux = build(*config_of(FLUX1_KONTEXT_DEV, "transformer"))
    want = [f"transformer_blocks.{i}.{s}" for i in range(19) for s in FLUX_PER_DOUBLE]
    want += [f"single_transformer_blocks.{i}.{s}" for i in range(38) for s in FLUX_PER_SINGLE]
    assert sorted(L.find_targets(flux, list(FAMILIES.get("flux_kontext").lora_targets))) == sorted(want)
    assert len(want) == 380
    qwen = build(*config_of(QWEN_IMAGE_EDIT, "transformer"))
    want = [f"transformer_blocks.{i}.{s}" for i in range(60) for s in QWEN_PER_BLOCK]
    assert sorted(L.find_targets(qwen, list(FAMILIES.get("qwen_image_edit").lora_targets))) == sorted(want)


def assert_same_trained(net, again):
    """The reloaded model holds the trained tensors bit for bit (fp32, whatever the frozen weights' dtype)."""
    a = {n: p for n, p in net.named_parameters() if p.requires_grad}
    b = {n: p for n, p in again.named_parameters() if p.requires_grad}
    assert a.keys() == b.keys() and a
    bad = [n for n in a if not torch.equal(a[n].detach().cpu(), b[n].detach().cpu())]
    assert not bad, (len(bad), bad[:3])


@pytest.mark.parametrize("kind", ["onestep", "editor"])
def test_bf16_frozen_weights_export_reloads_the_trained_tensors_unrounded(tmp_path, tiny_sd, tiny_kontext, kind):  # noqa: F811
    """Reloading an export into bf16 frozen weights used to cast the LoRA (and conv_in) to bf16 on the way in."""
    from ggt_ir.generative.editor import EditorLoRA
    from ggt_ir.generative.onestep_sd import OneStepSD

    torch.manual_seed(0)
    net = (OneStepSD(str(tiny_sd), prompt="a photo", weight_dtype="bf16") if kind == "onestep" else
           EditorLoRA(str(tiny_kontext), prompt=PROMPT, lora_rank=2, max_sequence_length=16, buckets="none",
                      num_inference_steps=1, weight_dtype="bf16"))
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    export = net.export_adapters(tmp_path / "export", step=1)
    again = type(net).from_export(export)
    assert_same_trained(net, again)
    lq = torch.rand(1, 3, 32, 32)
    assert torch.equal(net.restore(lq).float(), again.restore(lq).float())


def one_step_export_reload(step, batch, tmp_path, trained_prefixes=()):
    """One ``train_step``; only LoRA (and ``trained_prefixes``) moved; the export reloads to the same output."""
    net = step.acc.unwrap_model(step.net_g)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    losses = step.train_step(batch, it=1)
    assert losses and all(torch.isfinite(v).all() for v in losses.values()), losses
    moved = {n for n, p in net.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved and all(".lora_" in n or n.startswith(trained_prefixes) for n in moved), sorted(moved)[:5]
    assert any(".lora_B" in n for n in moved)  # B starts at zero: the adapters now change the output
    export = tmp_path / "export"
    step.export(export, 1)
    lq = batch["lq"][:1]
    want = step.restore(lq, {"prompt": batch.get("prompt", [None])[:1]} if "prompt" in batch else None)
    return losses, export, lq, want


@pytest.mark.slow
def test_sd21_base_real_unet_and_vae_train_one_step_with_vsd_and_reload(demo_root, tmp_path, lpips_dir):  # noqa: F811
    """SD-2.1-base: the real UNet (865.9 M) and VAE, a 1-layer CLIP of width 1024; OneStepSD + LPIPS + VSD step."""
    from accelerate import Accelerator

    from ggt_ir.generative.onestep_sd import OneStepSD
    from ggt_ir.testing.real_shapes import save_sd21_base
    from ggt_ir.train.options import load_options
    from ggt_ir.train.steps.onestep_sd import OneStepSDStep

    folder = save_sd21_base(tmp_path / "sd21", text_layers=1)
    opt = sd_options(demo_root, tmp_path / "exp", folder, vsd=True, lpips_dir=lpips_dir, train__ema_decay=0.0)
    opt["network_g"]["weight_dtype"] = "bf16"
    step = OneStepSDStep(load_options(write_options(tmp_path / "o.yml", opt)), Accelerator(cpu=True), None)
    gen, reg = step.acc.unwrap_model(step.net_g), step.acc.unwrap_model(step.reg)
    assert sum(p.numel() for n, p in gen.unet.named_parameters() if ".lora_" not in n) > 865e6
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):  # the saved folder's own UNet config, for OSEDiff's rule
        tree = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(folder / "unet")))
    regions = osediff_unet_targets(tree)
    want_unet = sorted(n for v in regions.values() for n in v)
    assert lora_layers(gen.unet) == want_unet and len(want_unet) == 258
    assert len(lora_layers(gen.vae)) == 32 and lora_layers(reg.unet) == want_unet  # the fake score's adapter too
    torch.manual_seed(0)
    batch = {"lq": torch.rand(1, 3, 64, 64), "gt": torch.rand(1, 3, 64, 64), "prompt": ["sharp"]}
    losses, export, lq, want = one_step_export_reload(step, batch, tmp_path, ("unet.conv_in.",))
    assert {"l_pix", "l_lpips", "l_vsd", "l_vsd_fake"} <= set(losses)
    again = OneStepSD.from_export(export)
    assert_same_trained(gen, again)
    assert (again.restore(lq, ["sharp"]).float().clamp(0, 1) - want).abs().max() < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("family", ["flux_kontext", "qwen_image_edit"])
def test_editor_real_width_transformer_trains_one_step_and_reloads(demo_root, tmp_path, family):
    """FLUX.1-Kontext (1 double + 1 single block) / Qwen-Image-Edit (1 block) at width 3072 with the real VAEs and
    real-width text encoders (1 layer): EditorLoRA's flow-matching step, LoRA count, export / reload."""
    from accelerate import Accelerator

    from ggt_ir.generative.editor import EditorLoRA
    from ggt_ir.testing.real_shapes import save_flux_kontext, save_qwen_image_edit
    from ggt_ir.train.options import load_options
    from ggt_ir.train.steps.editor_lora import EditorLoRAStep

    if family == "flux_kontext":
        folder = save_flux_kontext(tmp_path / "m", num_layers=1, num_single_layers=1, text_layers=1)
        want = [f"transformer_blocks.0.{s}" for s in FLUX_PER_DOUBLE]
        want += [f"single_transformer_blocks.0.{s}" for s in FLUX_PER_SINGLE]
    else:
        folder = save_qwen_image_edit(tmp_path / "m", num_layers=1, text_layers=1)
        want = [f"transformer_blocks.0.{s}" for s in QWEN_PER_BLOCK]
    opt = editor_options(demo_root, tmp_path / "exp", folder, train__ema_decay=0.0)
    opt["network_g"].update(family=family, weight_dtype="bf16", num_inference_steps=2)  # 1: NaN (Qwen shift_terminal)
    step = EditorLoRAStep(load_options(write_options(tmp_path / "o.yml", opt)), Accelerator(cpu=True), None)
    net = step.acc.unwrap_model(step.net_g)
    assert lora_layers(net.transformer) == sorted(want)
    assert net.transformer.config.num_attention_heads * net.transformer.config.attention_head_dim == 3072
    torch.manual_seed(0)
    batch = {"lq": torch.rand(1, 3, 32, 32), "gt": torch.rand(1, 3, 32, 32), "prompt": [PROMPT]}
    losses, export, lq, want_img = one_step_export_reload(step, batch, tmp_path)
    assert torch.isfinite(want_img).all()
    again = EditorLoRA.from_export(export)
    assert_same_trained(net, again)
    assert (again.restore(lq, [PROMPT]).float().clamp(0, 1) - want_img).abs().max() < 1e-6
