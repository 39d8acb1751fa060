"""Local generators and VLMs with tiny random models built here and loaded with from_pretrained: FLUX.1-Kontext and
Qwen-Image-Edit through EditorLoRA (base folder, and a finetuned adapter export as the generator), Qwen-Image-Edit
"Plus" (2509) through diffusers' pipeline, and a tiny Qwen2.5-VL for adaptive prompts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ggt_ir.synth.generators.base import GenContext
from ggt_ir.testing.synth import tiny_pipelines


@pytest.fixture(scope="module")
def kontext(tmp_path_factory) -> Path:
    return tiny_pipelines.save_tiny_flux_kontext(tmp_path_factory.mktemp("kontext") / "m")


@pytest.fixture(scope="module")
def qwen_edit(tmp_path_factory) -> Path:
    return tiny_pipelines.save_tiny_qwen_image_edit(tmp_path_factory.mktemp("qwenedit") / "m")


@pytest.fixture(scope="module")
def tiny_vl(tmp_path_factory) -> Path:
    from ggt_ir.testing.synth import save_tiny_qwen25_vl

    return save_tiny_qwen25_vl(tmp_path_factory.mktemp("vl") / "m")


def lq(h=32, w=48, seed=0):
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


def test_flux_kontext_generator_follows_prompt_and_seed(kontext):
    from ggt_ir.synth.generators.local import FluxKontextGenerator, FluxKontextOptions

    g = FluxKontextGenerator(FluxKontextOptions(name="k", pretrained=str(kontext), bucket_area=32 * 48,
                                                num_inference_steps=2, cost_per_gpu_hour=3.6), GenContext())
    x = lq()
    a = g.generate(x, "remove the rain", seed=0)
    assert a.image.shape == x.shape and a.image.dtype == np.float32 and 0 <= a.image.min() <= a.image.max() <= 1
    assert np.array_equal(a.image, g.generate(x, "remove the rain", seed=0).image)  # seeded: reproducible
    assert not np.array_equal(a.image, g.generate(x, "remove the rain", seed=1).image)
    # the prompt reaches the model (EditorLoRA in prompt_mode batch: fixed mode would ignore it)
    assert not np.array_equal(a.image, g.generate(x, "make it snow", seed=0).image)
    assert a.cost_usd > 0 and a.meta["family"] == "flux_kontext"
    assert g.fingerprint("p", 0) != g.fingerprint("p", 1) != g.fingerprint("q", 0)


def test_finetuned_adapter_export_is_a_generator(kontext, tmp_path):
    """An EditorLoRA with non-zero LoRA weights, exported as the trainer does; `adapter:` makes it the generator
    and it reproduces the trained module's own restore()."""
    from ggt_ir.generative.editor import EditorLoRA
    from ggt_ir.synth.generators.local import FluxKontextGenerator, FluxKontextOptions, load_local_editor

    torch.manual_seed(0)
    net = EditorLoRA(pretrained=str(kontext), lora_rank=2, bucket_area=32 * 48, prompt_mode="batch",
                     num_inference_steps=2)
    with torch.no_grad():
        for n, p in net.transformer.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    net.export_adapters(tmp_path / "export", step=7)
    x = lq()
    t = torch.from_numpy(x.transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        ref = net.restore(t, ["remove the rain"], seed=3)[0].permute(1, 2, 0).numpy()
    g = FluxKontextGenerator(FluxKontextOptions(name="lora", adapter=str(tmp_path / "export"), pretrained=str(kontext),
                                                num_inference_steps=2, bucket_area=32 * 48), GenContext())
    out = g.generate(x, "remove the rain", seed=3).image
    assert np.abs(out - ref).max() < 1e-5
    base = load_local_editor("flux_kontext", str(kontext), bucket_area=32 * 48, num_inference_steps=2)
    with torch.no_grad():
        plain = base.restore(t, ["remove the rain"], seed=3)[0].permute(1, 2, 0).numpy()
    assert np.abs(out - plain).max() > 1e-3  # the adapter changes the output
    with pytest.raises(ValueError, match="was trained for flux_kontext, but this generator is qwen_image_edit"):
        load_local_editor("qwen_image_edit", None, str(tmp_path / "export"))
    with pytest.raises(FileNotFoundError, match="no ggt_ir_adapter.json"):
        load_local_editor("flux_kontext", str(kontext), str(tmp_path))


def test_missing_base_model_is_a_clear_error(monkeypatch):
    from ggt_ir.generative.pretrained import PretrainedNotFoundError
    from ggt_ir.synth.generators.local import load_local_editor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedNotFoundError, match=r"hf download black-forest-labs/FLUX.1-Kontext-dev"):
        load_local_editor("flux_kontext")


def test_qwen_image_edit_and_plus_generators(qwen_edit, monkeypatch):
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as plus

    from ggt_ir.synth.generators.local import (QwenImageEditGenerator, QwenImageEditOptions,
                                               QwenImageEditPlusGenerator, QwenImageEditPlusOptions)

    x = lq(32, 32)
    g = QwenImageEditGenerator(QwenImageEditOptions(name="q", pretrained=str(qwen_edit), bucket_area=32 * 32,
                                                    num_inference_steps=2), GenContext())
    a = g.generate(x, "remove the rain", seed=0)
    assert a.image.shape == x.shape and not np.array_equal(a.image, g.generate(x, "add snow", seed=0).image)
    # the 2509 pipeline resizes its conditions to ~1 MP / 384^2: shrink those for a CPU test
    monkeypatch.setattr(plus, "VAE_IMAGE_SIZE", 32 * 32)
    monkeypatch.setattr(plus, "CONDITION_IMAGE_SIZE", 28 * 28)
    p = QwenImageEditPlusGenerator(QwenImageEditPlusOptions(name="p", pretrained=str(qwen_edit), bucket_area=32 * 32,
                                                            num_inference_steps=2, true_cfg_scale=1.0), GenContext())
    b = p.generate(x, "remove the rain", seed=0)
    assert b.image.shape == (32, 32, 3) and b.expected_aspect == 1.0
    assert np.array_equal(b.image, p.generate(x, "remove the rain", seed=0).image)


def test_qwen_vl_chat_and_adaptive_prompt_cache(tiny_vl, tmp_path):
    from ggt_ir.synth.inputs import LQItem
    from ggt_ir.synth.options import PromptingOptions
    from ggt_ir.synth.prompting import Prompter
    from ggt_ir.synth.vlm import QwenVL, QwenVLOptions

    vlm = QwenVL(QwenVLOptions(pretrained=str(tiny_vl), max_new_tokens=8), GenContext())
    r = vlm.chat([lq(56, 56)], "Describe the degradation.")
    assert isinstance(r.text, str) and 0 < r.meta["new_tokens"] <= 8
    assert r.text == vlm.chat([lq(56, 56)], "Describe the degradation.").text  # greedy: deterministic
    two = vlm.chat([lq(56, 56), lq(56, 56, seed=1)], "Compare.")  # the judge sees two images
    assert isinstance(two.text, str)
    # adaptive prompting: a random model writes byte soup -> the fixed prompt stands in, and says why
    opts = PromptingOptions(mode="adaptive", fixed={"rain": "remove the rain"}, meta_prompt="Prompt for {category}.")
    pr = Prompter(opts, vlm, tmp_path / "cache")
    item = LQItem(key="a", category="rain", source="x.png", ext=".png")
    prompt, info = pr.prompt_for(item, lq(56, 56), "sha-a")
    cached = json.loads(next((tmp_path / "cache").glob("*.json")).read_text())
    assert cached["reply"] and cached["vlm_identity"]["pretrained"] == str(tiny_vl)
    assert info["source"] in ("adaptive", "fixed (adaptive reply unusable)") and not info["cache_hit"]
    if info["source"] != "adaptive":
        assert prompt == "remove the rain"
    again, info2 = pr.prompt_for(item, lq(56, 56), "sha-a")
    assert again == prompt and info2["cache_hit"]
    other, info3 = pr.prompt_for(item, lq(56, 56), "sha-b")  # another image: asked again
    assert not info3["cache_hit"] and len(list((tmp_path / "cache").glob("*.json"))) == 2


def test_qwen_vl_missing_model_error(monkeypatch):
    from ggt_ir.synth.vlm import QwenVL, QwenVLOptions

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"hf download Qwen/Qwen2.5-VL-7B-Instruct --local-dir"):
        QwenVL(QwenVLOptions(), GenContext())


def test_run_with_tiny_kontext_and_tiny_vl(kontext, tiny_vl, tmp_path):
    """The demo's set-up on the 32 px demo set: a local editor (2 seeds) + OpenCV, adaptive prompts by the local
    VLM (with its fallback), QC 1 with NIQE, QC 2 by the scripted judge."""
    import yaml
    from accelerate import PartialState

    from ggt_ir.synth.options import load_synth_options
    from ggt_ir.synth.pipeline import run_synth

    from ggt_ir.data.demo import build_demo

    demo_root = build_demo(tmp_path / "demo", size=96, train_per_category=0, test_per_category=1)
    root = Path(__file__).resolve().parents[1]
    demo = yaml.safe_load((root / "options" / "synth" / "demo.yml").read_text())
    demo.update(include=str(root / "options" / "synth" / "_base.yml"), name="tiny",
                input={"type": "folder", "path": str(demo_root / "test"), "categories": ["rain", "haze"]},
                output={"root": str(tmp_path / "runs")})
    demo["prompting"]["vlm"]["pretrained"] = str(tiny_vl)
    demo["generators"][0].update(pretrained=str(kontext), bucket_area=48 * 48, num_inference_steps=2)
    p = tmp_path / "demo.yml"
    p.write_text(yaml.safe_dump(demo))
    summary = run_synth(load_synth_options(str(p)), PartialState(), log=lambda *a: None)
    recs = [json.loads(line) for line in (tmp_path / "runs" / "tiny" / "manifest.jsonl").read_text().splitlines()]
    assert summary["stages"]["input"] == 2 and len(recs) == 2
    for r in recs:
        assert [c["id"] for c in r["candidates"][:3]] == ["tiny-kontext-s0", "tiny-kontext-s1", "opencv-s0"]
        assert r["prompt_info"]["vlm"] == "QwenVL" and "nr_lq.niqe" in r["candidates"][2]["qc1"]["scores"]
    assert summary["metrics"]["niqe"]["type"] == "niqe"
