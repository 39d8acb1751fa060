"""Random-weight models in the real shapes, saved in the real diffusers folder layout (no download).

The networks are built from the published configurations written inline in ``ggt_ir/generative/model_configs.py``
(SD-2.1-base, FLUX.1-Kontext-dev, Qwen-Image-Edit), with fewer layers where asked (``num_layers`` ...), so
the module names, widths and LoRA targets are the real ones; the folders are written by the pipelines'
``save_pretrained`` and the framework reads them back through the same ``from_pretrained`` path as real
weights. Used by ``tests/test_generative_real_shapes.py`` (real width, few layers, on CPU) and
``bench/gpu_suite.py`` (full depth, on a GPU).

Text encoders are built at the width the denoiser consumes (CLIP 1024 / 768, T5 4096, Qwen2.5-VL 3584) with
``text_layers`` layers and the tiny local tokenizers of ``ggt_ir.testing.pipelines`` (their vocabularies are
small, so the embedding tables are too; the rest of the encoder is real-sized per layer).

    python -m ggt_ir.testing.real_shapes --family flux_kontext --out /tmp/kontext --layers 1 --single-layers 1
"""
from __future__ import annotations

import contextlib
from pathlib import Path


@contextlib.contextmanager
def default_dtype(dtype):
    """Build (and randomly initialise) modules directly in ``dtype``: no fp32 copy of a large model in memory."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _build(spec, device="cpu"):
    from ggt_ir.generative.model_configs import build

    return build(*spec, device=device)


def _dtype(name):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def save_sd21_base(folder: str | Path, *, text_layers: int = 1, dtype: str = "bf16", device: str = "cpu",
                   seed: int = 0) -> Path:
    """SD-2.1-base: the real UNet (865.9 M) and VAE (83.7 M), a CLIP text encoder of width 1024 with
    ``text_layers`` layers (23 in the real one), the DDPM scheduler config; StableDiffusionPipeline layout."""
    import shutil

    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from ggt_ir.generative.model_configs import SD21_BASE, config_of
    from ggt_ir.testing.pipelines import _write_clip_tokenizer

    folder = Path(folder)
    _write_clip_tokenizer(folder / "_tok")
    tok = CLIPTokenizer.from_pretrained(str(folder / "_tok"))
    torch.manual_seed(seed)
    with default_dtype(_dtype(dtype)):
        unet = _build(config_of(SD21_BASE, "unet"), device)
        vae = _build(config_of(SD21_BASE, "vae"), device)
        text = _build(config_of(SD21_BASE, "text_encoder", num_hidden_layers=text_layers, vocab_size=len(tok),
                                eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                                pad_token_id=tok.pad_token_id), device)
    sched = DDPMScheduler.from_config(SD21_BASE["scheduler"][2])
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    shutil.rmtree(folder / "_tok")
    return folder


def save_flux_kontext(folder: str | Path, *, num_layers: int = 1, num_single_layers: int = 1, text_layers: int = 1,
                      dtype: str = "bf16", device: str = "cpu", seed: int = 0, max_shard_size: str = "10GB") -> Path:
    """FLUX.1-Kontext-dev: the real FluxTransformer2DModel config (width 3072, 24 heads of 128, joint 4096, pooled
    768, guidance-distilled) with ``num_layers`` double-stream and ``num_single_layers`` single-stream blocks
    (19 / 38 in the real one), the real 16-channel VAE, CLIP (768) and T5 (4096) encoders with ``text_layers``
    layers; FluxKontextPipeline layout."""
    import shutil

    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline
    from transformers import CLIPTokenizer

    from ggt_ir.generative.model_configs import FLUX1_KONTEXT_DEV as M
    from ggt_ir.generative.model_configs import config_of
    from ggt_ir.testing.pipelines import _t5_tokenizer, _write_clip_tokenizer

    folder = Path(folder)
    _write_clip_tokenizer(folder / "_tok")
    tok = CLIPTokenizer.from_pretrained(str(folder / "_tok"))
    tok2 = _t5_tokenizer()
    torch.manual_seed(seed)
    with default_dtype(_dtype(dtype)):
        transformer = _build(config_of(M, "transformer", num_layers=num_layers, num_single_layers=num_single_layers),
                             device)
        vae = _build(config_of(M, "vae"), device)
        clip = _build(config_of(M, "text_encoder", num_hidden_layers=text_layers, vocab_size=len(tok),
                                eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                                pad_token_id=tok.pad_token_id), device)
        t5 = _build(config_of(M, "text_encoder_2", num_layers=text_layers, vocab_size=len(tok2)), device)
    sched = FlowMatchEulerDiscreteScheduler.from_config(M["scheduler"][2])
    pipe = FluxKontextPipeline(scheduler=sched, vae=vae, text_encoder=clip, tokenizer=tok, text_encoder_2=t5,
                               tokenizer_2=tok2, transformer=transformer)
    pipe.save_pretrained(str(folder), safe_serialization=True, max_shard_size=max_shard_size)
    shutil.rmtree(folder / "_tok")
    return folder


def save_qwen_image_edit(folder: str | Path, *, num_layers: int = 1, text_layers: int = 1, dtype: str = "bf16",
                         device: str = "cpu", seed: int = 0, max_shard_size: str = "10GB") -> Path:
    """Qwen-Image-Edit: the real QwenImageTransformer2DModel config (width 3072, 24 heads of 128, joint 3584) with
    ``num_layers`` blocks (60 in the real one), the real AutoencoderKLQwenImage, a Qwen2.5-VL text encoder of the
    real text width (3584, 28 heads, 4 KV heads, MLP 18944, mrope 16/24/24) with ``text_layers`` layers and a
    1-layer vision tower projecting to 3584; QwenImageEditPipeline layout (tokenizer + processor written locally)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPipeline
    from transformers import (Qwen2_5_VLConfig, Qwen2Tokenizer, Qwen2VLImageProcessor, Qwen2VLProcessor,
                              Qwen2VLVideoProcessor)

    from ggt_ir.generative.model_configs import QWEN_IMAGE_EDIT as M
    from ggt_ir.generative.model_configs import component_class, config_of
    from ggt_ir.testing.pipelines import QWEN_SPECIALS, _bytes_to_unicode

    folder = Path(folder)
    tok = Qwen2Tokenizer(vocab={c: i for i, c in enumerate(_bytes_to_unicode().values())}, merges=[])
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS})
    ids = {s: tok.convert_tokens_to_ids(s) for s in QWEN_SPECIALS}
    pixels = dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)  # a small image budget for the encoder
    proc = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2,
                                                                  **pixels),
                            tokenizer=tok, video_processor=Qwen2VLVideoProcessor(**pixels))
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    _, _, text_cfg = config_of(M, "text_encoder")
    text_config = dict(text_cfg["text_config"], num_hidden_layers=text_layers, vocab_size=len(tok),
                       max_position_embeddings=4096, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    vision_config = dict(depth=1, hidden_size=64, intermediate_size=64, num_heads=2, out_hidden_size=3584,
                         patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                         fullatt_block_indexes=[0])
    cfg = Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config,
                           image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                           vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    with default_dtype(_dtype(dtype)), torch.device(device):
        text_encoder = component_class("transformers", "Qwen2_5_VLForConditionalGeneration")(cfg)
    with default_dtype(_dtype(dtype)):
        transformer = _build(config_of(M, "transformer", num_layers=num_layers), device)
        vae = _build(config_of(M, "vae"), device)
    sched = FlowMatchEulerDiscreteScheduler.from_config(M["scheduler"][2])
    pipe = QwenImageEditPipeline(scheduler=sched, vae=vae, text_encoder=text_encoder, tokenizer=tok, processor=proc,
                                 transformer=transformer)
    pipe.save_pretrained(str(folder), safe_serialization=True, max_shard_size=max_shard_size)
    return folder


WRITERS = {"sd21_base": save_sd21_base, "flux_kontext": save_flux_kontext, "qwen_image_edit": save_qwen_image_edit}


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m ggt_ir.testing.real_shapes", description=__doc__.split("\n\n")[0])
    p.add_argument("--family", required=True, choices=list(WRITERS))
    p.add_argument("--out", required=True)
    p.add_argument("--layers", type=int, default=1, help="transformer blocks (FLUX: double-stream)")
    p.add_argument("--single-layers", type=int, default=1, help="FLUX single-stream blocks")
    p.add_argument("--text-layers", type=int, default=1)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--device", default="cpu", help="where to build (cuda: fast random init of full-depth models)")
    a = p.parse_args(argv)
    kw = dict(text_layers=a.text_layers, dtype=a.dtype, device=a.device)
    if a.family == "flux_kontext":
        kw.update(num_layers=a.layers, num_single_layers=a.single_layers)
    elif a.family == "qwen_image_edit":
        kw.update(num_layers=a.layers)
    print(WRITERS[a.family](a.out, **kw))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
