"""model_type gan (ggt_ir/train/steps/gan.py): the D/G schedule, every GAN loss path through the step, exact
resume with a discriminator (and on-device degradation), a 2-process run, and eval --run on a GAN run."""
from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from helpers import TINY_SWINIR, tiny_options, train_run, write_options

TINY_D = {"type": "UNetDiscriminatorSN", "num_in_ch": 3, "num_feat": 4}
NET_G = {**TINY_SWINIR, "drop_path_rate": 0.0}  # deterministic forward: losses can be recomputed


def gan_options(demo_root, tmp_path, name="gan", gan_opt=None, **over):
    opt = tiny_options(demo_root, tmp_path / "exp", name=name, **over)
    opt["model_type"] = "gan"
    opt["network_g"] = dict(NET_G)
    opt["network_d"] = dict(TINY_D)
    opt["train"].update(gan_opt=gan_opt or {"type": "GANLoss", "gan_type": "vanilla", "loss_weight": 0.1},
                        optim_d={"type": "Adam", "lr": 1e-3})
    return opt


def build_step(demo_root, tmp_path, gan_opt, **train):
    from accelerate import Accelerator

    from ggt_ir.train.options import load_options
    from ggt_ir.train.steps.gan import GANStep

    opt = gan_options(demo_root, tmp_path, gan_opt=gan_opt)
    opt["train"].update(train)
    o = load_options(write_options(tmp_path / "g.yml", opt))
    torch.manual_seed(0)
    return GANStep(o, Accelerator(), logging.getLogger("test"))


def test_options_are_checked(demo_root, tmp_path):
    from ggt_ir.config import OptionsError
    from ggt_ir.train.options import load_options

    opt = gan_options(demo_root, tmp_path)
    opt["network_d"] = {"type": "UNetDiscriminatorSN", "num_fet": 4}
    with pytest.raises(OptionsError, match="network_d"):
        load_options(write_options(tmp_path / "a.yml", opt))
    opt = gan_options(demo_root, tmp_path)
    del opt["network_d"]
    with pytest.raises(OptionsError, match="needs a 'network_d'"):
        load_options(write_options(tmp_path / "b.yml", opt))
    opt = gan_options(demo_root, tmp_path, gan_opt={"type": "L1Loss"})
    with pytest.raises(OptionsError, match="gan_opt.type must be GANLoss"):
        load_options(write_options(tmp_path / "c.yml", opt))
    opt = gan_options(demo_root, tmp_path)
    opt["train"]["net_d_iters"] = 0
    with pytest.raises(OptionsError, match="net_d_iters"):
        load_options(write_options(tmp_path / "d.yml", opt))
    opt = gan_options(demo_root, tmp_path)
    opt["train"]["degradation"] = {"synthetic_prob": 2.0}
    with pytest.raises(OptionsError, match="synthetic_prob"):
        load_options(write_options(tmp_path / "e.yml", opt))
    opt = gan_options(demo_root, tmp_path)
    opt["model_type"] = "regression"
    with pytest.raises(Exception, match="network_d"):
        load_options(write_options(tmp_path / "f.yml", opt))


def test_d_and_g_alternate_on_the_net_d_schedule(demo_root, tmp_path):
    """net_d_init_iters 2, net_d_iters 2 over 7 iterations: D updates every iteration (7), G at 4 and 6 (2);
    the optimizers' own step counts agree, and G's schedule still advances every iteration."""
    opt = gan_options(demo_root, tmp_path, train__total_iter=7, train__net_d_iters=2, train__net_d_init_iters=2,
                      logger__save_checkpoint_freq=100)
    tr, summary = train_run(opt, tmp_path)
    step = tr.step
    assert step.updates == {"g": 2, "d": 7}
    adam_steps = lambda o: {int(s["step"]) for s in o.optimizer.state.values()}  # noqa: E731
    assert adam_steps(step.optimizer) == {2} and adam_steps(step.optimizer_d) == {7}
    assert step.scheduler.last_epoch == 7 and step.scheduler_d.last_epoch == 7
    assert summary["iter"] == 7


GAN_PATHS = [
    {"gan_type": "vanilla"},
    {"gan_type": "lsgan"},
    {"gan_type": "hinge"},
    {"gan_type": "wgan", "gp_weight": 10.0},
    {"gan_type": "wgan_softplus"},
    {"gan_type": "vanilla", "relativistic": True},
    {"gan_type": "lsgan", "relativistic": True},
]


@pytest.mark.parametrize("path", GAN_PATHS, ids=lambda p: "-".join(str(v) for v in p.values()))
def test_each_gan_loss_path_through_the_step(demo_root, tmp_path, path):
    """The step's G and D losses equal GANLoss's formulas on the same networks (replayed on copies in the same
    call order: spectral norm updates its vectors on every training forward); both networks change."""
    from ggt_ir.losses.gan import GANLoss

    gan_opt = {"type": "GANLoss", "loss_weight": 0.1, **path}
    step = build_step(demo_root, tmp_path, gan_opt)
    g0, d0 = copy.deepcopy(step.net_g), copy.deepcopy(step.net_d)
    gan = GANLoss(**{k: v for k, v in gan_opt.items() if k != "type"})
    g = torch.Generator().manual_seed(1)
    batch = {"lq": torch.rand(2, 3, 16, 16, generator=g), "gt": torch.rand(2, 3, 16, 16, generator=g)}
    losses = step.train_step(batch, it=1)

    with torch.no_grad():
        out = g0(batch["lq"])
        fake = d0(out)
        real = d0(batch["gt"]) if path.get("relativistic") else None
        want_g = gan.generator_loss(fake, real)
        real_d = d0(batch["gt"])
        want_d = gan.discriminator_losses(real_d, d0(out))
        want_pix = torch.nn.functional.l1_loss(out, batch["gt"])
    assert losses["l_g_gan"].item() == pytest.approx(want_g.item(), rel=1e-5, abs=1e-6)
    assert losses["l_pix"].item() == pytest.approx(want_pix.item(), rel=1e-5)
    for k in ("l_d_real", "l_d_fake"):
        assert losses[k].item() == pytest.approx(want_d[k].item(), rel=1e-5, abs=1e-6)
    assert ("l_d_gp" in losses) == (path.get("gp_weight", 0) > 0)
    if "l_d_gp" in losses:
        assert losses["l_d_gp"].item() > 0 and torch.isfinite(losses["l_d_gp"])
    changed = lambda a, b: any(not torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))  # noqa: E731
    assert changed(step.net_g, g0) and changed(step.net_d, d0)


def test_perceptual_loss_and_usm_targets(demo_root, tmp_path):
    """train.losses (VGG perceptual, random local weights) against the USM-sharpened GT (percep_gt_usm), pixel
    loss against the plain GT; D's real images sharpened with gan_gt_usm."""
    from test_perceptual_losses import random_torchvision_weights

    from ggt_ir.data.device_degradation import usm_sharp
    from ggt_ir.losses.perceptual import PerceptualLoss

    weights = tmp_path / "w"
    random_torchvision_weights("vgg19", weights / "checkpoints" / "vgg19-dcbb9e9d.pth")
    percep = {"type": "PerceptualLoss", "layer_weights": {"conv1_2": 0.1, "conv2_2": 1.0}, "weights_dir": str(weights)}
    step = build_step(demo_root, tmp_path, None, losses=[percep], percep_gt_usm=True, gan_gt_usm=True)
    assert step.losses["l_percep"].layer_weights == {"conv1_2": 0.1, "conv2_2": 1.0}  # not merged with the defaults
    g0, d0 = copy.deepcopy(step.net_g), copy.deepcopy(step.net_d)
    g = torch.Generator().manual_seed(2)
    batch = {"lq": torch.rand(2, 3, 16, 16, generator=g), "gt": torch.rand(2, 3, 16, 16, generator=g)}
    losses = step.train_step(batch, it=1)
    with torch.no_grad():
        out = g0(batch["lq"])
        sharp = usm_sharp(batch["gt"])
        want = PerceptualLoss({"conv1_2": 0.1, "conv2_2": 1.0}, weights_dir=str(weights))(out, sharp)
        d0(out)
        real = d0(sharp)
    assert losses["l_percep"].item() == pytest.approx(want.item(), rel=1e-5)
    assert losses["l_pix"].item() == pytest.approx(torch.nn.functional.l1_loss(out, batch["gt"]).item(), rel=1e-5)
    assert losses["out_d_real"].item() == pytest.approx(real.mean().item(), rel=1e-5, abs=1e-6)


def _weights_of(run_dir, it):
    g = load_file(str(run_dir / "models" / f"net_g_{it}.safetensors"))
    ckpt = run_dir / "checkpoints" / f"checkpoint_{it}" if (run_dir / "checkpoints" / f"checkpoint_{it}").is_dir() \
        else next(p for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(str(it)))
    d = load_file(str(ckpt / "model_1.safetensors"))
    return g, d


def test_exact_resume_with_a_discriminator_and_device_degradation(demo_root, tmp_path, monkeypatch):
    """4 iterations straight == killed after the checkpoint at 2 and resumed: identical G (export, EMA) and D
    weights (checkpoint); the LQ of the real/synthetic mix comes from the on-device degradation."""
    from helpers import train_straight_killed_resumed

    def options(name):
        opt = gan_options(demo_root, tmp_path, name=name, train__total_iter=4, logger__save_checkpoint_freq=2)
        opt["network_g"] = dict(TINY_SWINIR)  # drop-path on: the RNG state must resume too
        opt["train"].update(net_d_init_iters=1, degradation={"synthetic_prob": 0.5, "blur_kernel_size": 7,
                                                             "usm_sharp_gt": True}, l1_gt_usm=True)
        return opt

    summary = train_straight_killed_resumed(options, tmp_path, monkeypatch, kill_at=2)
    assert summary["iter"] == 4
    ga, da = _weights_of(tmp_path / "exp" / "straight", 4)
    gb, db = _weights_of(tmp_path / "exp" / "killed", 4)
    assert ga.keys() == gb.keys() and any(k.startswith("params_ema.") for k in ga)
    assert all(torch.equal(ga[k], gb[k]) for k in ga)
    assert da.keys() == db.keys() and any("weight_orig" in k for k in da)
    assert all(torch.equal(da[k], db[k]) for k in da)


def test_eval_run_and_restore_on_a_gan_run(demo_root, tmp_path):
    """The export is the generator only: load_restorer and `ggt-ir eval --run` read a GAN run like any other."""
    from ggt_ir.cli import main
    from ggt_ir.inference.loader import load_restorer

    opt = gan_options(demo_root, tmp_path, name="ganrun", train__total_iter=2, logger__save_checkpoint_freq=2)
    train_run(opt, tmp_path)
    run = tmp_path / "exp" / "ganrun"
    exported = load_file(str(run / "models" / "net_g_2.safetensors"))
    assert not any("weight_orig" in k or "conv0" in k.split(".")[1] for k in exported)  # no discriminator keys
    r = load_restorer(run)
    assert r.info["network_g"]["type"] == "SwinIR" and r.restore(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)
    eval_opt = {"name": "ev", "results_root": str(tmp_path / "results"), "model": {"run": str(run)},
                "datasets": {"test": {"type": "PairedFolder", "dataroot": str(demo_root), "split": "test",
                                      "categories": ["rain"]}},
                "metrics": ["psnr"], "eval": {"pbar": False}}
    assert main(["eval", "-opt", str(write_options(tmp_path / "ev.yml", eval_opt))]) == 0
    summary = json.loads((tmp_path / "results" / "ev" / "summary.json").read_text())
    assert summary["source"]["checkpoint"].endswith("net_g_2.safetensors") and summary["source"]["run"] == str(run)


@pytest.mark.slow
def test_two_process_gan_training(demo_root, tmp_path):
    """Two real processes (gloo): G and D under DDP, the D/G schedule, a checkpoint with D and an export."""
    from helpers import train_two_processes

    opt = gan_options(demo_root, tmp_path, name="gan2p", train__total_iter=2, logger__save_checkpoint_freq=2,
                      train__net_d_init_iters=1)
    train_two_processes(opt, tmp_path / "gan2p.yml")
    run = tmp_path / "exp" / "gan2p"
    g, d = _weights_of(run, 2)
    assert g and d and json.loads((run / "results.json").read_text())["iter"] == 2


def test_gan_recipes_load():
    """Every recipe of options/train/GAN type-checks (the bases are include-only); stage 2 of each family is
    model_type gan with a discriminator and starts from its stage-1 export; the x4 form is scale 4."""
    from helpers import ROOT

    from ggt_ir.train.options import load_options

    files = sorted((ROOT / "options" / "train" / "GAN").glob("*.yml"))
    names = {f.stem for f in files}
    for family in ("realesrnet", "realesrgan", "swinir_gan", "nafnet_gan"):
        assert {f"{family}_{v}" for v in ("base", "ggt100k", "synthetic", "existing")} <= names
    assert {"realesrnet_x4plus", "realesrgan_x4plus"} <= names
    for f in files:
        if f.stem.endswith("_base"):
            continue
        opt = load_options(f, check_paths=False)
        assert opt.name == f.stem
        if f.stem.startswith("realesrnet"):
            assert opt.model_type == "regression"
            continue
        assert opt.model_type == "gan" and opt.network_d["type"] == "UNetDiscriminatorSN"
        assert opt.path.pretrain_network_g and opt.train.gan_opt.loss_weight == pytest.approx(0.1)
        assert (opt.train.degradation is not None) == f.stem.endswith(("_synthetic", "_x4plus"))
    x4 = load_options(ROOT / "options" / "train" / "GAN" / "realesrgan_x4plus.yml", check_paths=False)
    assert x4.scale == 4 and x4.network_g["scale"] == 4 and x4.train.degradation.scale == 4
    demo = load_options(ROOT / "options" / "demo" / "gan_demo.yml", check_paths=False)
    assert demo.model_type == "gan" and demo.path.pretrain_network_g.startswith("experiments/gan_demo_stage1/")


def test_all_synthetic_degradation_ignores_the_loaders_lq(demo_root, tmp_path):
    """synthetic_prob 1 (the x4plus recipe's HQ-only path): every LQ is made on the device, whatever the loader's
    LQ is; the same seed per iteration gives the same LQ."""
    step = build_step(demo_root, tmp_path, None, degradation={"synthetic_prob": 1.0, "blur_kernel_size": 7})
    batch = {"lq": torch.zeros(2, 3, 8, 8), "gt": torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))}
    a = step._prepare_batch(batch, it=5)
    step._micro = (0, 0)
    b = step._prepare_batch(batch, it=5)
    assert a["lq"].shape == (2, 3, 16, 16) and bool(a["synthetic"].all()) and torch.equal(a["lq"], b["lq"])
    assert torch.isfinite(step.train_step(batch, it=6)["l_d_real"])


def test_channels_last_trains_as_contiguous_and_resumes_exactly(demo_root, tmp_path, monkeypatch):
    """train.channels_last (NHWC weights for G, D and the VGG loss): the same weights as a contiguous run up to
    float rounding, contiguous exports and checkpoints, and an exact resume after a kill."""
    from helpers import train_straight_killed_resumed

    from ggt_ir.losses.perceptual import torchvision_file

    step = build_step(demo_root, tmp_path, None, channels_last=True)
    conv = step.net_d.conv1.weight_orig
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()

    vgg = tmp_path / "w" / "checkpoints" / torchvision_file("vgg19")
    vgg.parent.mkdir(parents=True)
    import torchvision.models as tvm

    torch.manual_seed(0)
    torch.save(tvm.vgg19(weights=None).state_dict(), vgg)
    nafnet = {"type": "NAFNet", "width": 8, "enc_blk_nums": [1], "middle_blk_num": 1, "dec_blk_nums": [1]}

    def options(name, channels_last=True):
        opt = gan_options(demo_root, tmp_path, name=name, train__total_iter=4, logger__save_checkpoint_freq=2,
                          train__ema_decay=0.9, train__channels_last=channels_last)
        opt["network_g"] = dict(nafnet)
        opt["train"]["losses"] = [{"type": "PerceptualLoss", "layer_weights": {"conv2_2": 1.0},
                                   "weights_dir": str(tmp_path / "w")}]
        return opt

    train_straight_killed_resumed(options, tmp_path, monkeypatch, kill_at=2)
    train_run(options("contiguous", channels_last=False), tmp_path)
    ga, da = _weights_of(tmp_path / "exp" / "straight", 4)
    gb, db = _weights_of(tmp_path / "exp" / "killed", 4)
    gc, dc = _weights_of(tmp_path / "exp" / "contiguous", 4)
    assert all(torch.equal(ga[k], gb[k]) for k in ga) and all(torch.equal(da[k], db[k]) for k in da)
    assert all(v.is_contiguous() for v in ga.values())
    assert any(v.dim() == 4 for v in ga.values())
    for k in ga:
        assert torch.allclose(ga[k], gc[k], rtol=1e-3, atol=1e-4), k


def test_fp16_discriminator_has_its_own_loss_scale(demo_root, tmp_path):
    """fp16's two GradScalers, with a real GradScaler on CPU (accelerate keeps none there): an overflow in D's
    gradients skips D's update and halves D's scale only; G steps and keeps its scale; D's scaler is checkpointed."""
    from accelerate import Accelerator

    from ggt_ir.train.options import load_options
    from ggt_ir.train.steps.gan import GANStep

    o = load_options(write_options(tmp_path / "g.yml", gan_options(demo_root, tmp_path)))
    torch.manual_seed(0)
    acc = Accelerator()
    acc.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)  # what accelerate makes for fp16 on a GPU
    step = GANStep(o, acc, logging.getLogger("test"))
    assert step.optimizer.scaler is acc.scaler and step.optimizer_d.scaler is step.scaler_d is not acc.scaler
    assert any(obj is step.scaler_d for obj in acc._custom_objects)
    g = torch.Generator().manual_seed(1)
    batch = {"lq": torch.rand(2, 3, 16, 16, generator=g), "gt": torch.rand(2, 3, 16, 16, generator=g)}
    step.train_step(batch, it=1)
    assert acc.scaler.get_scale() == step.scaler_d.get_scale() == 2.0 ** 10
    trained = lambda net: {k: v.clone() for k, v in net.state_dict().items() if not k.endswith(("_u", "_v"))}  # noqa: E731
    d0, g0 = trained(step.net_d), trained(step.net_g)
    hook = step.net_d.conv9.weight.register_hook(lambda grad: grad * float("inf"))  # D's gradients overflow
    step.train_step(batch, it=2)
    hook.remove()
    assert step.scaler_d.get_scale() == 2.0 ** 9 and acc.scaler.get_scale() == 2.0 ** 10
    assert all(torch.equal(d0[k], v) for k, v in trained(step.net_d).items())  # D's update was skipped
    assert any(not torch.equal(g0[k], v) for k, v in trained(step.net_g).items())  # G's was not
