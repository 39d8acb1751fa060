"""``ggt-ir plan``: peak GPU memory per component from the real configs on the meta device, before any weight is
loaded (the recipes' base folders are not on this machine, so the published configs are used), per process
layout, and the options that would make a run fit."""
import json

import pytest

from helpers import ROOT

pytest.importorskip("diffusers")

SD = str(ROOT / "options/train/OneStepSD/onestep_sd_ggt100k.yml")
FLUX = str(ROOT / "options/train/EditorLoRA/flux_kontext_ggt100k.yml")
QWEN = str(ROOT / "options/train/EditorLoRA/qwen_image_edit_ggt100k.yml")


def test_published_configs_have_the_published_sizes():
    """The inline configs (transcribed from the Hub's config.json files) build the published parameter counts."""
    from ggt_ir.generative.model_configs import FLUX1_KONTEXT_DEV, QWEN_IMAGE_EDIT, SD21_BASE, build, config_of, num_params

    want = {(id(SD21_BASE), "unet"): 865.9e6, (id(SD21_BASE), "vae"): 83.65e6, (id(SD21_BASE), "text_encoder"): 340.4e6,
            (id(FLUX1_KONTEXT_DEV), "transformer"): 11.90e9, (id(FLUX1_KONTEXT_DEV), "text_encoder_2"): 4.762e9,
            (id(FLUX1_KONTEXT_DEV), "text_encoder"): 123.1e6, (id(QWEN_IMAGE_EDIT), "transformer"): 20.43e9,
            (id(QWEN_IMAGE_EDIT), "vae"): 126.9e6, (id(QWEN_IMAGE_EDIT), "text_encoder"): 8.292e9}
    for model in (SD21_BASE, FLUX1_KONTEXT_DEV, QWEN_IMAGE_EDIT):
        for comp in model:
            if (id(model), comp) in want:
                n = num_params(build(*config_of(model, comp)))
                assert abs(n / want[(id(model), comp)] - 1) < 0.002, (comp, n)


def test_plan_onestep_sd_recipe_reads_no_weights_and_sums_its_parts(tmp_path, capsys, monkeypatch):
    from diffusers import UNet2DConditionModel

    from ggt_ir.cli import main

    def no_weights(*a, **k):
        raise AssertionError("weights were read")

    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained", no_weights)
    out = tmp_path / "sd.json"
    assert main(["plan", "-opt", SD, "--gpu-mem", "16", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "published configs of stabilityai/stable-diffusion-2-1-base" in text and "258 UNet + 32 VAE layers" in text
    r = json.loads(out.read_text())
    rows = r["rows_gib"]
    assert abs(rows["UNet (frozen)"] - 865.9e6 * 2 / 2**30) < 0.01  # bf16
    assert rows["VSD UNet (frozen real score)"] == pytest.approx(rows["UNet (frozen)"], rel=1e-4)  # less conv_in
    assert 0 < rows["activations, 512x512 batch 4, grad ckpt"] < 40
    assert r["peak_gib"] == pytest.approx(sum(v for k, v in rows.items()), rel=1e-6)  # all resident at once
    assert r["peak_gib"] < 16 and "fits a 16 GiB GPU" in text


def test_plan_layouts_and_gradient_checkpointing_move_the_figures(tmp_path):
    from ggt_ir.train.options import load_options
    from ggt_ir.train.plan import GiB, build_plan, per_gpu

    opt = load_options(FLUX, ["datasets.train.gt_size=512"], check_paths=False)
    plan = build_plan(opt)
    single, fsdp = per_gpu(plan, "single"), per_gpu(plan, "fsdp", 8)
    frozen = single["rows"]["transformer (frozen)"][1]
    assert fsdp["rows"]["transformer (frozen)"][1] == pytest.approx(frozen / 8)
    assert fsdp["extra"]["gathered blocks in flight (2)"] > 0 and fsdp["peak"] < single["peak"]
    assert per_gpu(plan, "zero2", 8)["rows"]["transformer (frozen)"][1] == frozen  # ZeRO-2 keeps the weights whole
    no_gc = build_plan(load_options(FLUX, ["datasets.train.gt_size=512", "network_g.gradient_checkpointing=false"],
                                    check_paths=False))
    act = lambda p: next(part.bytes for part in p["parts"] if part.kind == "activations")  # noqa: E731
    assert act(no_gc) > 3 * act(plan)  # checkpointing keeps only block inputs (+ one block's recompute)
    q = build_plan(load_options(FLUX, ["datasets.train.gt_size=512", "network_g.quantize=nf4"], check_paths=False))
    assert per_gpu(q)["rows"]["transformer (frozen)"][1] < 0.35 * frozen
    offload = build_plan(load_options(FLUX, ["datasets.train.gt_size=512", "network_g.text_encoders=offload"],
                                      check_paths=False))
    gpu = build_plan(load_options(FLUX, ["datasets.train.gt_size=512", "network_g.text_encoders=gpu"], check_paths=False))
    text = per_gpu(gpu)["rows"]["text encoder(s)"][1]
    assert text > 8 * GiB  # CLIP + T5-XXL in bf16
    assert per_gpu(gpu)["train_phase"] - per_gpu(offload)["train_phase"] == pytest.approx(text)
    # a fixed instruction is encoded before the transformer is placed: the encoders never share the GPU with it
    assert offload["text_phase_alone"] and per_gpu(offload)["text_phase"] < per_gpu(offload)["rows"]["transformer (frozen)"][1]
    per_sample = build_plan(load_options(FLUX, ["datasets.train.gt_size=512", "network_g.text_encoders=offload",
                                                "network_g.prompt_mode=batch"], check_paths=False))
    assert not per_sample["text_phase_alone"]
    assert per_gpu(per_sample)["text_phase"] > per_gpu(offload)["text_phase"] + frozen  # next to the transformer


@pytest.mark.slow
def test_plan_qwen_says_what_would_fit(capsys):
    from ggt_ir.cli import main

    assert main(["plan", "-opt", QWEN, "--set", "network_g.text_encoders=gpu", "network_g.quantize=none",
                 "--gpu-mem", "37"]) == 0
    text = capsys.readouterr().out
    assert "does NOT fit a 37 GiB GPU" in text and "options that change the figure" in text
    assert "network_g.quantize=nf4" in text and "--processes 8 --fsdp" in text and "(fits)" in text
