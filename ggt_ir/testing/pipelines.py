"""Tiny random-config diffusers pipelines saved in diffusers layout (tests, smoke benchmarks).

The framework loads them through the same ``from_pretrained`` code path as real weights.
``save_tiny_sd``: a Stable-Diffusion folder; ``size="real"`` builds the real SD-2.1-base shapes (random
weights, for timing only). ``save_tiny_flux_kontext`` / ``save_tiny_qwen_image_edit``: tiny instruction
editors (FluxKontextPipeline / QwenImageEditPipeline folders) with tokenizers written locally (no Hub).

    python -m ggt_ir.testing --out datasets/tiny-sd [--family flux_kontext | qwen_image_edit]
"""
from __future__ import annotations

import json
from pathlib import Path


def _write_clip_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer whose vocabulary is single characters (no merges)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)] + list(",.-'!?")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tok.save_pretrained(str(folder))


def tiny_sd_components(size: str = "tiny", seed: int = 0) -> dict:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    if size == "tiny":
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), latent_channels=4,
            layers_per_block=1, norm_num_groups=32)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                            num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                                            bos_token_id=0, eos_token_id=1, pad_token_id=1))
    elif size == "real":  # SD-2.1-base shapes
        unet = UNet2DConditionModel(
            sample_size=64, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
            block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), latent_channels=4,
            layers_per_block=2, sample_size=512)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                                            num_hidden_layers=23, num_attention_heads=16, max_position_embeddings=77,
                                            hidden_act="gelu", projection_dim=512))
    else:
        raise ValueError(f"size must be 'tiny' or 'real', got {size!r}")
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          prediction_type="epsilon", clip_sample=False, steps_offset=1)
    return {"unet": unet, "vae": vae, "text_encoder": text, "scheduler": sched}


def save_tiny_sd(folder: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a Stable-Diffusion folder (model_index.json + unet/vae/text_encoder/tokenizer/scheduler)."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    folder = Path(folder)
    _write_clip_tokenizer(folder / "_tok")
    tok = CLIPTokenizer.from_pretrained(str(folder / "_tok"))
    c = tiny_sd_components(size, seed)
    pipe = StableDiffusionPipeline(vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=tok, unet=c["unet"],
                                   scheduler=c["scheduler"], safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    import shutil

    shutil.rmtree(folder / "_tok")
    return folder


_CHARS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)] + list(",.-'!?()")


def _t5_tokenizer():
    """A T5 (unigram) tokenizer over single characters, built in memory."""
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    vocab += [(c, -2.0) for c in _CHARS] + [("\u2581" + c, -1.5) for c in _CHARS]
    return T5TokenizerFast(vocab=vocab, extra_ids=0)


def save_tiny_flux_kontext(folder: str | Path, seed: int = 0) -> Path:
    """A FLUX.1-Kontext folder (FluxKontextPipeline.save_pretrained): tiny FluxTransformer2DModel (guidance-
    distilled like Kontext-dev), AutoencoderKL (factor 2, 4 latent channels), CLIP + T5 and their tokenizers."""
    import shutil

    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    folder = Path(folder)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(2, 2, 4))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4, layers_per_block=1,
        norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=1))
    t5 = T5EncoderModel(T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                                 relative_attention_num_buckets=8, decoder_start_token_id=0))
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)  # FLUX.1's config
    _write_clip_tokenizer(folder / "_tok")
    tok = CLIPTokenizer.from_pretrained(str(folder / "_tok"))
    pipe = FluxKontextPipeline(scheduler=sched, vae=vae, text_encoder=clip, tokenizer=tok, text_encoder_2=t5,
                               tokenizer_2=_t5_tokenizer(), transformer=transformer)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    shutil.rmtree(folder / "_tok")
    return folder


def _bytes_to_unicode() -> dict:
    """GPT-2's byte-level alphabet: printable bytes map to themselves, the rest to code points from 256 on."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    extra = [b for b in range(256) if b not in keep]
    return {b: chr(b) for b in keep} | {b: chr(256 + i) for i, b in enumerate(extra)}


QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def tiny_qwen25_vl_parts(chat_template: str | None = None):
    """(tokenizer, processor, config, eos id) of a tiny Qwen2.5-VL: a byte-level Qwen2 tokenizer with the chat/vision
    special tokens, a Qwen2-VL processor with a small pixel budget, 1 text layer and a 1-block vision tower."""
    from transformers import (Qwen2_5_VLConfig, Qwen2Tokenizer, Qwen2VLImageProcessor, Qwen2VLProcessor,
                              Qwen2VLVideoProcessor)

    tok = Qwen2Tokenizer(vocab={c: i for i, c in enumerate(_bytes_to_unicode().values())}, merges=[])
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS})
    ids = {s: tok.convert_tokens_to_ids(s) for s in QWEN_SPECIALS}
    pixels = dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    proc = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2,
                                                                  **pixels),
                            tokenizer=tok, video_processor=Qwen2VLVideoProcessor(**pixels),
                            **({"chat_template": chat_template} if chat_template else {}))
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[0]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    return tok, proc, cfg, eos


def save_tiny_qwen_image_edit(folder: str | Path, seed: int = 0) -> Path:
    """A Qwen-Image-Edit folder (QwenImageEditPipeline.save_pretrained): tiny QwenImageTransformer2DModel,
    AutoencoderKLQwenImage (factor 4, 4 latent channels), Qwen2.5-VL text encoder with a 1-layer vision tower,
    a byte-level Qwen2 tokenizer with the chat/vision special tokens, and a Qwen2-VL processor (small pixel budget)."""
    import torch
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPipeline,
                           QwenImageTransformer2DModel)
    from transformers import Qwen2_5_VLForConditionalGeneration

    folder = Path(folder)
    tok, proc, cfg, eos = tiny_qwen25_vl_parts()
    torch.manual_seed(seed)
    text_encoder = Qwen2_5_VLForConditionalGeneration(cfg)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=1,
                                              attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                              axes_dims_rope=(2, 2, 4))
    vae = AutoencoderKLQwenImage(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    sched = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                                            base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02,
                                            time_shift_type="exponential")  # Qwen-Image's scheduler config
    pipe = QwenImageEditPipeline(scheduler=sched, vae=vae, text_encoder=text_encoder, tokenizer=tok, processor=proc,
                                 transformer=transformer)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    """``python -m ggt_ir.testing --out datasets/tiny-sd [--family flux_kontext]``: write a tiny folder."""
    import argparse

    writers = {"sd": save_tiny_sd, "flux_kontext": save_tiny_flux_kontext, "qwen_image_edit": save_tiny_qwen_image_edit}
    p = argparse.ArgumentParser(prog="python -m ggt_ir.testing", description="Write a tiny random model folder.")
    p.add_argument("--out", required=True)
    p.add_argument("--size", default="tiny", choices=["tiny", "real"], help="sd only: tiny, or SD-2.1-base shapes")
    p.add_argument("--family", default="sd", choices=list(writers))
    args = p.parse_args(argv)
    extra = {"size": args.size} if args.family == "sd" else {}
    print(writers[args.family](args.out, **extra))
    return 0
