"""The OSEDiff recipe as published: each loss term of one real ``onestep_sd`` training step pinned against a direct
computation of OSEDiff's formulas (cswry/OSEDiff train_osediff.py:271-305, osediff.py:117-243) on the same tensors
and the same random draws; the recipe's weights are OSEDiff's 1 : 2 : 1; conv_in is LoRA-wrapped and trained;
the posterior is sampled in training; the x0 arithmetic stays fp32 with bf16 weights.

The reference formulas are written here from OSEDiff's code (read, not imported): ``F.mse_loss`` on [-1, 1]
images, ``lpips.LPIPS(net='vgg')`` on [-1, 1] (pyiqa's port of that package, same weight files), the
distribution-matching loss with ``DDPMScheduler.add_noise``, CFG on the frozen UNet, ``eps_to_mu``, the
``mean|z - x0_real|`` weighting and no 1/2, and the fake score's diffusion loss with t ~ U[0, 1000).
"""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from helpers import ROOT, write_options
from test_generative import lpips_dir, sd_options, tiny_sd  # noqa: F401 - fixtures

pytest.importorskip("diffusers")

PARITY = {}  # term -> max |ours - OSEDiff| (printed at the end; docs/generative.md quotes them)


def osediff_add_noise(scheduler, z, noise, t):
    return scheduler.add_noise(z, noise, t)


def osediff_eps_to_mu(scheduler, eps, sample, t):
    a = scheduler.alphas_cumprod.to(device=sample.device, dtype=sample.dtype)[t].view(-1, 1, 1, 1)
    return (sample - (1 - a) ** 0.5 * eps) / a ** 0.5


@contextlib.contextmanager
def rng_replay():
    """Yields a function that puts the global RNG back to where it was when the context opened."""
    state = torch.get_rng_state()
    yield lambda: torch.set_rng_state(state)


def test_each_loss_term_matches_osediff_formulas_on_the_same_tensors(demo_root, tmp_path, tiny_sd, lpips_dir):  # noqa: F811
    from accelerate import Accelerator
    from diffusers import DDPMScheduler

    from ggt_ir.eval.weights import offline_weights
    from ggt_ir.generative.vsd import adapters_off
    from ggt_ir.train.options import load_options
    from ggt_ir.train.steps.onestep_sd import OneStepSDStep

    opt = sd_options(demo_root, tmp_path / "exp", tiny_sd, vsd=True, lpips_dir=lpips_dir, train__ema_decay=0.0)
    opt["train"]["vsd_opt"]["cfg"] = 7.5
    step = OneStepSDStep(load_options(write_options(tmp_path / "o.yml", opt)), Accelerator(cpu=True), None)
    gen, reg = step.net_g, step.reg
    sched = DDPMScheduler.from_pretrained(str(tiny_sd), subfolder="scheduler")  # OSEDiff's noise_scheduler

    seen = {}
    forward, vsd_loss, reg_forward = gen.forward, reg.vsd_loss, reg.forward

    def gen_forward(lq, prompts=None):
        with rng_replay() as replay:
            out, z0, emb = forward(lq, prompts)
            replay()
            # OSEDiff_gen.forward: sampled posterior * scaling, UNet at t=999, scheduler step, decode, clamp
            x = lq * 2 - 1
            z = gen.vae.encode(x).latent_dist.sample() * gen.vae.config.scaling_factor
            t = torch.tensor([999])
            eps = gen.unet(z, t, encoder_hidden_states=emb).sample
            # OSEDiff's noise_scheduler.step(eps, 999, z) with set_timesteps(1): the previous alpha-bar is 1, so
            # prev_sample = pred_original_sample = (z - sqrt(1 - a_999) eps) / sqrt(a_999) (DDPM step, variance 0)
            x0 = osediff_eps_to_mu(sched, eps, z, t)
            ref = gen.vae.decode(x0 / gen.vae.config.scaling_factor).sample.clamp(-1, 1)
        seen.update(out=out.detach(), z0=z0.detach(), emb=emb, ref_out=ref.detach(), ref_z0=x0.detach())
        return out, z0, emb

    def vsd_ref(latents, emb, neg):
        with rng_replay() as replay:
            ours = vsd_loss(latents, emb, neg)
            replay()
            # OSEDiff_reg.distribution_matching_loss
            bsz = latents.shape[0]
            t = torch.randint(20, 980, (bsz,)).long()
            noise = torch.randn_like(latents)
            noisy = osediff_add_noise(sched, latents, noise, t)
            with torch.no_grad():
                x0_update = osediff_eps_to_mu(sched, reg.unet(noisy, t, encoder_hidden_states=emb.float()).sample,
                                              noisy, t)
                with adapters_off(reg.unet):  # unet_fix: the base UNet
                    fix = reg.unet(torch.cat([noisy] * 2), torch.cat([t] * 2),
                                   encoder_hidden_states=torch.cat([neg, emb])).sample
                uncond, text = fix.chunk(2)
                x0_fix = osediff_eps_to_mu(sched, uncond + 7.5 * (text - uncond), noisy, t)
            w = torch.abs(latents - x0_fix).mean(dim=[1, 2, 3], keepdim=True)
            grad = (x0_update - x0_fix) / w
            ref = F.mse_loss(latents, (latents - grad).detach())
        seen.update(vsd=ours.detach(), ref_vsd=ref.detach())
        return ours

    def diff_ref(latents, emb):
        with rng_replay() as replay:
            ours = reg_forward(latents, emb)
            replay()
            # OSEDiff_reg.diff_loss (it draws the noise before t; the same two draws are taken here in our order)
            z, e = latents.detach(), emb.detach()
            t = torch.randint(0, sched.config.num_train_timesteps, (z.shape[0],)).long()
            noise = torch.randn_like(z)
            with torch.no_grad():
                pred = reg.unet(osediff_add_noise(sched, z, noise, t), timestep=t, encoder_hidden_states=e).sample
            ref = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        seen.update(diff=ours.detach(), ref_diff=ref.detach())
        return ours

    gen.forward, reg.vsd_loss, reg.forward = gen_forward, vsd_ref, diff_ref
    torch.manual_seed(0)
    lq, gt = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    losses = step.train_step({"lq": lq, "gt": gt, "prompt": ["sharp", "sharp"]}, it=1)

    # generator forward: OSEDiff's sampled-posterior one-step path gives the same image and latents
    PARITY["output image"] = (seen["out"] * 2 - 1 - seen["ref_out"]).abs().max().item()
    PARITY["x0 latents"] = (seen["z0"] - seen["ref_z0"]).abs().max().item()
    # L2 on [-1, 1] (train_osediff.py:277), lambda_l2 = 1
    x_pred, x_tgt = seen["out"] * 2 - 1, gt * 2 - 1
    PARITY["l_pix (L2)"] = abs(losses["l_pix"].item() - F.mse_loss(x_pred.float(), x_tgt.float()).item())
    # LPIPS-vgg on [-1, 1] (train_osediff.py:278), lambda_lpips = 2; pyiqa's port of lpips.LPIPS, same files
    from pyiqa.archs.lpips_arch import LPIPS

    with offline_weights("lpips-vgg", lpips_dir):
        ref_lpips = LPIPS(net="vgg", pretrained_model_path=str(lpips_dir / "pyiqa" / "LPIPS_v0.1_vgg-a78928a0.pth"))
    ref_lpips.eval()
    with torch.no_grad():
        lp = ref_lpips(x_pred, x_tgt, normalize=False).mean()
    PARITY["l_lpips"] = abs(losses["l_lpips"].item() - 2.0 * lp.item())
    # VSD (osediff.py:206-243, no 1/2), lambda_vsd = 1; fake-score diffusion loss (osediff.py:178-194)
    PARITY["l_vsd"] = abs(losses["l_vsd"].item() - seen["ref_vsd"].item())
    PARITY["l_vsd_fake"] = abs(losses["l_vsd_fake"].item() - seen["ref_diff"].item())
    print("\nOSEDiff parity (max |ours - OSEDiff|):", ", ".join(f"{k} {v:.2e}" for k, v in PARITY.items()))
    assert PARITY["output image"] < 1e-5 and PARITY["x0 latents"] < 1e-5
    assert PARITY["l_pix (L2)"] < 1e-6 and PARITY["l_lpips"] < 1e-5
    assert PARITY["l_vsd"] < 1e-6 * max(1.0, seen["ref_vsd"].item())
    assert PARITY["l_vsd_fake"] < 1e-6 * max(1.0, seen["ref_diff"].item())
    assert losses["l_vsd"].item() > 0 and losses["l_lpips"].item() > 0


def test_recipe_is_osediffs_and_conv_in_is_lora_wrapped_and_trained(tiny_sd):  # noqa: F811
    from ggt_ir.generative import lora as L
    from ggt_ir.generative.onestep_sd import OneStepSD
    from ggt_ir.train.options import load_options

    opt = load_options(ROOT / "options/train/OneStepSD/onestep_sd_ggt100k.yml", check_paths=False)
    t = opt.train
    assert (t.pixel_opt.loss_weight, t.lpips_opt.loss_weight, t.vsd_opt.loss_weight) == (1.0, 2.0, 1.0)
    assert t.pixel_loss_range == "signed" and t.pixel_opt.type == "MSELoss"
    assert (t.vsd_opt.min_timestep, t.vsd_opt.max_timestep) == (20, 980)
    assert (t.vsd_opt.diffusion_min_timestep, t.vsd_opt.diffusion_max_timestep) == (0, 1000)
    g = opt.network_g
    assert g.get("train_conv_in", True) and g.get("vae_sample", "train") == "train" and g.get("precise_x0", True)
    assert "conv_in" in L.UNET_TARGETS

    net = OneStepSD(str(tiny_sd))
    assert "default_encoder" in net.unet.conv_in.lora_A  # LoRA-wrapped, in the encoder region (osediff.py:50)
    trained = {n for n, p in net.named_parameters() if p.requires_grad}
    assert {"unet.conv_in.base_layer.weight", "unet.conv_in.base_layer.bias"} <= trained  # trained fully
    assert set(net.state_dict()) == trained  # the checkpoint holds exactly what trains
    assert all(".lora_" in n or n.startswith("unet.conv_in.") for n in trained)


def test_posterior_sampled_in_training_mode_at_inference(tiny_sd):  # noqa: F811
    from ggt_ir.generative.onestep_sd import OneStepSD

    net = OneStepSD(str(tiny_sd), prompt="a photo")
    lq = torch.rand(1, 3, 16, 16)
    torch.manual_seed(1)
    _, a, _ = net(lq)
    torch.manual_seed(2)
    _, b, _ = net(lq)
    assert not torch.equal(a, b)  # training forward: a posterior sample per call (osediff.py:119)
    assert torch.equal(net.restore(lq), net.restore(lq))  # inference: the mode (deterministic)
    never = OneStepSD(str(tiny_sd), prompt="a photo", vae_sample="never")
    torch.manual_seed(1)
    _, c, _ = never(lq)
    torch.manual_seed(2)
    assert torch.equal(c, never(lq)[1])


def test_x0_stays_fp32_with_bf16_weights(tiny_sd):  # noqa: F811
    """At t = 999, x0 = (z - 0.9977 eps) / 0.0683 amplifies the rounding of z and eps ~14.6x. With bf16 frozen
    weights, precise_x0 keeps the layers that produce z and eps in fp32 and x0's arithmetic in fp32: x0 equals the
    float64 formula on the model's own z and eps, while rounding z and eps to bf16 first (what a plain bf16 model
    does) costs many times bf16's own rounding of x0. (Whether the rest of a bf16 network is then the larger error
    on real SD weights is a GPU measurement: bench/gpu_suite.py.)"""
    from ggt_ir.generative.onestep_sd import OneStepSD

    torch.manual_seed(0)
    net = OneStepSD(str(tiny_sd), prompt="a photo", weight_dtype="bf16")
    plain = OneStepSD(str(tiny_sd), prompt="a photo", weight_dtype="bf16", precise_x0=False)
    assert net.unet.conv_out.base_layer.weight.dtype == torch.float32
    assert net.vae.quant_conv.base_layer.weight.dtype == torch.float32
    assert net.vae.encoder.conv_out.base_layer.weight.dtype == torch.float32
    assert net.unet.conv_in.base_layer.weight.dtype == torch.float32  # trained: fp32 like every trained tensor
    assert plain.unet.conv_out.base_layer.weight.dtype == torch.bfloat16
    lq = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999])
    with torch.no_grad():
        emb = net.encode_prompts(["a photo"])
        z = net.encode(lq)
        eps = net.unet(z.to(torch.bfloat16), t, encoder_hidden_states=emb.to(torch.bfloat16)).sample
        x0 = net.denoise(z, emb)
        assert z.dtype == eps.dtype == x0.dtype == torch.float32
        assert plain.encode(lq).dtype == torch.bfloat16  # what precise_x0 avoids
    a = net.alphas_cumprod[999].double()
    exact = (z.double() - (1 - a).sqrt() * eps.double()) / a.sqrt()
    rms = lambda d: d.pow(2).mean().sqrt().item()  # noqa: E731
    assert rms(x0.double() - exact) / rms(exact) < 1e-6  # the model's x0: fp32 arithmetic on fp32 z and eps
    # the amplification itself, on a well-trained model's tensors: z = sqrt(a) x0 + sqrt(1-a) eps with a perfect eps
    g = torch.Generator().manual_seed(0)
    x0_true, e_true = torch.randn(4, 4, 64, 64, generator=g).double(), torch.randn(4, 4, 64, 64, generator=g).double()
    zz = a.sqrt() * x0_true + (1 - a).sqrt() * e_true
    from_rounded = net.x0_from_prediction(e_true.bfloat16(), zz.bfloat16(), torch.tensor([999] * 4)).double()
    from_fp32 = net.x0_from_prediction(e_true.float(), zz.float(), torch.tensor([999] * 4)).double()
    err_rounded, err_fp32 = rms(from_rounded - x0_true), rms(from_fp32 - x0_true)
    err_x0_bf16 = rms(x0_true.bfloat16().double() - x0_true)
    print(f"\nx0 rms error per unit-std latent at t=999: z, eps in bf16 {err_rounded:.4f} "
          f"(x{err_rounded / err_x0_bf16:.1f} bf16's own rounding of x0, {err_x0_bf16:.4f}); z, eps in fp32 {err_fp32:.1e}")
    assert err_rounded > 10 * err_x0_bf16 and err_fp32 < 1e-4
