"""FLUX.1-Kontext (``FluxKontextPipeline``): FluxTransformer2DModel, AutoencoderKL, CLIP + T5.

The LQ latents are appended to the token sequence with position ids whose first coordinate is 1 (the
noisy tokens have 0); the instruction is encoded once per prompt (CLIP pooled + T5 hidden states) and
cached, since it does not depend on the image. Guidance-distilled checkpoints (Kontext-dev) take the
embedded ``guidance``; buckets are the pipeline's ``PREFERRED_KONTEXT_RESOLUTIONS``.
"""
from __future__ import annotations

import collections
import math

import torch

from ggt_ir.generative.editors.base import EditorFamily


def flux_ids(h: int, w: int, first: float, device, dtype) -> torch.Tensor:
    """FLUX position ids of a packed (h/2 x w/2) grid: (first, row, col)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 0] = first
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxKontext(EditorFamily):
    pipeline = "FluxKontextPipeline"
    subfolders = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
    # diffusers' FLUX(-Kontext) LoRA script: attention + feed-forward layers
    text_encoder_names = ("text_encoder", "text_encoder_2")
    text_sees_image = False  # cached per prompt
    lora_targets = ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
                    "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                    "ff_context.net.2", "proj_mlp")

    def __init__(self, dtype, **text_options):
        super().__init__(dtype, **text_options)
        self._prompt_cache: collections.OrderedDict = collections.OrderedDict()

    def load_components(self, weights, files):
        from diffusers import AutoencoderKL, FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        transformer = weights(FluxTransformer2DModel, "transformer", role="transformer")
        vae = weights(AutoencoderKL, "vae")
        self.frozen.update(vae=vae, text_encoder=weights(CLIPTextModel, "text_encoder", role="text"),
                           text_encoder_2=weights(T5EncoderModel, "text_encoder_2", role="text"))
        self.tokenizer = files(CLIPTokenizer, "tokenizer")
        self.tokenizer_2 = files(T5TokenizerFast, "tokenizer_2")
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = vae.config.latent_channels
        return transformer

    def encode_image(self, x):
        vae = self.vae
        z = vae.encode((x * 2 - 1).to(self.device, vae.dtype)).latent_dist.mode()
        return (z - vae.config.shift_factor) * vae.config.scaling_factor

    def decode_latents(self, z):
        vae = self.vae
        x = vae.decode(z.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor).sample
        return (x.float().clamp(-1, 1) + 1) / 2

    @torch.no_grad()
    def encode_text(self, prompts, images=None):
        """{"emb": T5 hidden states, "pooled": CLIP pooled}; cached per prompt (LRU, ``max_cached_prompts``), so
        the text encoders run on a cache miss only (with ``text_encoders: offload`` that is the only time they are
        on the GPU)."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if new:
            with self.text_encoders_ready() as dev:
                ids = self.tokenizer(new, padding="max_length", max_length=self.tokenizer.model_max_length,
                                     truncation=True, return_tensors="pt").input_ids
                pooled = self.text_encoder(ids.to(dev), output_hidden_states=False).pooler_output
                ids2 = self.tokenizer_2(new, padding="max_length", max_length=self.max_sequence_length,
                                        truncation=True, return_tensors="pt").input_ids
                emb = self.text_encoder_2(ids2.to(dev), output_hidden_states=False)[0]
            for p, e, q in zip(new, emb, pooled):
                self._prompt_cache[p] = (e.detach().to(self.device), q.detach().to(self.device))
        for p in prompts:
            self._prompt_cache.move_to_end(p)
        while len(self._prompt_cache) > self.max_cached_prompts:
            self._prompt_cache.popitem(last=False)
        emb = torch.stack([self._prompt_cache[p][0] for p in prompts]).to(self.device)
        pooled = torch.stack([self._prompt_cache[p][1] for p in prompts]).to(self.device)
        return {"emb": emb, "pooled": pooled}

    def predict(self, transformer, hidden, t, guidance, text, h, w):
        dt, dev = self.dtype, hidden.device
        img_ids = torch.cat([flux_ids(h, w, 0, dev, dt), flux_ids(h, w, 1, dev, dt)])  # noisy | LQ condition
        txt_ids = torch.zeros(text["emb"].shape[1], 3, device=dev, dtype=dt)
        return transformer(hidden_states=hidden, timestep=t, guidance=guidance,
                           pooled_projections=text["pooled"].to(dt), encoder_hidden_states=text["emb"].to(dt),
                           txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]

    def bucket(self, ratio, area):
        """The nearest-aspect-ratio entry of ``PREFERRED_KONTEXT_RESOLUTIONS`` (~1 MP), scaled to ``area``."""
        from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

        scale = math.sqrt(area / (1024 * 1024))
        _, bw, bh = min((abs(ratio - bw / bh), bw, bh) for bw, bh in PREFERRED_KONTEXT_RESOLUTIONS)
        return bw * scale, bh * scale
