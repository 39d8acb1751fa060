"""FoundIR: the official key layout and parameter count, loading the release layout (model + ema-pytorch EMA),
the sampler's algebra (a perfect residual predictor restores the HQ image exactly), im2overlap tiling, training.

An equivalence run against the official code (House-Leo/FoundIR src/model.py, on random weights) happens when
FOUNDIR_OFFICIAL points at a checkout or a bare git mirror of that repository, and ema-pytorch is importable or
FOUNDIR_EMA_PYTORCH points at its package folder; it is skipped otherwise."""
from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from ggt_ir.archs import build_network
from ggt_ir.archs import foundir_sampler as S
from ggt_ir.archs.weights import load_weights

TINY = {"type": "FoundIR", "dim": 8, "dim_mults": [1, 2], "resnet_block_groups": 4}


def tiny(**over):
    torch.manual_seed(0)
    return build_network({**TINY, **over})


def test_official_key_layout_and_parameter_count():
    """Official configuration (src/model.py; test.py/train.py arguments): 290 state-dict entries (276 tensors of
    ResidualDiffusion(UnetRes(dim=64, dim_mults=(1, 2, 4, 8)))' U-Net + 14 schedule buffers) and 36,261,187
    parameters, read from the official module in the equivalence run."""
    net = build_network({"type": "FoundIR"})
    sd = net.state_dict()
    assert len(sd) == 290 and sum(p.numel() for p in net.parameters()) == 36_261_187
    shapes = {"model.unet0.init_conv.weight": (64, 6, 7, 7), "model.unet0.downs.3.3.weight": (512, 256, 3, 3),
              "model.unet0.mid_attn.fn.fn.to_qkv.weight": (384, 512, 1, 1), "model.unet0.ups.0.3.1.weight": (256, 512, 3, 3),
              "model.unet0.downs.0.2.fn.fn.to_out.1.g": (1, 64, 1, 1), "model.unet0.time_mlp.1.weight": (256, 64),
              "model.unet0.final_conv.weight": (3, 64, 1, 1), "alphas_cumsum": (1000,)}
    assert {k: tuple(sd[k].shape) for k in shapes} == shapes
    assert [k for k in sd if not k.startswith("model.")] == list(S.SCHEDULE_BUFFERS)
    assert net.pad_multiple == 16 and net.scale == 1


def test_schedule_follows_its_definition():
    s = S.schedule(1000, 1.4e-3)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    prod = torch.cumprod(1 - betas, 0)
    assert torch.allclose(s["alphas_cumsum"].double(), 1 - prod.sqrt(), atol=1e-6)
    assert torch.allclose(s["betas_cumsum"].double(), (1 - prod).sqrt(), atol=1e-6)
    assert s["delta_cumsum"][-1].item() == pytest.approx(sum(torch.linspace(1e-6, 1.4e-3, 1000).tolist()), rel=1e-5)
    assert S.sampling_times(1000, 4) == [(999, 749), (749, 499), (499, 249), (249, -1)]  # real-world setting
    assert S.sampling_times(1000, 3) == [(999, 665), (665, 332), (332, -1)]  # synthetic setting


def test_release_layout_loads_strictly_and_takes_the_ema(tmp_path):
    """model-2000.pt: {'step', 'model': ResidualDiffusion state dict, 'opt0', 'ema': ema-pytorch EMA state dict
    ('initted', 'step', 'online_model.<k>', 'ema_model.<k>'), 'scaler'}."""
    src = tiny()
    online = src.state_dict()
    averaged = {k: v + 0.5 if v.is_floating_point() and k.startswith("model.") else v for k, v in online.items()}
    ema = {"initted": torch.tensor(True), "step": torch.tensor(7)}
    ema.update({f"online_model.{k}": v for k, v in online.items()})
    ema.update({f"ema_model.{k}": v for k, v in averaged.items()})
    torch.save({"step": 2000, "model": online, "opt0": {}, "ema": ema, "scaler": None}, tmp_path / "model-2000.pt")
    net = tiny()
    report = load_weights(net, tmp_path / "model-2000.pt", strict=True)
    assert report.param_key == "ema" and not report.missing and not report.unexpected
    assert all(torch.equal(net.state_dict()[k], v) for k, v in averaged.items())
    load_weights(net, tmp_path / "model-2000.pt", param_key="model", strict=True)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in online.items())


def test_a_perfect_residual_predictor_restores_the_hq_image(monkeypatch):
    """The sampler's algebra: with U = x_in - x_0 at every step, the last step returns x_0 exactly, whatever the
    noise; and the training loss of that predictor is 0."""
    net = tiny().eval()
    g = torch.Generator().manual_seed(1)
    lq = torch.rand(2, 3, 16, 24, generator=g)
    # |residual| <= 0.5 in [0, 1] units: the official sampler clips the predicted residual to [-1, 1] in [-1, 1] units
    gt = (lq + 0.8 * (torch.rand(lq.shape, generator=g) - 0.5)).clamp(0, 1)
    monkeypatch.setattr(net, "predict_residual", lambda x_t, x_in, t: x_in - (2 * gt - 1))
    for steps in (1, 3, 4):
        assert torch.allclose(net.restore(lq, generator=torch.Generator().manual_seed(steps), sampling_timesteps=steps),
                              gt, atol=1e-6)
    assert net(lq, gt, generator=torch.Generator().manual_seed(0)).item() == pytest.approx(0.0, abs=1e-7)


def test_training_state_follows_the_forward_process(monkeypatch):
    """x_t handed to the U-Net is x_0 + abar_t x_res + bbar_t eps - dbar_t x_in (the official q_sample)."""
    net = tiny()
    seen = {}

    def spy(x_t, x_in, t):
        seen.update(x_t=x_t, x_in=x_in, t=t)
        return torch.zeros_like(x_in)

    monkeypatch.setattr(net, "predict_residual", spy)
    lq, gt = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    t, noise = torch.tensor([0, 999]), torch.randn(2, 3, 8, 8)
    loss = net(lq, gt, t=t, noise=noise)
    x_in, x_0 = 2 * lq - 1, 2 * gt - 1
    a, b, d = (net.alphas_cumsum[t].view(-1, 1, 1, 1), net.betas_cumsum[t].view(-1, 1, 1, 1),
               net.delta_cumsum[t].view(-1, 1, 1, 1))
    assert torch.allclose(seen["x_t"], x_0 + a * (x_in - x_0) + b * noise - d * x_in, atol=1e-6)
    assert loss.item() == pytest.approx((x_in - x_0).abs().mean().item(), rel=1e-6)


def test_restore_is_deterministic_and_tiles_large_images(monkeypatch):
    net = tiny(crop_size=16, crop_overlap=8, sampling_timesteps=2).eval()
    lq = torch.rand(1, 3, 20, 28)
    a = net.restore(lq, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, net(lq, generator=torch.Generator().manual_seed(0)))
    assert a.shape == lq.shape and not torch.equal(a, net.restore(lq, generator=torch.Generator().manual_seed(1)))
    calls = []
    real = S.ddim_sample
    monkeypatch.setattr(S, "ddim_sample", lambda n, x, *args: calls.append(tuple(x.shape)) or real(n, x, *args))
    net.restore(lq)  # 20 x 28 > 16^2: crops of 16 at rows [0, 4], columns [0, 8, 12]
    assert calls == [(1, 3, 16, 16)] * 6
    calls.clear()
    net.restore(torch.rand(1, 3, 16, 16))  # not larger than crop^2: whole
    assert calls == [(1, 3, 16, 16)]


def test_im2overlap_positions_and_mean_blend():
    assert S.overlap_starts(100, 64, 32) == [0, 32, 36]
    assert S.overlap_starts(2048, 1024, 512) == [0, 512, 1024]  # the official 1024 / 512 setting
    assert S.overlap_starts(50, 64, 32) == [0]
    x = torch.rand(2, 3, 37, 45)
    assert torch.allclose(S.im2overlap(lambda c: c, x, 16, 8, batch=3), x, atol=1e-7)
    # crop k returns k: the merge is the mean over the crops covering each pixel
    counter = iter(range(100))
    out = S.im2overlap(lambda c: torch.full_like(c, float(next(counter))), torch.zeros(1, 1, 10, 10), 6, 2)
    # rows [0, 4], columns [0, 4]: crops 0 (0,0), 1 (0,4), 2 (4,0), 3 (4,4)
    assert out[0, 0, 0, 0].item() == 0 and out[0, 0, 0, 9].item() == 1 and out[0, 0, 9, 9].item() == 3
    assert out[0, 0, 5, 5].item() == pytest.approx(1.5)


def test_foundir_trains_and_refuses_lq_only_training_calls():
    net = tiny()
    g = torch.Generator().manual_seed(0)
    lq = torch.rand(2, 3, 16, 16, generator=g)
    gt = (lq * 0.5 + 0.25).clamp(0, 1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, betas=(0.9, 0.99))  # the official optimizer (larger lr)
    t, noise = torch.tensor([500, 500]), torch.randn(2, 3, 16, 16, generator=g)
    first = net(lq, gt, t=t, noise=noise).item()
    for _ in range(8):
        loss = net(lq, gt, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert net(lq, gt, t=t, noise=noise).item() < first
    with pytest.raises(RuntimeError, match=r"net\(lq, gt\)"):
        net(lq)
    with pytest.raises(ValueError, match="sampling_timesteps"):
        tiny(sampling_timesteps=0)


def test_recipes_are_valid_options():
    """The FoundIR recipes type-check with their own step (model_type: foundir); the base is include-only."""
    from ggt_ir.train.options import load_options

    root = Path(__file__).resolve().parents[1] / "options" / "train" / "FoundIR"
    files = sorted(root.glob("foundir_*.yml"))
    assert {f.name for f in files} >= {"foundir_base.yml", "foundir_ggt100k.yml", "foundir_synthetic.yml",
                                       "foundir_existing.yml"}
    for f in files:
        if f.name == "foundir_base.yml":
            continue  # shared by the three variants, which add datasets.train
        opt = load_options(f, check_paths=False)
        assert opt.model_type == "foundir"
        assert opt.network_g["type"] == "FoundIR" and opt.train.optim_g.lr == pytest.approx(1e-4)


# ---------------------------------------------------------------------------------------------- official code
def _official_checkout(tmp_path: Path) -> Path | None:
    src = os.environ.get("FOUNDIR_OFFICIAL")
    if not src:
        return None
    src = Path(src)
    if (src / "src" / "model.py").is_file():
        return src
    out = tmp_path / "official"  # a bare git mirror: extract the files the model module imports
    out.mkdir()
    archive = subprocess.run(["git", "--git-dir", str(src), "archive", "HEAD", "src", "metrics", "data",
                              "matlab_functions.py"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def test_equivalence_with_the_official_code(tmp_path, monkeypatch):
    root = _official_checkout(tmp_path)
    if root is None:
        pytest.skip("set FOUNDIR_OFFICIAL to a House-Leo/FoundIR checkout or bare mirror to compare with it")
    if os.environ.get("FOUNDIR_EMA_PYTORCH"):
        monkeypatch.syspath_prepend(os.environ["FOUNDIR_EMA_PYTORCH"])
    pytest.importorskip("ema_pytorch")  # the official module imports it (its trainer's EMA)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setitem(sys.modules, "thop", types.SimpleNamespace(profile=None))  # imported, unused
    monkeypatch.chdir(root)  # the module imports its 'metrics' package by name
    from src.model import ResidualDiffusion, Trainer, UnetRes

    torch.manual_seed(0)
    official = ResidualDiffusion(UnetRes(dim=8, dim_mults=(1, 2), resnet_block_groups=4, condition=True,
                                         objective="pred_res", test_res_or_noise="res"),
                                 image_size=64, timesteps=1000, delta_end=1.4e-3, sampling_timesteps=4,
                                 ddim_sampling_eta=0.0, objective="pred_res", loss_type="l1", condition=True,
                                 sum_scale=0.01, test_res_or_noise="res").eval()
    ours = tiny().eval()
    assert list(ours.state_dict()) == list(official.state_dict())
    ours.load_state_dict(official.state_dict(), strict=True)
    g = torch.Generator().manual_seed(3)
    lq, gt = torch.rand(1, 3, 20, 28, generator=g), torch.rand(1, 3, 20, 28, generator=g)
    t, noise = torch.tensor([321]), torch.randn(1, 3, 20, 28, generator=g)
    assert ours(lq, gt, t=t, noise=noise).item() == pytest.approx(
        official.p_losses([gt, lq, ["x"]], t, noise=noise)[0].item(), rel=1e-5)
    torch.manual_seed(7)
    with torch.no_grad():
        ref = official.sample(lq, batch_size=1, last=True)[-1]
    assert torch.allclose(ours.restore(lq, generator=torch.Generator().manual_seed(7), crop_size=0), ref, atol=1e-5)
    torch.manual_seed(11)
    with torch.no_grad():
        patches, idx, size = Trainer.img2patch(None, lq, scale=1, crop_size=16, overlap=8)
        outs = [official.sample(patches[i:i + 1], batch_size=1, last=True)[-1] for i in range(len(patches))]
        ref_t = Trainer.patch2img(None, torch.cat(outs), idx, size, scale=1, crop_size=16)
    mine = ours.restore(lq, generator=torch.Generator().manual_seed(11), crop_size=16, crop_overlap=8)
    assert torch.allclose(mine, ref_t, atol=1e-5)


def test_the_foundir_step_trains_resumes_exactly_and_restores(demo_root, tmp_path, monkeypatch):
    """model_type foundir: the network's own residual loss through the shared optimizer step; exact resume;
    the export restores through the one loader (its sampler)."""
    from safetensors.torch import load_file

    from ggt_ir.inference.loader import load_restorer
    from helpers import tiny_options, train_straight_killed_resumed

    def options(name):
        opt = tiny_options(demo_root, tmp_path / "exp", name=name, train__total_iter=4,
                           logger__save_checkpoint_freq=2)
        opt.update(model_type="foundir", network_g={**TINY, "sampling_timesteps": 2})
        opt["train"]["pixel_opt"] = None
        opt["datasets"]["val"]["categories"] = ["rain"]
        return opt

    summary = train_straight_killed_resumed(options, tmp_path, monkeypatch, kill_at=2)
    assert summary["iter"] == 4
    a = load_file(str(tmp_path / "exp" / "straight" / "models" / "net_g_4.safetensors"))
    b = load_file(str(tmp_path / "exp" / "killed" / "models" / "net_g_4.safetensors"))
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) <= 1e-6
    r = load_restorer(tmp_path / "exp" / "straight")
    out = r.restore(torch.rand(1, 3, 16, 16))
    assert out.shape == (1, 3, 16, 16) and r.info["network_g"]["type"] == "FoundIR"
