"""Qwen-Image-Edit (``QwenImageEditPipeline``): QwenImageTransformer2DModel, AutoencoderKLQwenImage,
Qwen2.5-VL.

The VAE is a video VAE (one frame) with per-channel latent mean / std; the LQ latents are a second entry
in the transformer's ``img_shapes``; the Qwen2.5-VL encoder sees the LQ image with the instruction, so
it runs every step (no cache). Buckets are ~``bucket_area`` pixels in multiples of 32 at the input's aspect
ratio; true CFG is rescaled to the conditional velocity's norm, as the pipeline does.
"""
from __future__ import annotations

import math

import torch

from ggt_ir.generative.editors.base import EditorFamily


class QwenImageEdit(EditorFamily):
    pipeline = "QwenImageEditPipeline"
    subfolders = ("transformer", "vae", "text_encoder", "tokenizer", "processor", "scheduler")
    lora_targets = ("to_k", "to_q", "to_v", "to_out.0")  # diffusers' Qwen-Image LoRA script

    TEMPLATE = ("<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, "
                "objects, background), then explain how the user's text instruction should alter or modify the "
                "image. Generate a new image that meets the user's requirements while maintaining consistency "
                "with the original input where appropriate.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
                "<|image_pad|><|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n")
    DROP = 64  # template tokens dropped from the hidden states (QwenImageEditPipeline)

    def load_components(self, weights, files):
        from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
        from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer, Qwen2VLProcessor

        transformer = weights(QwenImageTransformer2DModel, "transformer", role="transformer")
        vae = weights(AutoencoderKLQwenImage, "vae")
        self.frozen.update(vae=vae, text_encoder=weights(Qwen2_5_VLForConditionalGeneration, "text_encoder",
                                                         role="text"))
        self.tokenizer = files(Qwen2Tokenizer, "tokenizer")
        self.processor = files(Qwen2VLProcessor, "processor")
        self.vae_factor = 2 ** len(vae.temperal_downsample)
        self.latent_channels = vae.config.z_dim
        return transformer

    def _latent_stats(self, z: torch.Tensor):
        cfg = self.vae.config
        return (torch.tensor(cfg.latents_mean).view(1, -1, 1, 1).to(z),
                torch.tensor(cfg.latents_std).view(1, -1, 1, 1).to(z))

    def encode_image(self, x):
        vae = self.vae
        z = vae.encode((x * 2 - 1).to(self.device, vae.dtype).unsqueeze(2)).latent_dist.mode()[:, :, 0]
        mean, std = self._latent_stats(z)
        return (z - mean) / std

    def decode_latents(self, z):
        z = z.to(self.vae.dtype)
        mean, std = self._latent_stats(z)
        x = self.vae.decode((z * std + mean).unsqueeze(2)).sample[:, :, 0]
        return (x.float().clamp(-1, 1) + 1) / 2

    @torch.no_grad()
    def encode_text(self, prompts, images):
        """{"emb": the VL encoder's last hidden states after the template, "mask": None when nothing is padded}."""
        from PIL import Image

        pil = [Image.fromarray((im.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round()
                               .astype("uint8")) for im in images]
        with self.text_encoders_ready() as dev:  # every call: the encoder sees the image (offload: each step)
            inputs = self.processor(text=[self.TEMPLATE.format(p) for p in prompts], images=pil, padding=True,
                                    return_tensors="pt").to(dev)
            out = self.text_encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                    pixel_values=inputs.get("pixel_values"),
                                    image_grid_thw=inputs.get("image_grid_thw"), output_hidden_states=True)
            mask = inputs["attention_mask"].bool().to(self.device)
            hidden = out.hidden_states[-1].to(self.device)
        parts = [h[m][self.DROP:] for h, m in zip(hidden, mask)]
        n = max(p.shape[0] for p in parts)
        emb = torch.stack([torch.cat([p, p.new_zeros(n - p.shape[0], p.shape[1])]) for p in parts])
        m = torch.stack([torch.cat([torch.ones(p.shape[0], dtype=torch.long), torch.zeros(n - p.shape[0],
                                   dtype=torch.long)]) for p in parts]).to(self.device)
        return {"emb": emb.to(self.dtype), "mask": None if bool(m.all()) else m}

    def predict(self, transformer, hidden, t, guidance, text, h, w):
        shapes = [[(1, h // 2, w // 2), (1, h // 2, w // 2)]] * hidden.shape[0]  # noisy | LQ condition
        return transformer(hidden_states=hidden, timestep=t, guidance=guidance,
                           encoder_hidden_states=text["emb"].to(self.dtype),
                           encoder_hidden_states_mask=text["mask"], img_shapes=shapes, return_dict=False)[0]

    def bucket(self, ratio, area):
        """QwenImageEditPipeline's ``calculate_dimensions``: target area, aspect ratio, multiples of 32."""
        bw = math.sqrt(area * ratio)
        bh = bw / ratio
        return round(bw / 32) * 32, round(bh / 32) * 32

    def noise_shape(self, b, h, w):
        return (b, 1, self.latent_channels, h, w)  # the pipeline draws one video frame

    def guide(self, v, v_neg, scale):
        comb = super().guide(v, v_neg, scale)
        return comb * (v.norm(dim=-1, keepdim=True) / comb.norm(dim=-1, keepdim=True))  # the pipeline's rescale
