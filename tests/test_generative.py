"""One-step SD restorer (OneStepSD + onestep_sd step) on tiny random components, CPU, no hub.

The tiny UNet/VAE/CLIP are saved in diffusers layout and loaded through the same from_pretrained
code path users use (``ggt_ir/generative/pretrained.py``).
"""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import ROOT, tiny_options, train_run, train_straight_killed_resumed

pytest.importorskip("diffusers")
pytest.importorskip("peft")


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    from ggt_ir.testing.pipelines import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("tiny_sd") / "sd")


@pytest.fixture(scope="session")
def lpips_dir(tmp_path_factory):
    from ggt_ir.testing.weights import save_random_lpips

    d = tmp_path_factory.mktemp("weights")
    save_random_lpips(d)
    return d


def sd_options(demo_root, exp_root, sd_dir, name="sd", vsd=False, lpips_dir=None, **over):
    opt = tiny_options(demo_root, exp_root, name=name, **over)
    opt["model_type"] = "onestep_sd"
    opt["network_g"] = {"type": "OneStepSD", "pretrained": str(sd_dir), "prompt_mode": "batch",
                        "prompt": "a clean photo", "lora_rank_unet": 4, "lora_rank_vae": 4}
    opt["datasets"]["train"]["prompt"] = "sharp"
    opt["datasets"]["val"]["categories"] = ["rain"]  # one validation image keeps the test fast
    opt["train"].update({"optim_g": {"type": "AdamW", "lr": 1e-3}, "pixel_opt": {"type": "MSELoss"},
                         "warmup_iter": 0, "grad_clip": 1.0, "ema_decay": 0.5})
    if lpips_dir is not None:
        opt["train"]["lpips_opt"] = {"loss_weight": 2.0, "weights_dir": str(lpips_dir)}
    if vsd:
        opt["train"]["vsd_opt"] = {"loss_weight": 1.0, "lora_rank": 2, "cfg": 7.5, "neg_prompt": "blurry",
                                   "optim": {"type": "AdamW", "lr": 1e-3}}
    for k, v in over.items():
        if k.startswith("train__"):
            opt["train"][k[7:]] = v
    return opt


def test_offline_error_names_the_id_and_how_to_fix(monkeypatch, tmp_path):
    from ggt_ir.generative.onestep_sd import OneStepSD
    from ggt_ir.generative.pretrained import PretrainedNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    with pytest.raises(PretrainedNotFoundError) as e:
        OneStepSD("stabilityai/stable-diffusion-2-1-base", revision="main")
    msg = str(e.value)
    assert "stabilityai/stable-diffusion-2-1-base" in msg and "hf download" in msg
    assert "network_g.pretrained" in msg and "HF_HUB_OFFLINE" in msg
    with pytest.raises(PretrainedNotFoundError, match="folder not found"):
        OneStepSD(str(tmp_path / "no_such_folder"))


def test_train_changes_only_lora_and_exports_load_with_peft_and_diffusers(demo_root, tmp_path, tiny_sd, lpips_dir):
    """Trainer run (L2 + LPIPS + EMA): base weights untouched; exports load with diffusers' and peft's loaders."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from peft import PeftModel

    from ggt_ir.generative.onestep_sd import load_conv_in

    opt = sd_options(demo_root, tmp_path / "exp", tiny_sd, lpips_dir=lpips_dir,
                     train__total_iter=2, logger={"print_freq": 1, "save_checkpoint_freq": 2, "keep_last": 1,
                                                  "trackers": []}, val={"val_freq": 2, "num_save_img": 1,
                                                                        "metrics": {"psnr": {"type": "psnr"}}})
    tr, summary = train_run(opt, tmp_path)
    assert summary["iter"] == 2 and "val/psnr" in summary["last"]
    net = tr.step.acc.unwrap_model(tr.step.net_g)

    # only LoRA tensors and the fully trained conv_in (OSEDiff) changed: every other base weight as in the files
    base_unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    ref = base_unet.state_dict()
    for name, p in net.unet.named_parameters():
        if ".lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        if key.startswith("conv_in."):
            assert not torch.equal(p.detach(), ref[key]), name  # trained
            continue
        assert torch.equal(p.detach(), ref[key].to(p.dtype)), name
    init = load_file(str(tmp_path / "exp" / "sd" / "checkpoints" / "checkpoint-2" / "model.safetensors"))
    assert init and all(".lora_" in k or k.startswith("unet.conv_in.base_layer.") for k in init)
    assert {"unet.conv_in.base_layer.weight", "unet.conv_in.base_layer.bias"} <= set(init)

    export = tmp_path / "exp" / "sd" / "models" / "net_g_2"
    info = json.loads((export / "ggt_ir_adapter.json").read_text())
    assert info["base_model"] == str(tiny_sd) and info["step"] == 2 and info["ema"] is True
    assert set(info["adapters"]) == {"unet.default_encoder", "unet.default_decoder", "unet.default_others",
                                     "vae.default_encoder"}
    assert info["ranks_targets"]["unet"]["default_encoder"]["rank"] == 4

    # what the run would output: EMA LoRA weights
    z = torch.randn(1, 4, 8, 8)
    t = torch.tensor([999])
    emb = net.encode_prompts(["a clean photo"])
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad(), tr.step.ema_weights(net):
        want_unet = net.unet(z, t, encoder_hidden_states=emb).sample
        want_vae = net.vae.encode(x).latent_dist.mode()

    # diffusers' own loader: the UNet LoRA file
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd), safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(export))
    load_conv_in(pipe.unet, export / info["trained_modules"]["unet.conv_in"])
    with torch.no_grad():
        got = pipe.unet(z, t, encoder_hidden_states=emb).sample
    assert (got - want_unet).abs().max() < 1e-5
    # peft's own loader: the VAE-encoder adapter folder
    vae = PeftModel.from_pretrained(AutoencoderKL.from_pretrained(tiny_sd, subfolder="vae"),
                                    str(export / "vae.default_encoder"))
    with torch.no_grad():
        got = vae.base_model.model.encode(x).latent_dist.mode()
    assert (got - want_vae).abs().max() < 1e-5


def test_resume_is_exact_with_vsd_two_optimizers(demo_root, tmp_path, tiny_sd, monkeypatch):
    """diffusers#12689: LoRA (generator + fake score), both optimizers, schedules and EMA resume exactly."""
    common = dict(train__total_iter=3, logger={"print_freq": 1, "save_checkpoint_freq": 2, "keep_last": 0,
                                               "trackers": []}, val={"val_freq": 100, "metrics": {}})
    summary = train_straight_killed_resumed(
        lambda name: sd_options(demo_root, tmp_path / "exp", tiny_sd, name=name, vsd=True, **common), tmp_path,
        monkeypatch)
    assert summary["iter"] == 3
    a_dir = tmp_path / "exp" / "straight" / "checkpoints" / "checkpoint-3"
    b_dir = tmp_path / "exp" / "killed" / "checkpoints" / "checkpoint-3"
    mid = load_file(str(tmp_path / "exp" / "straight" / "checkpoints" / "checkpoint-2" / "model.safetensors"))
    for f in ("model.safetensors", "model_1.safetensors"):  # generator LoRA, fake-score LoRA
        a, b = load_file(str(a_dir / f)), load_file(str(b_dir / f))
        assert a.keys() == b.keys() and a
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        assert worst <= 1e-6, f"{f}: resumed run differs by {worst}"
    a = load_file(str(a_dir / "model.safetensors"))
    assert max((a[k] - mid[k]).abs().max().item() for k in a) > 1e-5  # the weights moved after the kill
    for f in ("optimizer.bin", "optimizer_1.bin"):
        sa = torch.load(a_dir / f, weights_only=False)["state"]
        sb = torch.load(b_dir / f, weights_only=False)["state"]
        assert all(torch.allclose(sa[i]["exp_avg"], sb[i]["exp_avg"], atol=1e-7) for i in sa)
    ea = load_file(str(tmp_path / "exp" / "straight" / "models" / "net_g_3" / "unet.default_decoder" / "adapter_model.safetensors"))
    eb = load_file(str(tmp_path / "exp" / "killed" / "models" / "net_g_3" / "unet.default_decoder" / "adapter_model.safetensors"))
    assert max((ea[k] - eb[k]).abs().max().item() for k in ea) <= 1e-6


def test_fresh_process_load_and_merge_give_identical_outputs(tmp_path, tiny_sd):
    from ggt_ir.generative.onestep_sd import OneStepSD

    torch.manual_seed(0)
    net = OneStepSD(str(tiny_sd), prompt="a photo")
    with torch.no_grad():  # non-zero LoRA B so the adapters matter
        for n, p in net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    export = net.export_adapters(tmp_path / "adapters", step=7)
    lq = torch.rand(1, 3, 24, 20)
    want = net.restore(lq)
    torch.save({"lq": lq, "want": want}, tmp_path / "io.pt")
    code = f"""
import torch
from ggt_ir.generative.onestep_sd import OneStepSD
from ggt_ir.cli import main
io = torch.load({str(tmp_path / 'io.pt')!r})
a = OneStepSD.from_export({str(export)!r}).restore(io["lq"])
assert main(["merge", {str(export)!r}, "--output", {str(tmp_path / 'merged')!r}]) == 0
m = OneStepSD({str(tmp_path / 'merged')!r}, prompt="a photo", lora_rank_unet=0, lora_rank_vae=0).restore(io["lq"])
print((a - io["want"]).abs().max().item(), (m - io["want"]).abs().max().item())
"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    d_load, d_merge = map(float, out.stdout.strip().splitlines()[-1].split())
    assert d_load == 0.0, d_load
    assert d_merge < 1e-4, d_merge
    assert json.loads((tmp_path / "merged" / "ggt_ir_merged.json").read_text())["merged_layers"] > 0


def test_tiled_inference_matches_untiled_and_color_fix(tiny_sd):
    from ggt_ir.generative.onestep_sd import OneStepSD
    from ggt_ir.generative.color_fix import adain_color_fix, wavelet_color_fix
    from ggt_ir.utils.tiling import tiled_apply

    # the tiler itself is exact for a local operation
    x = torch.rand(1, 3, 40, 56)
    conv = torch.nn.Conv2d(3, 4, 1)
    with torch.no_grad():
        assert torch.allclose(tiled_apply(conv, x, 16, 8), conv(x), atol=1e-6)
        up = tiled_apply(lambda t: torch.nn.functional.interpolate(t, scale_factor=2), x, 16, 8, scale=2)
        assert torch.allclose(up, torch.nn.functional.interpolate(x, scale_factor=2), atol=1e-6)

    torch.manual_seed(0)
    net = OneStepSD(str(tiny_sd), prompt="a photo")
    low = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))  # independent of the LoRA init draws
    lq = torch.nn.functional.interpolate(low, size=(64, 64), mode="bicubic").clamp(0, 1)
    full = net.restore(lq)
    tiled = net.restore(lq, vae_tile=48, latent_tile=24)
    mse = ((full - tiled) ** 2).mean().item()
    psnr = 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))).item()
    # tiles see their own GroupNorm statistics and attention context (no cross-tile synchronisation), so on
    # random tiny weights the match is loose; the tiler itself is exact (above)
    assert psnr > 18, f"tiled vs untiled PSNR {psnr:.1f} dB"

    ref = torch.rand(1, 3, 32, 32)
    out = torch.rand(1, 3, 32, 32) * 0.2
    fixed = adain_color_fix(out, ref)
    assert torch.allclose(fixed.mean((2, 3)), ref.mean((2, 3)), atol=0.02)
    w = wavelet_color_fix(out, ref)
    assert (w.mean((2, 3)) - ref.mean((2, 3))).abs().max() < (out.mean((2, 3)) - ref.mean((2, 3))).abs().max()
    assert net.restore(lq, color_fix_="wavelet").shape == lq.shape


def test_recipe_option_file_validates():
    from ggt_ir.train.options import load_options

    opt = load_options(ROOT / "options/train/OneStepSD/onestep_sd_ggt100k.yml", check_paths=False)
    assert opt.model_type == "onestep_sd" and opt.network_g["lora_rank_unet"] == 4
    assert opt.train.optim_g.lr == 5e-5 and opt.network_g["timestep"] == 999
    assert opt.train.vsd_opt is not None and opt.train.lpips_opt is not None


def test_restore_cli_runs_an_exported_onestep_adapter(tmp_path, tiny_sd):
    """`ggt-ir restore --adapter <export>` rebuilds the restorer and gives what the model itself gives."""
    import cv2
    import numpy as np

    from ggt_ir.cli import main
    from ggt_ir.generative.onestep_sd import OneStepSD

    torch.manual_seed(0)
    net = OneStepSD(str(tiny_sd), prompt="a photo")
    with torch.no_grad():
        for n, p in net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    export = net.export_adapters(tmp_path / "adapters", step=1)
    img = (np.random.default_rng(0).random((24, 20, 3)) * 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), img)
    assert main(["restore", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--adapter", str(export),
                 "--device", "cpu"]) == 0
    out = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / "a.png")), cv2.COLOR_BGR2RGB)
    lq = torch.from_numpy(img[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        want = (net.restore(lq)[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round()
    assert out.shape == (24, 20, 3) and np.abs(out.astype(float) - want).max() <= 1
    assert main(["restore", str(tmp_path / "in"), "-o", str(tmp_path / "o2"), "--adapter", str(tmp_path)]) == 2


def test_export_record_errors_name_the_folder_and_rebuild_arguments(tmp_path):
    from ggt_ir.generative.adapters import ADAPTER_JSON, read_export_record, rebuild_arguments
    from ggt_ir.generative.onestep_sd import OneStepSD

    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no {ADAPTER_JSON}"):
        OneStepSD.from_export(tmp_path)
    (tmp_path / ADAPTER_JSON).write_text(json.dumps({"network": "EditorLoRA", "adapters": {},
                                                     "network_g": {"type": "EditorLoRA", "pretrained": "base"}}))
    with pytest.raises(ValueError, match="not an export of OneStepSD .*'EditorLoRA'"):
        OneStepSD.from_export(tmp_path)
    assert read_export_record(tmp_path, "EditorLoRA")["network"] == "EditorLoRA"
    assert rebuild_arguments(tmp_path, "EditorLoRA", {"num_inference_steps": 3}) == {
        "pretrained": "base", "adapters": str(tmp_path), "num_inference_steps": 3}
