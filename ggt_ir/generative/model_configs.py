"""The real models' configurations, written inline from their published ``config.json`` files (no download), and
builders on the ``meta`` device (no memory, no weights).

Used by the memory planner (``ggt_ir/train/plan.py``) when the base folder of an option file is not on this
machine, by the real-shape tests (``tests/test_generative_real_shapes.py``: real width, few layers, random weights,
saved in the diffusers layout) and by ``bench/gpu_suite.py`` (full depth, random weights). The parameter counts of
these builds are pinned in the tests against the published sizes (SD-2.1 UNet 865.9 M, FLUX.1 transformer 11.90 B,
Qwen-Image transformer 20.43 B, ...), which checks the transcription.

Sources (Hugging Face Hub, ``<repo>/<component>/config.json``; values copied, defaults of the classes omitted):
``stabilityai/stable-diffusion-2-1-base``, ``black-forest-labs/FLUX.1-Kontext-dev``, ``Qwen/Qwen-Image-Edit``.
"""
from __future__ import annotations

import copy

SD21_BASE = {
    "unet": ("diffusers", "UNet2DConditionModel", {
        "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False, "cross_attention_dim": 1024,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
        "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
        "out_channels": 4, "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "use_linear_projection": True}),
    "vae": ("diffusers", "AutoencoderKL", {
        "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
        "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4, "scaling_factor": 0.18215}),
    "text_encoder": ("transformers", "CLIPTextModel", {
        "hidden_act": "gelu", "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
        "num_hidden_layers": 23, "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 512,
        "layer_norm_eps": 1e-05, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}),
    "scheduler": ("diffusers", "DDPMScheduler", {
        "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
        "prediction_type": "epsilon", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}),
}

FLUX1_KONTEXT_DEV = {
    "transformer": ("diffusers", "FluxTransformer2DModel", {
        "attention_head_dim": 128, "axes_dims_rope": [16, 56, 56], "guidance_embeds": True, "in_channels": 64,
        "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19, "num_single_layers": 38,
        "patch_size": 1, "pooled_projection_dim": 768}),
    "vae": ("diffusers", "AutoencoderKL", {
        "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
        "force_upcast": True, "in_channels": 3, "latent_channels": 16, "layers_per_block": 2,
        "mid_block_add_attention": True, "norm_num_groups": 32, "out_channels": 3, "sample_size": 1024,
        "scaling_factor": 0.3611, "shift_factor": 0.1159, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "use_post_quant_conv": False, "use_quant_conv": False}),
    "text_encoder": ("transformers", "CLIPTextModel", {
        "hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
        "num_hidden_layers": 12, "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 768,
        "layer_norm_eps": 1e-05, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}),
    "text_encoder_2": ("transformers", "T5EncoderModel", {
        "d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24, "vocab_size": 32128,
        "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-06, "tie_word_embeddings": False,
        "decoder_start_token_id": 0}),
    "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler", {
        "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
        "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True}),
}

QWEN_IMAGE_EDIT = {
    "transformer": ("diffusers", "QwenImageTransformer2DModel", {
        "attention_head_dim": 128, "axes_dims_rope": [16, 56, 56], "guidance_embeds": False, "in_channels": 64,
        "joint_attention_dim": 3584, "num_attention_heads": 24, "num_layers": 60, "out_channels": 16,
        "patch_size": 2}),
    "vae": ("diffusers", "AutoencoderKLQwenImage", {
        "attn_scales": [], "base_dim": 96, "dim_mult": [1, 2, 4, 4], "dropout": 0.0, "num_res_blocks": 2,
        "temperal_downsample": [False, True, True], "z_dim": 16,
        "latents_mean": [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715,
                         0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
        "latents_std": [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652,
                        1.5579, 1.6382, 1.1253, 2.8251, 1.916]}),
    "text_encoder": ("transformers", "Qwen2_5_VLForConditionalGeneration", {
        "text_config": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                        "max_position_embeddings": 128000, "rms_norm_eps": 1e-06, "hidden_act": "silu",
                        "tie_word_embeddings": False, "bos_token_id": 151643, "eos_token_id": 151645,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                            "mrope_section": [16, 24, 24]}},
        "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                          "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                          "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "in_chans": 3,
                          "hidden_act": "silu", "tokens_per_second": 2},
        "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
        "vision_end_token_id": 151653, "tie_word_embeddings": False}),
    "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler", {
        "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 8192, "max_shift": 0.9,
        "num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": 0.02, "time_shift_type": "exponential",
        "use_dynamic_shifting": True}),
}

# network_g type / family -> the published model the recipes name
BY_NETWORK = {"OneStepSD": SD21_BASE, "flux_kontext": FLUX1_KONTEXT_DEV, "qwen_image_edit": QWEN_IMAGE_EDIT}
PUBLISHED = {"OneStepSD": "stabilityai/stable-diffusion-2-1-base", "flux_kontext": "black-forest-labs/FLUX.1-Kontext-dev",
             "qwen_image_edit": "Qwen/Qwen-Image-Edit"}


def component_class(library: str, name: str):
    import importlib

    return getattr(importlib.import_module(library), name)


def config_of(model: dict, component: str, **overrides) -> tuple:
    """(library, class name, config) of a component, with ``overrides`` (e.g. fewer layers) merged in."""
    library, cls, cfg = model[component]
    cfg = copy.deepcopy(cfg)
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    return library, cls, cfg


def build(library: str, cls_name: str, config: dict, device: str = "meta", dtype=None):
    """The network of a config on ``device`` (meta: shapes only). transformers configs go through their
    ``config_class``."""
    import torch

    cls = component_class(library, cls_name)
    with torch.device(device):
        if library == "transformers":
            model = cls(cls.config_class(**config))
        else:
            model = cls.from_config(config)
    if dtype is None:
        return model
    if library == "transformers" or device != "meta":
        return model.to(dtype)
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # diffusers warns about its fp32 modules on every .to(): noise for shapes
    try:
        return model.to(dtype)
    finally:
        diffusers_logging.set_verbosity(level)


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
