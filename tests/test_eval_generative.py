"""`ggt-ir eval --run` scores generative runs directly (OneStepSD, EditorLoRA): one loader for every family."""
import json

import numpy as np
import pytest
import torch

from helpers import tiny_options, write_options

pytest.importorskip("diffusers")
pytest.importorskip("peft")


def _generative_run(demo_root, tmp_path, name, model_type, network_g, pixel_opt=None):
    """A 2-iteration run of a generative family, exported at iteration 2."""
    from helpers import train_run

    opt = tiny_options(demo_root, tmp_path / "exp", name=name, train__total_iter=2, logger__save_checkpoint_freq=2)
    opt["datasets"]["val"]["categories"] = ["rain"]
    opt["train"].update({"optim_g": {"type": "AdamW", "lr": 1e-3}, "warmup_iter": 0, "ema_decay": 0.5,
                         "pixel_opt": pixel_opt})
    opt.update(model_type=model_type, network_g=network_g)
    train_run(opt, tmp_path)
    return tmp_path / "exp" / name


@pytest.fixture(scope="module")
def sd_run(demo_root, tmp_path_factory):
    from ggt_ir.testing.pipelines import save_tiny_sd

    tmp = tmp_path_factory.mktemp("sdrun")
    net = {"type": "OneStepSD", "pretrained": str(save_tiny_sd(tmp / "sd_model")), "prompt": "a clean photo",
           "lora_rank_unet": 4, "lora_rank_vae": 4}
    return _generative_run(demo_root, tmp, "sd", "onestep_sd", net, pixel_opt={"type": "MSELoss"})


@pytest.fixture(scope="module")
def editor_run(demo_root, tmp_path_factory):
    from ggt_ir.testing.pipelines import save_tiny_flux_kontext

    tmp = tmp_path_factory.mktemp("edrun")
    net = {"type": "EditorLoRA", "pretrained": str(save_tiny_flux_kontext(tmp / "kontext")), "family": "flux_kontext",
           "prompt": "remove the rain", "lora_rank": 4, "max_sequence_length": 16, "buckets": "none",
           "num_inference_steps": 2}
    return _generative_run(demo_root, tmp, "ed", "editor_lora", net)


def _eval(run, demo_root, tmp_path, name):
    from ggt_ir.cli import main

    eval_opt = {"name": name, "results_root": str(tmp_path / "results"), "model": {"run": str(run)},
                "datasets": {"test": {"type": "PairedFolder", "dataroot": str(demo_root), "split": "test",
                                      "categories": ["rain", "haze"]}},
                "metrics": ["psnr", "ssim"], "eval": {"pbar": False}}
    assert main(["eval", "-opt", str(write_options(tmp_path / f"{name}.yml", eval_opt))]) == 0
    return json.loads((tmp_path / "results" / name / "summary.json").read_text())


@pytest.mark.parametrize("family", ["sd", "editor"])
def test_eval_scores_a_generative_run_directly(family, request, demo_root, tmp_path):
    from ggt_ir.inference.loader import load_restorer
    from ggt_ir.utils.image_io import read_image, to_tensor

    run = request.getfixturevalue(f"{family}_run")
    summary = _eval(run, demo_root, tmp_path, family)
    kind = {"sd": "OneStepSD", "editor": "EditorLoRA"}[family]
    assert summary["label"]["model"] == kind
    assert summary["source"]["checkpoint"].endswith("net_g_2") and summary["source"]["run"] == str(run)
    test = summary["sets"]["test"]
    assert test["num_images"] == 2 and set(test["per_category"]) == {"rain", "haze"}
    assert all(np.isfinite(v) for v in test["means"].values())
    # what eval saved is what the exported model restores (a stochastic one with the image's own seed)
    r = load_restorer(run / "models" / "net_g_2")
    lq_file = sorted((demo_root / "test" / "rain" / "LQ").iterdir())[0]
    images = tmp_path / "results" / family / "images" / "test"
    (saved,) = images.rglob(f"{lq_file.stem}.png")
    key = saved.relative_to(images).with_suffix("").as_posix()
    want = (r.restore(to_tensor(read_image(lq_file))[None], [{"key": key}])[0].permute(1, 2, 0).numpy() * 255).round()
    got = read_image(saved) * 255
    assert np.abs(got - want).max() <= 1


def test_pixel_options_do_not_apply_to_generative_runs(sd_run):
    from ggt_ir.inference.loader import RestorerError, load_restorer

    with pytest.raises(RestorerError, match="tile do.*not apply to OneStepSD"):
        load_restorer(sd_run, tile=64)
    r = load_restorer(sd_run, overrides={"vae_tile": 32}, prompt="x")
    assert r.info["network_g"]["vae_tile"] == 32 and r.model.vae_tile == 32
    out = r.restore(torch.rand(1, 3, 16, 16))
    assert out.shape == (1, 3, 16, 16) and 0 <= out.min() and out.max() <= 1
